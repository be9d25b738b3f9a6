//! The outbound proxy: connections from enrolled workloads to mesh
//! workloads on other nodes, redirected here by `cgroup/connect4|6`, are
//! carried over HBONE to the destination's node.
//!
//! For each accepted connection: the original destination and the source
//! workload come from `ZG_ORIG_DST` (keyed by the 5-tuple this socket
//! sees); the destination's identity from the WorkloadEntry inventory; the
//! HBONE connection to `<destination ip>:15008` is pooled per (source
//! identity, destination identity, address) and presents the source
//! workload's certificate. A CONNECT the destination refuses (401 when its
//! policy denies) closes the client's connection with a RST, so the client
//! sees a reset at once, never a hang.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use zgate_common::{conn::ConnKey, redirect::OrigDst};

use super::mesh::MeshView;
use crate::{
    bpf::ConnTable,
    hbone::{self, Connection, HboneStream, Pool, PoolKey},
    tls,
};

/// Why a captured connection could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no original destination recorded for it (not captured by zgate's connect hook)")]
    NotCaptured,
    #[error("the source workload #{workload} has no certificate (not enrolled any more?)")]
    NoCertificate { workload: u32 },
    #[error("{addr} is not a mesh workload on another node (any more)")]
    UnknownDestination { addr: SocketAddr },
    #[error("reading the accepted socket's address: {source}")]
    Socket { source: std::io::Error },
    #[error("connecting to the HBONE peer {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from the destination's node within {timeout:?}")]
    Timeout { timeout: std::time::Duration },
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    Hbone(#[from] hbone::Error),
}

/// Shared by every captured connection.
pub(super) struct Outbound {
    pub view: Arc<ArcSwap<MeshView>>,
    pub table: Arc<ConnTable>,
    pub pool: Pool,
}

// === impl Outbound ===

impl Outbound {
    /// Accept captured connections until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((client, peer)) => {
                    tokio::spawn(Arc::clone(&self).relay(client, peer));
                }
                Err(error) => tracing::warn!(%error, "outbound: accept failed"),
            }
        }
    }

    async fn relay(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let (orig, target) = match self.original_destination(&client, peer) {
            Ok(found) => found,
            Err(error) => return refuse(client, peer, None, &error),
        };
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open(&orig, target, peer)).await;
        let mut tunnel = match opened.unwrap_or(Err(Error::Timeout {
            timeout: OPEN_TIMEOUT,
        })) {
            Ok(tunnel) => tunnel,
            Err(error) => return refuse(client, peer, Some(target), &error),
        };
        match tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut tunnel,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await
        {
            Ok((sent, received)) => {
                tracing::debug!(src.addr = %peer, dst.addr = %target, sent, received, "outbound closed");
            }
            Err(error) => {
                tracing::debug!(src.addr = %peer, dst.addr = %target, %error, "outbound failed");
            }
        }
    }

    fn original_destination(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
    ) -> Result<(OrigDst, SocketAddr), Error> {
        let local = client
            .local_addr()
            .map_err(|source| Error::Socket { source })?;
        let key = ConnKey::tcp(peer, local);
        let orig = self.table.take_orig_dst(&key).ok_or(Error::NotCaptured)?;
        let target = SocketAddr::new(orig.dst.into(), orig.dst_port);
        Ok((orig, target))
    }

    /// A CONNECT stream to `target` on a pooled HBONE connection; a pooled
    /// connection that fails below HTTP status level is replaced once.
    async fn open(
        &self,
        orig: &OrigDst,
        target: SocketAddr,
        peer: SocketAddr,
    ) -> Result<HboneStream, Error> {
        let view = self.view.load_full();
        let cert = view
            .certs
            .get(&orig.workload)
            .cloned()
            .ok_or(Error::NoCertificate {
                workload: orig.workload,
            })?;
        let expected = view
            .remote
            .get(&target.ip())
            .cloned()
            .ok_or(Error::UnknownDestination { addr: target })?;
        let key = PoolKey {
            src: cert.identity().clone(),
            dst: expected,
            dst_addr: SocketAddr::new(target.ip(), hbone::PORT),
        };
        let dial = || async {
            let config = tls::client_config(view.roots.clone(), cert.clone(), key.dst.clone())?;
            let tcp = TcpStream::connect(key.dst_addr)
                .await
                .map_err(|source| Error::Connect {
                    addr: key.dst_addr,
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = tls::connect(config, key.dst_addr.ip(), tcp).await?;
            Ok::<_, Error>(Connection::handshake(tls).await?)
        };
        let connection = self.pool.connection(&key, dial).await?;
        match connection.connect(target, Some(peer)).await {
            Err(e) if e.status().is_none() => {
                self.pool.evict(&key);
                let connection = self.pool.connection(&key, dial).await?;
                Ok(connection.connect(target, Some(peer)).await?)
            }
            result => Ok(result?),
        }
    }
}

/// Close the client's connection with a RST (`SO_LINGER` 0), so it sees
/// the refusal at once.
fn refuse(client: TcpStream, peer: SocketAddr, target: Option<SocketAddr>, error: &Error) {
    let target = target.map(|t| t.to_string()).unwrap_or_default();
    match error {
        Error::Hbone(e) if e.status() == Some(http::StatusCode::UNAUTHORIZED) => {
            tracing::info!(src.addr = %peer, dst.addr = %target, "outbound refused by the destination's policy: {error}");
        }
        _ => tracing::warn!(src.addr = %peer, dst.addr = %target, "outbound failed: {error}"),
    }
    if let Err(e) = client.set_zero_linger() {
        tracing::debug!("cannot set SO_LINGER 0: {e}");
    }
    drop(client);
}

/// How long connecting, the handshakes and the CONNECT may take together
/// before the client's connection is reset.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Buffer per direction when copying between the client and the tunnel.
const COPY_BUFFER: usize = 64 * 1024;
