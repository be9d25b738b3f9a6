//! The node CA: it issues the short-lived X.509 SVIDs that the HBONE mTLS
//! data path presents.
//!
//! The root is either zgate's own self-signed ECDSA P-256 root, generated on
//! first start and kept in a directory, or an operator-supplied root
//! certificate and key (PEM). Every SVID carries exactly one URI SAN,
//! `spiffe://<td>/ns/<ns>/sa/<sa>`, as Istio's workload certificates do.
//!
//! Which identities may be issued is the caller's decision: Istio's rule is
//! that "the CA must only issue identities of pods scheduled on that node"
//! (istio-l4-semantics.md §6), so the agent asks only for workloads enrolled
//! here.
//!
//! All key loading and CA signing go through the one rustls
//! [`CryptoProvider`](rustls::crypto::CryptoProvider) of [`crate::tls`]
//! (see `ca/signer.rs`); rcgen (ring backend) only encodes certificates and
//! generates fresh keys.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{
    pem::{self, PemObject},
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{identity::SpiffeId, tls};

mod signer;
mod store;
#[cfg(test)]
mod tests;

use signer::CaKey;

/// Where the root comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// zgate's own root, kept in `dir` as [`ROOT_CERT_FILE`] and
    /// [`ROOT_KEY_FILE`]; generated there on first start.
    Generated { dir: PathBuf },
    /// An operator-supplied root CA certificate and its private key (PEM).
    Operator { cert: PathBuf, key: PathBuf },
}

/// Issues SVIDs under one root.
pub struct CertificateAuthority {
    issuer: Issuer<'static, CaKey>,
    root: CertificateDer<'static>,
    root_not_after: OffsetDateTime,
    svid_ttl: Duration,
}

/// An X.509 SVID: a leaf certificate for one identity and its private key.
///
/// `Debug` never shows the key, and there is no `Display`.
pub struct Svid {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    serial: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: invalid PEM: {source}; give a PEM file", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{}: no CERTIFICATE block; give the root CA certificate in PEM", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: holds {count} certificates; give exactly one, the root CA certificate \
         (intermediate CAs are not supported)",
        path.display()
    )]
    ManyCertificates { path: PathBuf, count: usize },
    #[error("{}: not an X.509 certificate: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: not a CA certificate (basicConstraints cA is unset); give a CA certificate", path.display())]
    NotCa { path: PathBuf },
    #[error("{}: the CA certificate's key usage lacks keyCertSign; give a certificate that may sign others", path.display())]
    NoCertSign { path: PathBuf },
    #[error("{}: the CA certificate is not valid now (valid {not_before} to {not_after}); replace it", path.display())]
    NotValidNow {
        path: PathBuf,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("{}: no PRIVATE KEY block; give the CA's private key in PEM (PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoKey { path: PathBuf },
    #[error(
        "{}: unusable CA private key: {reason}; give an unencrypted ECDSA P-256/P-384, Ed25519 \
         or RSA key",
        path.display()
    )]
    Key { path: PathBuf, reason: String },
    #[error("{}: not the private key of the certificate in {}; give the matching key", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{}: {} exists but {} does not; restore it, or remove {} to generate a new root \
         (SVIDs issued under the old root then stop being trusted)",
        dir.display(), present.display(), missing.display(), present.display()
    )]
    PartialRoot {
        dir: PathBuf,
        present: PathBuf,
        missing: PathBuf,
    },
    #[error("generating the root CA certificate: {source}")]
    Generate { source: rcgen::Error },
    #[error("cannot issue an SVID for {identity:?}: {reason}")]
    Identity { identity: String, reason: String },
    #[error("the SVID lifetime must be at least a minute, not {ttl:?}")]
    Ttl { ttl: Duration },
    #[error("the root CA certificate expired at {not_after}; replace the root")]
    RootExpired { not_after: OffsetDateTime },
    #[error("issuing the SVID for {identity}: {source}")]
    Issue {
        identity: SpiffeId,
        source: rcgen::Error,
    },
    #[error("the system random number generator failed; check the kernel's entropy source")]
    Random,
    #[error("bug: {0}")]
    Unreachable(&'static str),
}

