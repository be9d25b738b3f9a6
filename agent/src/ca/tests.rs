use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384,
};
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::*;

fn id() -> SpiffeId {
    SpiffeId::new("cluster.local", "default", "sleep")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A CA certificate and key in PEM, written to `dir` as `<name>-cert.pem`
/// and `<name>-key.pem`.
fn write_root(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    key: &KeyPair,
) -> (PathBuf, PathBuf) {
    let cert = params.self_signed(key).unwrap();
    let cert_path = dir.join(format!("{name}-cert.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
}

fn assert_names(error: &Error, path: &Path) {
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "{message:?} does not name {}",
        path.display()
    );
}

#[test]
fn generates_a_private_root_once_then_reloads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/ca");
    let first = CertificateAuthority::load_or_generate(&dir).unwrap();

    let cert = dir.join(ROOT_CERT_FILE);
    let key = dir.join(ROOT_KEY_FILE);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&cert), 0o600);
    assert_eq!(mode(&key), 0o600);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [ROOT_CERT_FILE, ROOT_KEY_FILE],
        "no temporary files left"
    );

    let (_, root) = X509Certificate::from_der(first.root()).unwrap();
    assert!(root.is_ca());
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    let second = CertificateAuthority::load_or_generate(&dir).unwrap();
    assert_eq!(first.root(), second.root());
}

#[test]
fn svid_has_one_uri_san_and_the_configured_lifetime() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    assert_eq!(ca.svid_ttl(), DEFAULT_SVID_TTL);

    for ttl in [DEFAULT_SVID_TTL, Duration::from_secs(3600)] {
        let ca = CertificateAuthority::load_or_generate(tmp.path())
            .unwrap()
            .with_svid_ttl(ttl)
            .unwrap();
        let svid = ca.issue(&id()).unwrap();
        assert_eq!(svid.identity(), &id());
        assert_eq!(svid.chain().len(), 1);
        let (_, leaf) = X509Certificate::from_der(&svid.chain()[0]).unwrap();

        let sans = &leaf.subject_alternative_name().unwrap().unwrap();
        assert!(sans.critical, "an empty subject makes the SAN critical");
        assert_eq!(
            sans.value.general_names,
            [GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(leaf.raw_serial(), svid.serial());

        let validity = leaf.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(lifetime as u64, (ttl + CLOCK_SKEW).as_secs());
        assert_eq!(
            SystemTime::from(validity.not_after.to_datetime()),
            svid.not_after()
        );
        assert!(svid.not_before() < SystemTime::now() && SystemTime::now() < svid.not_after());
        let half = svid.not_before() + (ttl + CLOCK_SKEW) / 2;
        assert_eq!(svid.refresh_at(), half);

        let (_, root) = X509Certificate::from_der(ca.root()).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
    }
}

#[test]
fn every_svid_gets_a_fresh_key_and_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    let a = ca.issue(&id()).unwrap();
    let b = ca.issue(&id()).unwrap();
    assert_ne!(a.serial(), b.serial());
    assert_ne!(a.key().secret_der(), b.key().secret_der());
    assert_eq!(a.serial().len(), 16);
}

#[test]
fn debug_output_never_shows_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    let svid = ca.issue(&id()).unwrap();
    let debug = format!("{svid:?} {ca:?}");
    assert!(debug.contains("[redacted]"), "{debug}");
    let key = svid.key();
    let key_hex: String = key.secret_der()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!debug.contains(&key_hex), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[test]
fn operator_root_issues_svids() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let (cert, key_path) = write_root(tmp.path(), "operator", ca_params(), &key);
    let ca = RootSource::Operator {
        cert: cert.clone(),
        key: key_path,
    }
    .load(Duration::from_secs(600))
    .unwrap();
    assert_eq!(ca.svid_ttl(), Duration::from_secs(600));
    let svid = ca.issue(&id()).unwrap();
    let (_, leaf) = X509Certificate::from_der(&svid.chain()[0]).unwrap();
    let (_, root) = X509Certificate::from_der(ca.root()).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer(), root.subject());
}

