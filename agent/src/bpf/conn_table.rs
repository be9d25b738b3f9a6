//! The per-connection entries of the agent's proxies, on map handles of
//! their own (opened from the pins): the original destination of each
//! captured connection (`ZG_ORIG_DST`), and the authenticated peer of each
//! connection the agent delivers after mTLS (`ZG_CONN_PEER`, noted in
//! `ZG_CONN_CLOSED` once it closes); and reading the peers `sock_ops`
//! records (`ZG_CONN_SLOTS`, `zgate_common::conn`).
//!
//! Why the proxies do not go through the state task for these: each entry
//! is keyed by a 5-tuple only this connection has (the agent's own
//! accepted socket, or a socket it bound to an ephemeral port itself), so
//! no other writer can race on the key, and the kernel applies each
//! element update atomically. The state task only reads `ZG_CONN_PEER`
//! (re-deciding connections after a policy update). What must be
//! serialized with policy generations — interning a new peer identity and
//! writing its policy bits — still goes through the state task.

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError};
use zgate_common::{
    conn::{self, closed_slot, conn_slot, ConnKey, ConnPeer, ConnSlot, ORIGIN_AGENT, ORIGIN_LOCAL},
    redirect::{self, OrigDst},
    socket::Approval,
    Addr,
};

use super::{entries, held_slots, Error, Paths};

/// Handles on `ZG_ORIG_DST`, `ZG_CONN_PEER`, `ZG_CONN_CLOSED` and
/// `ZG_CONN_SLOTS`, shared by the proxy tasks.
pub struct ConnTable {
    maps: Mutex<Handles>,
}

struct Handles {
    orig_dst: HashMap<MapData, ConnKey, OrigDst>,
    conn_peer: HashMap<MapData, ConnKey, ConnPeer>,
    conn_closed: Array<MapData, ConnKey>,
    conn_slots: Array<MapData, ConnSlot>,
    /// `ConnPeer::owner` of the next registered connection.
    next_owner: u64,
}

/// A `ZG_CONN_PEER` entry that lives as long as this value: dropping it
/// (the relayed connection closed, or never opened) removes the entry and
/// notes the 5-tuple as closed, for the connection's trailing segments.
pub struct PeerEntry {
    table: Arc<ConnTable>,
    key: ConnKey,
    owner: u64,
}

// === impl ConnTable ===

impl ConnTable {
    /// Opens the maps pinned under `paths` (the datapath is installed).
    pub fn open(paths: &Paths) -> Result<Self, Error> {
        Ok(Self {
            maps: Mutex::new(Handles {
                orig_dst: open(paths, redirect::ORIG_DST_MAP)?,
                conn_peer: open(paths, conn::MAP)?,
                conn_closed: open(paths, conn::CLOSED_MAP)?,
                conn_slots: open(paths, conn::SLOTS_MAP)?,
                next_owner: 1,
            }),
        })
    }

    /// The original destination of a captured connection, as the agent's
    /// accepted socket sees it (`key.src` = the client's end); the entry
    /// is deleted, it served its purpose.
    pub fn take_orig_dst(&self, key: &ConnKey) -> Option<OrigDst> {
        let mut maps = self.lock();
        let orig = maps.orig_dst.get(key, 0).ok()?;
        let _ = maps.orig_dst.remove(key);
        Some(orig)
    }

    /// Records `identity` (authenticated over mTLS, from `original_src`)
    /// as the peer of the connection `key`, before the agent connects it,
    /// so the kernel's accept-side verdict sees it. `None`: a workload's
    /// connection holds this 5-tuple's entry (as seen from another network
    /// namespace); the caller takes another source port.
    pub fn register_peer(
        self: &Arc<Self>,
        key: ConnKey,
        identity: u32,
        original_src: Addr,
    ) -> Result<Option<PeerEntry>, Error> {
        let mut maps = self.lock();
        if peer_of(&maps.conn_slots, &maps.conn_peer, &key)
            .is_some_and(|p| p.origin != ORIGIN_AGENT)
        {
            return Ok(None);
        }
        let owner = maps.next_owner;
        maps.next_owner += 1;
        let peer = ConnPeer {
            owner,
            identity,
            origin: ORIGIN_AGENT,
            original_src,
            // Decided by the kernel at accept, never honoured from elsewhere.
            approval: Approval::default(),
            _pad: 0,
        };
        maps.conn_peer
            .insert(key, peer, 0)
            .map_err(|source| Error::Map {
                name: conn::MAP,
                source,
            })?;
        Ok(Some(PeerEntry {
            table: Arc::clone(self),
            key,
            owner,
        }))
    }

    /// Entries in (`ZG_ORIG_DST`, `ZG_CONN_PEER`): captured connections
    /// not yet accepted, and open connections with a recorded peer.
    pub fn entries(&self) -> io::Result<(u64, u64)> {
        let maps = self.lock();
        let slots = held_slots(&maps.conn_slots)?;
        Ok((
            entries(maps.orig_dst.map())?,
            entries(maps.conn_peer.map())? + slots,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Handles> {
        // Each update is a single map syscall: nothing to repair after a
        // panicking holder.
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        let mut maps = self.table.lock();
        let owned = maps
            .conn_peer
            .get(&self.key, 0)
            .is_ok_and(|p| p.is_owned_by(ORIGIN_AGENT, self.owner));
        if !owned {
            return;
        }
        match maps.conn_peer.remove(&self.key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => tracing::warn!(%error, "removing a relayed connection's peer entry"),
        }
        let slot = closed_slot(&self.key);
        if let Err(error) = maps.conn_closed.set(slot, self.key, 0) {
            tracing::warn!(%error, "noting a relayed connection as closed");
        }
    }
}

/// The recorded peer of the connection `key` (`zgate_common::conn`): in
/// its slot, as an `ORIGIN_LOCAL` entry, or in `ZG_CONN_PEER`.
pub fn peer_of(
    slots: &Array<MapData, ConnSlot>,
    peers: &HashMap<MapData, ConnKey, ConnPeer>,
    key: &ConnKey,
) -> Option<ConnPeer> {
    // A look-up copies the element without a lock, so a slot rewritten
    // meanwhile may read torn: two equal reads are one slot's.
    let read = || slots.get(&conn_slot(key), 0).ok();
    let slot = read().filter(|s| ConnSlot::published(s.owner) && s.key == *key);
    match slot {
        Some(s) if read() == Some(s) => Some(ConnPeer {
            owner: s.owner,
            identity: s.identity,
            origin: ORIGIN_LOCAL,
            original_src: Addr::default(),
            approval: s.approval,
            _pad: 0,
        }),
        _ => peers.get(key, 0).ok(),
    }
}

/// The pinned map `name`, as map type `M`.
fn open<M>(paths: &Paths, name: &'static str) -> Result<M, Error>
where
    M: TryFrom<Map, Error = MapError>,
{
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(paths.maps().join(name)).map_err(err)?;
    M::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}
