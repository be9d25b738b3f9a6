//! Test PKI: a node CA in a temporary directory, SVIDs and TLS configs
//! from it, and handshakes over loopback TCP.

use std::{net::Ipv4Addr, sync::Arc};

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{client, server};

use super::{accept, client_config, connect, mesh_roots, server_config, Error, WorkloadCert};
use crate::{
    ca::{CertificateAuthority, Svid},
    identity::SpiffeId,
};

pub(crate) const TRUST_DOMAIN: &str = "cluster.local";

/// A generated root and the mesh roots trusting it.
pub(crate) struct TestPki {
    pub(crate) ca: CertificateAuthority,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) dir: TempDir,
}

/// What each side of a loopback handshake got.
pub(crate) struct Handshake {
    pub(crate) server: Result<(server::TlsStream<TcpStream>, SpiffeId), Error>,
    pub(crate) client: Result<client::TlsStream<TcpStream>, Error>,
}

impl TestPki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(&dir.path().join("ca")).unwrap();
        let roots = mesh_roots([ca.root()]).unwrap();
        Self { ca, roots, dir }
    }

    pub(crate) fn svid(&self, id: &SpiffeId) -> Svid {
        self.ca.issue(id).unwrap()
    }

    pub(crate) fn cert(&self, id: &SpiffeId) -> Arc<WorkloadCert> {
        WorkloadCert::new(&self.svid(id)).unwrap()
    }

    pub(crate) fn server(&self, cert: Arc<WorkloadCert>) -> Arc<ServerConfig> {
        server_config(self.roots.clone(), cert).unwrap()
    }

    pub(crate) fn client(&self, cert: Arc<WorkloadCert>, expected: &SpiffeId) -> Arc<ClientConfig> {
        client_config(self.roots.clone(), cert, expected.clone()).unwrap()
    }
}

/// `spiffe://cluster.local/ns/default/sa/<sa>`.
pub(crate) fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "default", sa)
}

/// Both ends of a fresh loopback TCP connection, (server, client).
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, client) = tokio::join!(listener.accept(), client);
    (accepted.unwrap().0, client.unwrap())
}

/// A handshake between the two configs over loopback TCP.
pub(crate) async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
    let (server_tcp, client_tcp) = tcp_pair().await;
    let (server, client) = tokio::join!(
        accept(server, server_tcp),
        connect(client, Ipv4Addr::LOCALHOST.into(), client_tcp),
    );
    Handshake { server, client }
}
