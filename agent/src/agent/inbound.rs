//! The inbound HBONE server: mTLS connections from other nodes' agents to
//! the workloads enrolled here.
//!
//! The certificate presented is chosen by the local address the
//! connection arrived on: the destination workload's address (ztunnel
//! "picks the certificate to present from the local destination address").
//! Each CONNECT stream is delivered by a socket the agent binds to that
//! workload's address; before it connects, the agent records the 5-tuple's
//! peer in `ZG_CONN_PEER` (the mTLS identity, and the HBONE peer's address
//! as the original source), so the kernel's accept-side verdict (`sk_lookup`)
//! decides it with that identity, exactly as for a local client. A refusal
//! (`ECONNREFUSED`) is answered 401.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
};
use zgate_common::{conn::ConnKey, Addr};

use super::{mesh::MeshView, Command};
use crate::{
    bpf::{ConnTable, PeerEntry},
    hbone::{self, Reject, Request},
    identity::SpiffeId,
    tls,
};

/// Shared by every HBONE connection.
pub(super) struct Inbound {
    pub view: Arc<ArcSwap<MeshView>>,
    pub table: Arc<ConnTable>,
    pub tx: mpsc::Sender<Command>,
    /// Identities already interned by the state task (ids are stable).
    pub identities: Mutex<HashMap<SpiffeId, u32>>,
}

/// Source ports `deliver` passes over before it gives up on a connection.
const MAX_PASSED_OVER: usize = 8;

/// A delivered connection; its `ZG_CONN_PEER` entry lives as long as it.
struct Upstream {
    stream: TcpStream,
    _peer: PeerEntry,
}

// === impl Inbound ===

impl Inbound {
    /// Accept HBONE connections until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    tokio::spawn(Arc::clone(&self).connection(tcp, peer));
                }
                Err(error) => tracing::warn!(%error, "hbone: accept failed"),
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let local = match tcp.local_addr() {
            Ok(a) => a.ip().to_canonical(),
            Err(_) => return,
        };
        let Some(config) = self.view.load().local.get(&local).cloned() else {
            tracing::info!(src.addr = %peer, dst.addr = %local, "hbone: no workload enrolled here has this address; closing");
            return;
        };
        let (tls, identity) = match tls::accept(config, tcp).await {
            Ok(accepted) => accepted,
            Err(error) => {
                return tracing::warn!(src.addr = %peer, dst.addr = %local, "hbone: {error}");
            }
        };
        let this = Arc::clone(&self);
        let handler = move |request: Request| {
            let this = Arc::clone(&this);
            async move { this.deliver(request, local, peer.ip()).await }
        };
        if let Err(error) = hbone::serve_connection(tls, identity, handler).await {
            tracing::debug!(src.addr = %peer, %error, "hbone connection ended");
        }
    }

    /// Connect one CONNECT stream to its destination, as its peer.
    async fn deliver(
        &self,
        request: Request,
        local: IpAddr,
        hbone_peer: IpAddr,
    ) -> Result<Upstream, Reject> {
        let target = request.authority;
        if target.ip().to_canonical() != local {
            return Err(Reject::BadDestination);
        }
        if RESERVED_PORTS.contains(&target.port()) {
            return Err(Reject::Unavailable);
        }
        let identity = self
            .intern(&request.peer)
            .await
            .ok_or(Reject::Unavailable)?;
        let unavailable = |e: io::Error| {
            tracing::warn!(dst.addr = %target, "hbone: cannot open the delivery socket: {e}");
            Reject::Unavailable
        };
        // A port whose 5-tuple a workload's connection holds is kept bound
        // (so the next bind picks another) and passed over: its entry is
        // the kernel's, never overwritten.
        let mut passed_over = Vec::new();
        let (socket, peer) = loop {
            let socket = match target {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(unavailable)?;
            socket
                .bind(SocketAddr::new(target.ip(), 0))
                .map_err(unavailable)?;
            let bound = socket.local_addr().map_err(unavailable)?;
            let key = ConnKey::tcp(bound, target);
            let registered = self
                .table
                .register_peer(key, identity, Addr::from(hbone_peer))
                .map_err(|e| {
                    tracing::error!(dst.addr = %target, "hbone: cannot record the peer, refusing: {e}");
                    Reject::Unavailable
                })?;
            match registered {
                Some(peer) => break (socket, peer),
                None if passed_over.len() < MAX_PASSED_OVER => passed_over.push(socket),
                None => {
                    tracing::warn!(dst.addr = %target, "hbone: no source port free of workloads' connections");
                    return Err(Reject::Unavailable);
                }
            }
        };
        drop(passed_over);
        match socket.connect(target).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Ok(Upstream {
                    stream,
                    _peer: peer,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(Reject::Forbidden),
            Err(e) => {
                tracing::info!(dst.addr = %target, "hbone: delivering failed: {e}");
                Err(Reject::Unavailable)
            }
        }
    }

    /// The numeric identity of an authenticated peer; the state task
    /// interns a new one and writes its policy bits (serialized with
    /// policy generations).
    async fn intern(&self, id: &SpiffeId) -> Option<u32> {
        let cached = self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied();
        if cached.is_some() {
            return cached;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::InternPeer(id.clone(), reply))
            .await
            .ok()?;
        let n = match rx.await.ok()? {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(identity = %id, "hbone: refusing, {e}");
                return None;
            }
        };
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), n);
        Some(n)
    }
}

// === impl Upstream ===

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// ztunnel's own ports, never a legitimate inner target (a "SelfCall"):
/// outbound capture, inbound plaintext capture, HBONE.
const RESERVED_PORTS: [u16; 3] = [15001, 15006, 15008];
