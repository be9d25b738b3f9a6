use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::{Method, StatusCode};
use rustls::ClientConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::*;
use crate::{
    ca::CertificateAuthority,
    identity::SpiffeId,
    tls::{
        self,
        test_pki::{id, TestPki},
        WorkloadCert,
    },
};

/// Port whose CONNECTs the test handler rejects as `Forbidden`.
const FORBIDDEN_PORT: u16 = 1;
/// … as `BadDestination`.
const NOT_LOCAL_PORT: u16 = 2;

/// An HBONE server on loopback whose handler connects to the authority,
/// except on the reserved ports, and records every request.
struct Server {
    addr: SocketAddr,
    cert: Arc<WorkloadCert>,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// A node with an HBONE server for `httpbin`, and `sleep`'s client config.
struct Mesh {
    pki: TestPki,
    server: Server,
    client: Arc<ClientConfig>,
}

impl Mesh {
    async fn new() -> Self {
        let pki = TestPki::new();
        let cert = pki.cert(&id("httpbin"));
        let server = Server::start(pki.server(cert.clone()), cert).await;
        let client = pki.client(pki.cert(&id("sleep")), &id("httpbin"));
        Self {
            pki,
            server,
            client,
        }
    }

    /// A new mTLS connection to the server, as the TLS stream.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        tls::connect(self.client.clone(), self.server.addr.ip(), tcp)
            .await
            .unwrap()
    }

    /// A new HBONE connection to the server.
    async fn connection(&self) -> Connection {
        Connection::handshake(self.tls().await).await.unwrap()
    }
}

impl Server {
    async fn start(config: Arc<rustls::ServerConfig>, cert: Arc<WorkloadCert>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler = move |request: Request| {
            seen.lock().unwrap().push(request.clone());
            async move {
                match request.authority.port() {
                    FORBIDDEN_PORT => Err(Reject::Forbidden),
                    NOT_LOCAL_PORT => Err(Reject::BadDestination),
                    _ => TcpStream::connect(request.authority)
                        .await
                        .map_err(|_| Reject::Unavailable),
                }
            }
        };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let config = config.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok((tls, peer)) = tls::accept(config, tcp).await else {
                        return;
                    };
                    serve_connection(tls, peer, handler).await.ok();
                });
            }
        });
        Self {
            addr,
            cert,
            requests,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// A TCP echo server: each connection gets its bytes back, and a FIN once
/// it has sent its own.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                tokio::io::copy(&mut read, &mut write).await.ok();
                write.shutdown().await.ok();
            });
        }
    });
    addr
}

/// A port on loopback that nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("the test took longer than 30s")
}

/// Writes `data`, half-closes, and returns everything read until EOF.
async fn round_trip<S: AsyncRead + AsyncWrite>(stream: S, data: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = async {
        write.write_all(data).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let reader = async {
        let mut out = Vec::new();
        read.read_to_end(&mut out).await.unwrap();
        out
    };
    tokio::join!(writer, reader).1
}

/// Sends `request` with h2 directly, as a client zgate would never be.
async fn raw_status(mesh: &Mesh, request: http::Request<()>) -> StatusCode {
    let (mut sender, connection) = h2::client::handshake(mesh.tls().await).await.unwrap();
    tokio::spawn(connection);
    let (response, _) = sender.send_request(request, true).unwrap();
    response.await.unwrap().status()
}

#[tokio::test]
async fn tunnel_round_trips_bytes_and_half_close() {
    within(async {
        let mesh = Mesh::new().await;
        let echo = echo_server().await;
        let client_addr: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let tunnel = mesh
            .connection()
            .await
            .connect(echo, Some(client_addr))
            .await
            .unwrap();
        assert_eq!(
            round_trip(tunnel, b"hello through HBONE").await,
            b"hello through HBONE"
        );

        assert_eq!(
            mesh.server.requests(),
            [Request {
                authority: echo,
                peer: id("sleep"),
                forwarded_for: Some(client_addr),
            }]
        );
    })
    .await;
}

#[tokio::test]
async fn tunnel_carries_ten_megabytes_each_way() {
    within(async {
        let mesh = Mesh::new().await;
        let echo = echo_server().await;
        let data: Vec<u8> = (0..10 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let tunnel = mesh.connection().await.connect(echo, None).await.unwrap();
        let echoed = round_trip(tunnel, &data).await;
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "the echoed bytes differ");
    })
    .await;
}

#[tokio::test]
async fn half_close_lets_the_other_direction_finish() {
    within(async {
        let mesh = Mesh::new().await;
        // A server that reads to EOF, then answers and closes.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            tcp.read_to_end(&mut request).await.unwrap();
            tcp.write_all(format!("got {} bytes", request.len()).as_bytes())
                .await
                .unwrap();
        });
        let tunnel = mesh.connection().await.connect(target, None).await.unwrap();
        assert_eq!(round_trip(tunnel, &[7; 100_000]).await, b"got 100000 bytes");
    })
    .await;
}

#[tokio::test]
async fn refusals_get_ztunnel_status_codes_per_stream() {
    within(async {
        let mesh = Mesh::new().await;
        let echo = echo_server().await;
        let connection = mesh.connection().await;
        let open = connection.connect(echo, None).await.unwrap();

        let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let cases = [
            (localhost(FORBIDDEN_PORT), StatusCode::UNAUTHORIZED),
            (localhost(NOT_LOCAL_PORT), StatusCode::BAD_REQUEST),
            (closed_port().await, StatusCode::SERVICE_UNAVAILABLE),
        ];
        for (target, status) in cases {
            let error = connection.connect(target, None).await.unwrap_err();
            assert_eq!(error.status(), Some(status), "{error}");
            assert!(error.to_string().contains(&target.to_string()), "{error}");
        }

        // The stream opened before, and new ones, are unaffected.
        assert_eq!(round_trip(open, b"still open").await, b"still open");
        let again = connection.connect(echo, None).await.unwrap();
        assert_eq!(round_trip(again, b"new stream").await, b"new stream");
    })
    .await;
}