// === impl RootSource ===

impl RootSource {
    /// Loads the root, generating zgate's own on first start.
    pub fn load(&self, svid_ttl: Duration) -> Result<CertificateAuthority, Error> {
        let ca = match self {
            Self::Generated { dir } => CertificateAuthority::load_or_generate(dir)?,
            Self::Operator { cert, key } => CertificateAuthority::from_pem_files(cert, key)?,
        };
        ca.with_svid_ttl(svid_ttl)
    }
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// zgate's own root: loaded from `dir`, or generated there (directory
    /// 0700, files 0600, each written atomically) when `dir` holds neither
    /// file. A directory with only one of the two is an error, never
    /// silently overwritten.
    pub fn load_or_generate(dir: &Path) -> Result<Self, Error> {
        let cert = dir.join(ROOT_CERT_FILE);
        let key = dir.join(ROOT_KEY_FILE);
        match (store::exists(&cert)?, store::exists(&key)?) {
            (true, true) => {}
            (false, false) => {
                let (cert_pem, key_pem) = generate_root()?;
                store::create_private_dir(dir)?;
                // The key first: a crash in between leaves a key without a
                // certificate, which `PartialRoot` reports.
                store::write_private(&key, key_pem.as_bytes())?;
                store::write_private(&cert, cert_pem.as_bytes())?;
                tracing::info!(dir = %dir.display(), "generated the zgate root CA");
            }
            (present, _) => {
                let (present, missing) = match present {
                    true => (cert, key),
                    false => (key, cert),
                };
                return Err(Error::PartialRoot {
                    dir: dir.to_owned(),
                    present,
                    missing,
                });
            }
        }
        Self::from_pem_files(&cert, &key)
    }

    /// An operator-supplied root: `cert` holds exactly one CA certificate,
    /// `key` its private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let root = read_one_certificate(cert)?;
        store::warn_if_readable_by_others(key);
        let key_pem = store::read(key)?;
        let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(der) => der,
            Err(pem::Error::NoItemsFound) => {
                return Err(Error::NoKey {
                    path: key.to_owned(),
                })
            }
            Err(source) => {
                return Err(Error::Pem {
                    path: key.to_owned(),
                    source,
                })
            }
        };
        let ca_key = CaKey::load(key, key_der)?;

        let (_, x509) = X509Certificate::from_der(&root).map_err(|e| Error::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
        check_root(cert, &x509)?;
        if x509.public_key().subject_public_key.data.as_ref() != ca_key.public_key() {
            return Err(Error::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
        let root_not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&root, ca_key).map_err(|e| Error::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            root,
            root_not_after,
            svid_ttl: DEFAULT_SVID_TTL,
        })
    }

    /// Sets the SVID lifetime (default [`DEFAULT_SVID_TTL`]).
    pub fn with_svid_ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        if ttl < MIN_SVID_TTL {
            return Err(Error::Ttl { ttl });
        }
        self.svid_ttl = ttl;
        Ok(self)
    }

    /// The root certificate, the one trust anchor of the mesh.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn svid_ttl(&self) -> Duration {
        self.svid_ttl
    }

    /// Issues an SVID for `identity`, valid from a minute ago (clock skew
    /// between nodes) for the configured lifetime, cut short at the root's
    /// own expiry. The caller has checked that `identity` runs on this node.
    pub fn issue(&self, identity: &SpiffeId) -> Result<Svid, Error> {
        identity.check_round_trip().map_err(|e| Error::Identity {
            identity: identity.to_string(),
            reason: e.to_string(),
        })?;
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(|e| {
            Error::Identity {
                identity: identity.to_string(),
                reason: e.to_string(),
            }
        })?;

        let now = now()?;
        if self.root_not_after <= now {
            return Err(Error::RootExpired {
                not_after: self.root_not_after,
            });
        }
        let not_before = now - CLOCK_SKEW;
        let not_after = (now + self.svid_ttl).min(self.root_not_after);
        let serial = random_serial()?;
        let params = svid_params(uri, &serial, not_before, not_after);

        let issue_error = |source| Error::Issue {
            identity: identity.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        Ok(Svid {
            identity: identity.clone(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial,
            not_before: not_before.into(),
            not_after: not_after.into(),
        })
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            issuer,
            root: _,
            root_not_after,
            svid_ttl,
        } = self;
        f.debug_struct("CertificateAuthority")
            .field("issuer", issuer)
            .field("root_not_after", root_not_after)
            .field("svid_ttl", svid_ttl)
            .finish_non_exhaustive()
    }
}

