//! Reuse of HBONE connections: "streams are pooled and multiplexed per
//! `{src identity, dst identity(ies), src IP, dst IP}`" in ztunnel
//! (istio-l4-semantics.md §6). Here the key is (source identity,
//! destination identity, destination node address); the source IP is the
//! node's own.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Mutex, MutexGuard, PoisonError},
};

use super::Connection;
use crate::identity::SpiffeId;

/// What a pooled connection is shared by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity this node presents for the source workload.
    pub src: SpiffeId,
    /// The identity the destination must present.
    pub dst: SpiffeId,
    /// The destination's HBONE address (`ip:15008`).
    pub dst_addr: SocketAddr,
}

/// Open HBONE connections by [`PoolKey`].
#[derive(Debug, Default)]
pub struct Pool {
    connections: Mutex<HashMap<PoolKey, Connection>>,
}

impl Pool {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pooled connection for `key` if it is still open, else a new one
    /// from `dial` (TCP connect, [`crate::tls::connect`] with the
    /// `client_config` for `key.src` → `key.dst`, then
    /// [`Connection::handshake`]), pooled for the next caller.
    ///
    /// Two callers that find no connection both dial; the later one is
    /// kept, and the other closes once its streams end.
    pub async fn connection<D, Fut, E>(&self, key: &PoolKey, dial: D) -> Result<Connection, E>
    where
        D: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, E>>,
    {
        if let Some(connection) = self.lock().get(key).filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = dial().await?;
        let mut connections = self.lock();
        connections.retain(|_, c| !c.is_closed());
        connections.insert(key.clone(), connection.clone());
        Ok(connection)
    }

    /// Forgets the connection for `key`, e.g. after a CONNECT on it failed
    /// at the HTTP/2 level (not with a status); its open streams carry on.
    pub fn evict(&self, key: &PoolKey) {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Connection>> {
        // The map stays consistent whatever a panicking holder did: every
        // update is a single insert or remove.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
