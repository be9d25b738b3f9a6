//! A workload's current certificate, served to every new handshake, on
//! either side, and swapped by rotation.
//!
//! rustls asks a resolver for the certificate once per handshake and keeps
//! what it got for that connection alone, so swapping the `Arc` here changes
//! what new handshakes present while established connections, whose keys
//! no longer depend on the certificate, carry on untouched.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    SignatureScheme,
};

use super::{peer_identity, provider, Error};
use crate::{ca::Svid, identity::SpiffeId};

/// The current SVID of one identity.
pub struct WorkloadCert {
    identity: SpiffeId,
    current: ArcSwap<CertifiedKey>,
}

impl WorkloadCert {
    /// Starts serving `svid`. Its certificate must carry its identity as
    /// the first SPIFFE URI SAN, and its key must match.
    pub fn new(svid: &Svid) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            identity: svid.identity().clone(),
            current: ArcSwap::from_pointee(certified_key(svid)?),
        }))
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Serves `svid`, of the same identity, to every handshake from now on.
    /// Connections already established keep working.
    pub fn rotate(&self, svid: &Svid) -> Result<(), Error> {
        if *svid.identity() != self.identity {
            return Err(Error::RotateIdentity {
                current: Box::new(self.identity.clone()),
                new: Box::new(svid.identity().clone()),
            });
        }
        self.current.store(Arc::new(certified_key(svid)?));
        Ok(())
    }

    /// What the next handshake will present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for WorkloadCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for WorkloadCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &format_args!("{}", self.identity))
            .finish_non_exhaustive()
    }
}

fn certified_key(svid: &Svid) -> Result<CertifiedKey, Error> {
    let found = peer_identity(svid.chain());
    if found.as_ref() != Some(svid.identity()) {
        return Err(Error::SvidIdentity {
            expected: Box::new(svid.identity().clone()),
            found: found.map(Box::new),
        });
    }
    CertifiedKey::from_der(svid.chain().to_vec(), svid.key(), &provider()).map_err(|source| {
        Error::Svid {
            identity: Box::new(svid.identity().clone()),
            source,
        }
    })
}