// === impl Svid ===

impl Svid {
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The leaf first, then any intermediates (none: the root issues
    /// leaves directly). The root itself is not included.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key (PKCS#8 DER).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The leaf's serial number, big-endian.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to issue the next SVID: half-way through this one's lifetime,
    /// as Istio rotates workload certificates.
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            identity,
            chain,
            key: _,
            serial,
            not_before,
            not_after,
        } = self;
        f.debug_struct("Svid")
            .field("identity", &format_args!("{identity}"))
            .field("chain_len", &chain.len())
            .field("serial", &Hex(serial))
            .field("not_before", not_before)
            .field("not_after", not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

// === helpers ===

/// A fresh ECDSA P-256 root, as (certificate PEM, PKCS#8 key PEM).
fn generate_root() -> Result<(String, String), Error> {
    let generate = |source| Error::Generate { source };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let now = now()?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "zgate");
    // Distinct names for distinct roots: a peer under another node's root
    // is then reported as an unknown issuer, not as a bad signature.
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "zgate root CA {:?}",
            Hex(serial.get(..4).unwrap_or_default())
        ),
    );
    // Leaves only: no intermediate may be issued under this root.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_TTL;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A leaf as Istio issues them: empty subject, one URI SAN, usable by
/// both TLS servers and clients.
fn svid_params(
    uri: rcgen::string::Ia5String,
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    // With an empty subject rcgen marks the SAN extension critical, as
    // RFC 5280 §4.2.1.6 requires.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn read_one_certificate(path: &Path) -> Result<CertificateDer<'static>, Error> {
    let pem = store::read(path)?;
    let mut certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
    match certs.len() {
        0 => Err(Error::NoCertificate {
            path: path.to_owned(),
        }),
        1 => certs
            .pop()
            .ok_or(Error::Unreachable("one certificate was counted")),
        count => Err(Error::ManyCertificates {
            path: path.to_owned(),
            count,
        }),
    }
}

/// The root must be a CA that may sign certificates and be valid now.
fn check_root(path: &Path, x509: &X509Certificate<'_>) -> Result<(), Error> {
    let bad = |e: x509_parser::error::X509Error| Error::Certificate {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let is_ca = x509
        .basic_constraints()
        .map_err(bad)?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(Error::NotCa {
            path: path.to_owned(),
        });
    }
    if let Some(ku) = x509.key_usage().map_err(bad)? {
        if !ku.value.key_cert_sign() {
            return Err(Error::NoCertSign {
                path: path.to_owned(),
            });
        }
    }
    if !x509.validity().is_valid() {
        return Err(Error::NotValidNow {
            path: path.to_owned(),
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
        });
    }
    Ok(())
}

/// A positive 128-bit serial from the provider's random source
/// (RFC 5280 §4.1.2.2: at most 20 octets, unique per CA).
fn random_serial() -> Result<Vec<u8>, Error> {
    let mut serial = vec![0u8; 16];
    tls::provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| Error::Random)?;
    if let Some(first) = serial.first_mut() {
        // Positive, and still 16 octets long once DER-encoded.
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(serial)
}

/// Now, in whole seconds as X.509 records it.
fn now() -> Result<OffsetDateTime, Error> {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|_| Error::Unreachable("zero nanoseconds are always in range"))
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The root certificate's file name in a [`RootSource::Generated`] directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The root key's file name in a [`RootSource::Generated`] directory.
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// The default SVID lifetime, Istio's default workload certificate TTL.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const MIN_SVID_TTL: Duration = Duration::from_secs(60);
/// How far back SVIDs and the root are dated, for clocks that lag ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The generated root's lifetime: ten years.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