#[test]
fn svids_end_with_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params();
    let root_end = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    params.not_after = root_end;
    let (cert, key) = write_root(tmp.path(), "short", params, &key);
    let ca = CertificateAuthority::from_pem_files(&cert, &key).unwrap();
    let svid = ca.issue(&id()).unwrap();
    let root_end = SystemTime::from(root_end.replace_nanosecond(0).unwrap());
    assert_eq!(svid.not_after(), root_end);
}

#[test]
fn generated_dir_with_one_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    let key = tmp.path().join(ROOT_KEY_FILE);
    fs::remove_file(tmp.path().join(ROOT_CERT_FILE)).unwrap();
    let before = fs::read(&key).unwrap();
    let error = CertificateAuthority::load_or_generate(tmp.path()).unwrap_err();
    assert!(matches!(error, Error::PartialRoot { .. }), "{error}");
    assert_names(&error, &key);
    assert_eq!(fs::read(&key).unwrap(), before, "the key is left alone");
}

#[test]
fn bad_files_are_refused_with_their_path_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let (cert, key_path) = write_root(dir, "good", ca_params(), &key);
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let (other_cert, other_key_path) = write_root(dir, "other", ca_params(), &other_key);
    let (leaf_cert, leaf_key) = write_root(dir, "leaf", CertificateParams::default(), &key);

    let garbage = dir.join("garbage.pem");
    fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let two = dir.join("two.pem");
    fs::write(
        &two,
        [fs::read(&cert).unwrap(), fs::read(&other_cert).unwrap()].concat(),
    )
    .unwrap();
    let missing = dir.join("missing.pem");

    let cases: [(&Path, &Path, &str); 7] = [
        (&garbage, &key_path, "invalid PEM"),
        (&key_path, &key_path, "no CERTIFICATE block"),
        (&two, &key_path, "holds 2 certificates"),
        (&cert, &cert, "no PRIVATE KEY block"),
        (
            &cert,
            &other_key_path,
            "not the private key of the certificate",
        ),
        (&leaf_cert, &leaf_key, "not a CA certificate"),
        (&missing, &key_path, "cannot read"),
    ];
    for (cert, key, reason) in cases {
        let error = CertificateAuthority::from_pem_files(cert, key).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(reason), "{message:?} lacks {reason:?}");
        let named = if reason.contains("PRIVATE KEY") || reason.contains("not the private key") {
            key
        } else {
            cert
        };
        assert_names(&error, named);
    }
}

#[test]
fn expired_root_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params();
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    params.not_after = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let (cert, key) = write_root(tmp.path(), "old", params, &key);
    let error = CertificateAuthority::from_pem_files(&cert, &key).unwrap_err();
    assert!(matches!(error, Error::NotValidNow { .. }), "{error}");
    assert_names(&error, &cert);
}

#[test]
fn identities_that_do_not_round_trip_are_not_issued() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    for bad in [
        SpiffeId::new("cluster.local", "a/sa/b", "c"),
        SpiffeId::new("cluster.local", "", "c"),
        SpiffeId::new("cluster.local", "ns", "ünïcode"),
    ] {
        let error = ca.issue(&bad).unwrap_err();
        assert!(matches!(error, Error::Identity { .. }), "{bad:?}: {error}");
    }
}

#[test]
fn svid_lifetime_below_a_minute_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_generate(tmp.path()).unwrap();
    let error = ca.with_svid_ttl(Duration::from_secs(59)).unwrap_err();
    assert!(matches!(error, Error::Ttl { .. }), "{error}");
}

#[test]
fn sec1_ca_keys_sign_through_the_rustls_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let (cert, _) = write_root(tmp.path(), "sec1", ca_params(), &key);
    // PKCS#8 wraps the SEC1 ECPrivateKey in its third field.
    let pkcs8 = key.serialize_der();
    let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).unwrap();
    let sec1 = info.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
    let ca_key = CaKey::load(&cert, PrivateKeyDer::Sec1(sec1.into())).unwrap();
    assert_eq!(ca_key.public_key(), key.public_key_raw());

    let root = read_one_certificate(&cert).unwrap();
    let issuer = Issuer::from_ca_cert_der(&root, ca_key).unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::default()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(leaf.der()).unwrap();
    let (_, root) = X509Certificate::from_der(&root).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
}
