//! The CA's signing key, loaded and used through the rustls provider of
//! [`crate::tls`] rather than rcgen's own key loader: one crypto provider
//! for everything (house style 17), and operator keys in any form rustls
//! reads (PKCS#8, SEC1, PKCS#1), where rcgen on ring takes PKCS#8 only.

use std::path::Path;

use rcgen::{
    PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, PKCS_RSA_SHA256,
};
use rustls::{pki_types::PrivateKeyDer, sign::Signer, SignatureScheme};
use x509_parser::{prelude::FromDer, x509::SubjectPublicKeyInfo};

use super::Error;
use crate::tls;

/// A CA private key that signs X.509 certificates for rcgen.
pub(super) struct CaKey {
    signer: Box<dyn Signer>,
    alg: &'static SignatureAlgorithm,
    /// The subjectPublicKey BIT STRING's contents.
    public_key: Vec<u8>,
}

impl CaKey {
    /// Loads `der`, read from `path`, with the rustls provider and picks the
    /// X.509 signature algorithm that fits it.
    pub(super) fn load(path: &Path, der: PrivateKeyDer<'static>) -> Result<Self, Error> {
        let bad = |reason: String| Error::Key {
            path: path.to_owned(),
            reason,
        };
        let key = tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| bad(e.to_string()))?;
        let spki = key
            .public_key()
            .ok_or_else(|| bad("its public key cannot be derived".to_owned()))?;
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(spki.as_ref()).map_err(|e| bad(e.to_string()))?;
        let public_key = spki.subject_public_key.data.to_vec();
        let (signer, alg) = ALGORITHMS
            .iter()
            .find_map(|&(scheme, alg)| Some((key.choose_scheme(&[scheme])?, alg)))
            .ok_or_else(|| bad(format!("{:?} keys are not supported", key.algorithm())))?;
        Ok(Self {
            signer,
            alg,
            public_key,
        })
    }

    pub(super) fn public_key(&self) -> &[u8] {
        &self.public_key
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // The TLS schemes chosen above produce exactly X.509's signature
        // encodings: DER ECDSA-Sig-Value, raw Ed25519, PKCS#1 v1.5 RSA.
        self.signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Each TLS signature scheme a CA key may sign with, and its X.509 twin.
/// ECDSA schemes are curve-specific in TLS 1.3, so the first one a key
/// accepts also names its curve.
static ALGORITHMS: [(SignatureScheme, &SignatureAlgorithm); 4] = [
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        &PKCS_ECDSA_P256_SHA256,
    ),
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        &PKCS_ECDSA_P384_SHA384,
    ),
    (SignatureScheme::ED25519, &PKCS_ED25519),
    (SignatureScheme::RSA_PKCS1_SHA256, &PKCS_RSA_SHA256),
];
