//! SPIFFE verification on top of webpki chain validation, as ztunnel does
//! it (istio-l4-semantics.md §6):
//!
//! - server side, [`TrustDomainVerifier`]: "`WebPkiClientVerifier` against
//!   the mesh roots ... and then `TrustDomainVerifier`. The second check
//!   requires that **some** URI SAN of the client leaf parses as a SPIFFE
//!   identity whose trust domain equals the trust domain of the server's
//!   own certificate."
//! - client side, [`IdentityVerifier`]: "The server leaf must contain one of
//!   the expected identities."
//! - RBAC's source identity, [`peer_identity`]: "the **first URI SAN that
//!   parses** as a SPIFFE identity. Parse errors are logged and skipped."

use std::sync::Arc;

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{
        verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ParsedCertificate,
    },
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use x509_parser::{
    certificate::X509Certificate, error::X509Error, extensions::GeneralName, prelude::FromDer,
};

use super::Error;
use crate::identity::SpiffeId;

/// The server's check of a client certificate: webpki, then the trust
/// domain.
#[derive(Debug)]
pub(super) struct TrustDomainVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

/// The client's check of a server certificate: webpki chain validation
/// (not the host name), then the expected identity.
#[derive(Debug)]
pub(super) struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: SpiffeId,
}

/// The identity RBAC sees: the first URI SAN of the leaf (`certs[0]`) that
/// parses as a SPIFFE identity; `None` when there is none.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = certs.first()?;
    let sans = match uri_sans(leaf) {
        Ok(sans) => sans,
        Err(reason) => {
            tracing::debug!(%reason, "peer certificate does not parse");
            return None;
        }
    };
    sans.iter().find_map(|san| match san.parse() {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::debug!(san, %error, "skipping a URI SAN that is not a SPIFFE identity");
            None
        }
    })
}

// === impl TrustDomainVerifier ===

impl TrustDomainVerifier {
    pub(super) fn new(webpki: Arc<dyn ClientCertVerifier>, trust_domain: &str) -> Self {
        Self {
            webpki,
            trust_domain: trust_domain.to_owned(),
        }
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = uri_sans(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        let in_trust_domain = sans.iter().any(|san| {
            san.parse::<SpiffeId>()
                .is_ok_and(|id| id.trust_domain == self.trust_domain)
        });
        if !in_trust_domain {
            return Err(rejected(Error::TrustDomain {
                expected: self.trust_domain.clone(),
                found: sans,
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

// === impl IdentityVerifier ===

impl IdentityVerifier {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        provider: &CryptoProvider,
        expected: SpiffeId,
    ) -> Self {
        Self {
            roots,
            algorithms: provider.signature_verification_algorithms,
            expected,
        }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // An HBONE server is named by its SPIFFE identity; the name rustls
        // holds is only the IP dialled.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let sans = uri_sans(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        let carries_expected = sans
            .iter()
            .any(|san| san.parse::<SpiffeId>().is_ok_and(|id| id == self.expected));
        if !carries_expected {
            return Err(rejected(Error::ServerIdentity {
                expected: Box::new(self.expected.clone()),
                found: sans,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// === helpers ===

/// Every URI SAN of `cert`, in order.
fn uri_sans(cert: &CertificateDer<'_>) -> Result<Vec<String>, X509Error> {
    let (_, x509) = X509Certificate::from_der(cert).map_err(|_| X509Error::InvalidCertificate)?;
    let Some(san) = x509.subject_alternative_name()? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// A certificate that chains fine but fails a SPIFFE check: rustls sends
/// `bad_certificate` and reports `error` on this side.
fn rejected(error: Error) -> rustls::Error {
    CertificateError::Other(OtherError(Arc::new(error))).into()
}
