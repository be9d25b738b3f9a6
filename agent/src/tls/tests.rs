use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    HandshakeKind, ProtocolVersion,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::{test_pki::*, *};
use crate::ca::{CertificateAuthority, DEFAULT_SVID_TTL};

/// A throwaway CA whose leaves can carry any SANs, for certificates the
/// node CA would never issue.
struct OddCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl OddCa {
    fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    fn leaf(&self, uris: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
        params.subject_alt_names.extend(
            uris.iter()
                .map(|uri| SanType::URI((*uri).try_into().unwrap())),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        (vec![cert.der().clone()], key.into())
    }

    fn roots(&self) -> Arc<RootCertStore> {
        mesh_roots([&self.root]).unwrap()
    }
}

fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
    X509Certificate::from_der(der)
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

/// The message of the rustls error inside a failed handshake.
fn handshake_error<T>(result: Result<T, Error>) -> String {
    match result {
        Ok(_) => panic!("the handshake succeeded"),
        Err(error) => error.to_string(),
    }
}

/// In TLS 1.3 the client finishes before the server has checked its
/// certificate; the server's alert then fails the client's first read.
async fn assert_client_dropped(client: Result<client::TlsStream<TcpStream>, Error>) {
    if let Ok(mut client) = client {
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(
            !matches!(read, Ok(n) if n > 0),
            "the refused client could still read"
        );
    }
}

#[test]
fn peer_identity_is_the_first_parseable_uri_san() {
    let ca = OddCa::new();
    let (chain, _) = ca.leaf(&[
        "https://example.com/not-spiffe",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/ns/first/sa/one",
        "spiffe://cluster.local/ns/second/sa/two",
    ]);
    assert_eq!(
        peer_identity(&chain),
        Some(SpiffeId::new("cluster.local", "first", "one"))
    );

    let (no_uri, _) = ca.leaf(&[]);
    assert_eq!(peer_identity(&no_uri), None);
    let (no_spiffe, _) = ca.leaf(&["spiffe://cluster.local/ns/only-ns", "urn:x"]);
    assert_eq!(peer_identity(&no_spiffe), None);
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(
        peer_identity(&[CertificateDer::from(vec![0x30, 0x00])]),
        None
    );
}

#[test]
fn peer_identity_reads_only_the_leaf() {
    let ca = OddCa::new();
    let (mut chain, _) = ca.leaf(&[]);
    chain.extend(ca.leaf(&["spiffe://cluster.local/ns/a/sa/b"]).0);
    assert_eq!(peer_identity(&chain), None);
}

#[tokio::test]
async fn mutual_tls_names_both_peers() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
    let Handshake { server, client } = handshake(server, client).await;
    let (mut server, peer) = server.unwrap();
    let mut client = client.unwrap();
    assert_eq!(peer, id("sleep"));

    let (_, conn) = server.get_ref();
    assert_eq!(conn.server_name(), None, "no SNI is sent");
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    let (_, conn) = client.get_ref();
    assert_eq!(
        conn.peer_certificates().and_then(peer_identity),
        Some(id("httpbin"))
    );

    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn sessions_are_never_resumed() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
    for _ in 0..2 {
        let Handshake { server, client } = handshake(server.clone(), client.clone()).await;
        let (mut server, _) = server.unwrap();
        let mut client = client.unwrap();
        // Give a ticket, had one been sent, time to arrive.
        client.write_all(b"x").await.unwrap();
        server.read_exact(&mut [0u8; 1]).await.unwrap();
        server.write_all(b"y").await.unwrap();
        client.read_exact(&mut [0u8; 1]).await.unwrap();
        assert_eq!(
            client.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
    }
}

#[tokio::test]
async fn client_of_another_trust_domain_is_refused() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    let stranger = SpiffeId::new("other.domain", "default", "sleep");
    let client = pki.client(pki.cert(&stranger), &id("httpbin"));
    let Handshake { server, client } = handshake(server, client).await;
    let message = handshake_error(server);
    assert!(
        message.contains("trust domain \"cluster.local\""),
        "{message}"
    );
    assert_client_dropped(client).await;
}

#[tokio::test]
async fn trust_domain_check_accepts_any_san_while_rbac_takes_the_first() {
    let ca = OddCa::new();
    let (chain, key) = ca.leaf(&[
        "spiffe://other.domain/ns/default/sa/first",
        "spiffe://cluster.local/ns/default/sa/second",
    ]);
    let pki = TestPki::new();
    let server_svid = pki.svid(&id("httpbin"));
    let roots = mesh_roots([pki.ca.root(), &ca.root]).unwrap();
    let server = server_config(roots.clone(), WorkloadCert::new(&server_svid).unwrap()).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::IdentityVerifier::new(
            roots,
            &provider(),
            id("httpbin"),
        )))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut client = client;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let Handshake { server, .. } = handshake(server, Arc::new(client)).await;
    let (_, peer) = server.unwrap();
    assert_eq!(peer, SpiffeId::new("other.domain", "default", "first"));
}