#[tokio::test]
async fn non_connect_and_bad_authority_get_400() {
    within(async {
        let mesh = Mesh::new().await;
        let get = http::Request::builder()
            .method(Method::GET)
            .uri("https://127.0.0.1:8080/")
            .body(())
            .unwrap();
        assert_eq!(raw_status(&mesh, get).await, StatusCode::BAD_REQUEST);
        let hostname = http::Request::builder()
            .method(Method::CONNECT)
            .uri("httpbin.default.svc:8000")
            .body(())
            .unwrap();
        assert_eq!(raw_status(&mesh, hostname).await, StatusCode::BAD_REQUEST);
        assert_eq!(mesh.server.requests(), [], "the handler was never asked");
    })
    .await;
}

#[tokio::test]
async fn ipv6_authority_reaches_the_handler() {
    within(async {
        let mesh = Mesh::new().await;
        let target: SocketAddr = "[::1]:1".parse().unwrap();
        let error = mesh
            .connection()
            .await
            .connect(target, Some("[2001:db8::1]:4711".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
        let seen = mesh.server.requests();
        assert_eq!(seen[0].authority, target);
        assert_eq!(seen[0].forwarded_for, "[2001:db8::1]:4711".parse().ok());
    })
    .await;
}

#[tokio::test]
async fn dropped_client_stream_closes_the_upstream() {
    within(async {
        let mesh = Mesh::new().await;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let connection = mesh.connection().await;
        let mut tunnel = connection.connect(target, None).await.unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        tunnel.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        upstream.read_exact(&mut byte).await.unwrap();

        drop(tunnel);
        let mut rest = Vec::new();
        // EOF or a reset: either way the upstream connection is over.
        let _ = upstream.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        // The HBONE connection itself lives on.
        let echo = echo_server().await;
        let again = connection.connect(echo, None).await.unwrap();
        assert_eq!(round_trip(again, b"ok").await, b"ok");
    })
    .await;
}

#[tokio::test]
async fn long_lived_tunnel_survives_rotation() {
    within(async {
        let mesh = Mesh::new().await;
        let echo = echo_server().await;
        let before = mesh.server.cert.current().cert[0].clone();
        let connection = mesh.connection().await;
        let tunnel = connection.connect(echo, None).await.unwrap();
        let (mut read, mut write) = tokio::io::split(tunnel);
        let mut buf = [0u8; 6];
        write.write_all(b"before").await.unwrap();
        read.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"before");

        let ca = CertificateAuthority::load_or_generate(&mesh.pki.dir.path().join("ca"))
            .unwrap()
            .with_svid_ttl(Duration::from_secs(48 * 3600))
            .unwrap();
        let next = ca.issue(&id("httpbin")).unwrap();
        mesh.server.cert.rotate(&next).unwrap();

        // New handshakes present the new SVID …
        let fresh = mesh.tls().await;
        let presented = &fresh.get_ref().1.peer_certificates().unwrap()[0];
        let (_, leaf) = X509Certificate::from_der(presented).unwrap();
        assert_eq!(leaf.raw_serial(), next.serial());
        assert_eq!(
            std::time::SystemTime::from(leaf.validity().not_after.to_datetime()),
            next.not_after()
        );
        assert_ne!(presented, &before);
        let fresh = Connection::handshake(fresh).await.unwrap();
        let tunnel = fresh.connect(echo, None).await.unwrap();
        assert_eq!(round_trip(tunnel, b"fresh").await, b"fresh");

        // … while the old tunnel, and its connection, carry on.
        write.write_all(b"after!").await.unwrap();
        read.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        write.shutdown().await.unwrap();
        let mut rest = Vec::new();
        read.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let again = connection.connect(echo, None).await.unwrap();
        assert_eq!(round_trip(again, b"old conn").await, b"old conn");
    })
    .await;
}

#[tokio::test]
async fn pool_reuses_open_connections() {
    within(async {
        let mesh = Mesh::new().await;
        let echo = echo_server().await;
        let pool = Pool::new();
        let dials = AtomicUsize::new(0);
        let key = PoolKey {
            src: id("sleep"),
            dst: id("httpbin"),
            dst_addr: mesh.server.addr,
        };
        let dial = || async {
            dials.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(mesh.connection().await)
        };
        for message in [&b"one"[..], b"two"] {
            let connection = pool.connection(&key, dial).await.unwrap();
            let tunnel = connection.connect(echo, None).await.unwrap();
            assert_eq!(round_trip(tunnel, message).await, message);
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1);
        assert_eq!(pool.len(), 1);

        let other = PoolKey {
            dst: SpiffeId::new("cluster.local", "default", "other"),
            ..key.clone()
        };
        pool.connection(&other, dial).await.unwrap();
        assert_eq!(dials.load(Ordering::SeqCst), 2);

        pool.evict(&key);
        pool.connection(&key, dial).await.unwrap();
        assert_eq!(dials.load(Ordering::SeqCst), 3);
    })
    .await;
}

#[test]
fn error_status_is_only_for_refusals() {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
    let refused = Error::Status {
        target,
        status: StatusCode::UNAUTHORIZED,
    };
    assert_eq!(refused.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(refused.to_string().contains("policy denied"), "{refused}");
    let bug = Error::BugRequest {
        target,
        source: http::Request::builder().uri("\u{0}").body(()).unwrap_err(),
    };
    assert_eq!(bug.status(), None);
}
