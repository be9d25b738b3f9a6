//! The one TLS choke point: every rustls config zgate uses is built here,
//! from one [`CryptoProvider`] (ring), TLS 1.3 only.
//!
//! HBONE's mTLS, as ztunnel does it (istio-l4-semantics.md §6): "TLS is 1.3
//! only by default ... ALPN is `h2`. SNI is not sent, and the server ignores
//! it. Session resumption is disabled on the client."
//!
//! - The server requires a client certificate that chains to the mesh roots
//!   and carries a SPIFFE identity of the server's own trust domain
//!   (`verify::TrustDomainVerifier`). *Which* identity is RBAC's business:
//!   [`peer_identity`] hands it over.
//! - The client requires that the server's certificate chains to the mesh
//!   roots and carries the expected destination identity
//!   (`verify::IdentityVerifier`); host names and IPs play no part.
//! - A [`WorkloadCert`] serves the current SVID to every new handshake;
//!   [`WorkloadCert::rotate`] swaps it without touching live connections.

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use rustls::{
    client::{danger::ServerCertVerifier, Resumption},
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, ServerName},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
    version::TLS13,
    CertificateError, ClientConfig, OtherError, RootCertStore, ServerConfig, SupportedCipherSuite,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::identity::SpiffeId;

mod cert;
#[cfg(test)]
pub(crate) mod test_pki;
#[cfg(test)]
mod tests;
mod verify;

pub use cert::WorkloadCert;
pub use verify::peer_identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no mesh root certificates; give at least one trust anchor")]
    NoRoots,
    #[error("mesh root certificate rejected: {source}; give a valid X.509 CA certificate")]
    Root { source: rustls::Error },
    #[error("building the client certificate verifier: {source}")]
    Verifier {
        source: rustls::server::VerifierBuilderError,
    },
    #[error("bug: building the TLS config: {source}")]
    BugConfig { source: rustls::Error },
    #[error("the SVID for {identity} is unusable: {source}; issue a new one")]
    Svid {
        identity: Box<SpiffeId>,
        source: rustls::Error,
    },
    #[error(
        "the SVID's certificate names {} rather than {expected}; issue it for {expected}",
        found.as_ref().map_or("no SPIFFE identity".to_owned(), ToString::to_string)
    )]
    SvidIdentity {
        expected: Box<SpiffeId>,
        found: Option<Box<SpiffeId>>,
    },
    #[error("cannot rotate the certificate of {current} to one for {new}; build a separate WorkloadCert per identity")]
    RotateIdentity {
        current: Box<SpiffeId>,
        new: Box<SpiffeId>,
    },
    #[error("TLS handshake ({side}) failed: {source}")]
    Handshake {
        side: &'static str,
        source: std::io::Error,
    },
    #[error("TLS handshake ({side}) refused the peer's certificate: {source}")]
    Refused {
        side: &'static str,
        /// The [`Error`] of a SPIFFE check in `verify`.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("TLS handshake ({side}) did not finish within {timeout:?}")]
    HandshakeTimeout {
        side: &'static str,
        timeout: Duration,
    },
    #[error("the peer negotiated ALPN {found:?}, not \"h2\"; HBONE peers must offer h2")]
    Alpn { found: Option<String> },
    #[error(
        "the client certificate has no SPIFFE identity in trust domain {expected:?} \
         (URI SANs: {found:?}); the peer belongs to another mesh"
    )]
    TrustDomain {
        expected: String,
        found: Vec<String>,
    },
    #[error(
        "the server certificate does not carry {expected} (URI SANs: {found:?}); \
         the destination is not the expected workload"
    )]
    ServerIdentity {
        expected: Box<SpiffeId>,
        found: Vec<String>,
    },
    #[error("bug: a verified client certificate has no SPIFFE identity")]
    BugNoPeerIdentity,
}

/// The crypto provider for all of zgate: ring, TLS 1.3 cipher suites only.
/// Key loading, signing and randomness in [`crate::ca`] use it too.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = ring::default_provider();
            provider
                .cipher_suites
                .retain(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)));
            Arc::new(provider)
        })
        .clone()
}

/// The mesh's trust anchors.
pub fn mesh_roots<'a>(
    roots: impl IntoIterator<Item = &'a CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|source| Error::Root { source })?;
    }
    if store.is_empty() {
        return Err(Error::NoRoots);
    }
    Ok(Arc::new(store))
}

/// The HBONE server config for one local identity: it presents `cert`'s
/// current SVID and requires a client certificate that chains to `roots`
/// and is of `cert`'s trust domain.
pub fn server_config(
    roots: Arc<RootCertStore>,
    cert: Arc<WorkloadCert>,
) -> Result<Arc<ServerConfig>, Error> {
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|source| Error::Verifier { source })?;
    let verifier = verify::TrustDomainVerifier::new(webpki, &cert.identity().trust_domain);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| Error::BugConfig { source })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection presents, and is checked against, a
    // current certificate.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The HBONE client config from `cert`'s identity to a server that must
/// present `expected`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    cert: Arc<WorkloadCert>,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, Error> {
    let verifier: Arc<dyn ServerCertVerifier> =
        Arc::new(verify::IdentityVerifier::new(roots, &provider(), expected));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| Error::BugConfig { source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Runs the server handshake on `io` and returns the stream with the
/// client's identity ([`peer_identity`]), the `src_identity` of RBAC.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> Result<(server::TlsStream<IO>, SpiffeId), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = bounded_handshake("accept", TlsAcceptor::from(config).accept(io)).await?;
    let (_, conn) = stream.get_ref();
    check_alpn(conn.alpn_protocol())?;
    let peer = conn
        .peer_certificates()
        .and_then(peer_identity)
        .ok_or(Error::BugNoPeerIdentity)?;
    Ok((stream, peer))
}

/// A handshake bounded by `HANDSHAKE_TIMEOUT`, its failure named by `side`.
async fn bounded_handshake<S>(
    side: &'static str,
    shake: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, Error> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, shake)
        .await
        .map_err(|_| Error::HandshakeTimeout {
            side,
            timeout: HANDSHAKE_TIMEOUT,
        })?
        .map_err(|source| handshake_error(side, source))
}

/// Runs the client handshake on `io`, a connection to `dst`'s HBONE port.
/// `dst` only names the peer inside rustls: no SNI is sent and the server
/// is checked by identity, not by address.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    dst: IpAddr,
    io: IO,
) -> Result<client::TlsStream<IO>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::IpAddress(dst.into());
    let stream = bounded_handshake("connect", TlsConnector::from(config).connect(name, io)).await?;
    check_alpn(stream.get_ref().1.alpn_protocol())?;
    Ok(stream)
}

/// Lifts the error of a SPIFFE check out of rustls' wrapping, so that it
/// reads as itself.
fn handshake_error(side: &'static str, source: std::io::Error) -> Error {
    let refused = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e)))
                if e.is::<Error>() =>
            {
                Some(Arc::clone(e))
            }
            _ => None,
        });
    match refused {
        Some(source) => Error::Refused { side, source },
        None => Error::Handshake { side, source },
    }
}

fn check_alpn(found: Option<&[u8]>) -> Result<(), Error> {
    match found {
        Some(ALPN_H2) => Ok(()),
        found => Err(Error::Alpn {
            found: found.map(|p| String::from_utf8_lossy(p).into_owned()),
        }),
    }
}

/// HBONE is HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// How long a peer may take to finish a handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