#[tokio::test]
async fn client_of_an_untrusted_root_is_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    // Trusts the server, but holds a certificate of another root.
    let client = client_config(pki.roots.clone(), other.cert(&id("sleep")), id("httpbin")).unwrap();
    let Handshake { server, client } = handshake(server, client).await;
    let message = handshake_error(server);
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_client_dropped(client).await;
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::IdentityVerifier::new(
            pki.roots.clone(),
            &provider(),
            id("httpbin"),
        )))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let Handshake { server, client } = handshake(server, Arc::new(client)).await;
    let message = handshake_error(server);
    assert!(message.contains("certificate"), "{message}");
    assert_client_dropped(client).await;
}

#[tokio::test]
async fn server_without_the_expected_identity_is_refused() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("impostor")));
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
    let Handshake { client, .. } = handshake(server, client).await;
    let message = handshake_error(client);
    assert!(
        message.contains("does not carry spiffe://cluster.local/ns/default/sa/httpbin"),
        "{message}"
    );
}

#[tokio::test]
async fn server_without_any_spiffe_identity_is_refused() {
    let ca = OddCa::new();
    let (chain, key) = ca.leaf(&[]);
    let pki = TestPki::new();
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let client = client_config(ca.roots(), pki.cert(&id("sleep")), id("httpbin")).unwrap();
    let Handshake { client, .. } = handshake(Arc::new(server), client).await;
    let message = handshake_error(client);
    assert!(message.contains("URI SANs: []"), "{message}");
}

#[tokio::test]
async fn server_of_an_untrusted_root_is_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let server = other.server(other.cert(&id("httpbin")));
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
    let Handshake { client, .. } = handshake(server, client).await;
    let message = handshake_error(client);
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn server_of_an_unknown_root_is_refused() {
    let ca = OddCa::new();
    let (chain, key) = ca.leaf(&["spiffe://cluster.local/ns/default/sa/httpbin"]);
    let pki = TestPki::new();
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
    let Handshake { client, .. } = handshake(Arc::new(server), client).await;
    let message = handshake_error(client);
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let pki = TestPki::new();
    let server = pki.server(pki.cert(&id("httpbin")));
    let svid = pki.svid(&id("sleep"));
    // The dev-dependency build of rustls has TLS 1.2; the agent's has not.
    let mut client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(pki.roots.clone())
        .with_client_auth_cert(svid.chain().to_vec(), svid.key())
        .unwrap();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let Handshake { server, client } = handshake(server, Arc::new(client)).await;
    let message = handshake_error(server);
    assert!(message.contains("incompatible"), "{message}");
    let message = handshake_error(client);
    assert!(message.contains("ProtocolVersion"), "{message}");
}

#[tokio::test]
async fn rotation_serves_new_handshakes_and_spares_live_ones() {
    let pki = TestPki::new();
    let cert = pki.cert(&id("httpbin"));
    let before = serial(&cert.current().cert[0]);
    let server = pki.server(cert.clone());
    let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));

    let Handshake {
        server: live_server,
        client: live_client,
    } = handshake(server.clone(), client.clone()).await;
    let (mut live_server, _) = live_server.unwrap();
    let mut live_client = live_client.unwrap();

    let longer = CertificateAuthority::load_or_generate(&pki.dir.path().join("ca"))
        .unwrap()
        .with_svid_ttl(DEFAULT_TTL_PLUS_HOUR)
        .unwrap();
    let next = longer.issue(&id("httpbin")).unwrap();
    cert.rotate(&next).unwrap();

    let Handshake { client: fresh, .. } = handshake(server, client).await;
    let fresh = fresh.unwrap();
    let presented = &fresh.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(serial(presented), next.serial());
    assert_ne!(serial(presented), before);
    let (_, leaf) = X509Certificate::from_der(presented).unwrap();
    assert_eq!(
        SystemTime::from(leaf.validity().not_after.to_datetime()),
        next.not_after()
    );

    live_client.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    live_server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    let presented = &live_client.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(serial(presented), before);
}

#[test]
fn rotation_to_another_identity_is_refused() {
    let pki = TestPki::new();
    let cert = pki.cert(&id("httpbin"));
    let error = cert.rotate(&pki.svid(&id("sleep"))).unwrap_err();
    assert!(matches!(error, Error::RotateIdentity { .. }), "{error}");
}

#[test]
fn empty_roots_are_refused() {
    assert!(matches!(mesh_roots([]), Err(Error::NoRoots)));
    let garbage = CertificateDer::from(vec![0x30, 0x00]);
    assert!(matches!(mesh_roots([&garbage]), Err(Error::Root { .. })));
}

#[test]
fn provider_offers_tls13_suites_only() {
    let provider = provider();
    assert!(!provider.cipher_suites.is_empty());
    for suite in &provider.cipher_suites {
        assert_eq!(suite.version(), &TLS13, "{suite:?}");
    }
}

const DEFAULT_TTL_PLUS_HOUR: Duration = Duration::from_secs(DEFAULT_SVID_TTL.as_secs() + 3600);
