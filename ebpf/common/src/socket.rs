//! What the kernel records about one socket of an enrolled workload, by
//! socket cookie: one record for connecting and bound sockets, so
//! `sock_release` finds all there is to undo with a single look-up, and
//! nothing is written for a socket that had nothing recorded.
//!
//! - A **connecting** socket: `connect4|6` records the source workload, the
//!   destination it judged and, if that destination's policy allowed the
//!   connection, the [`Approval`]. `sock_ops` (`TCP_CONNECT_CB`) publishes
//!   the identity under the 5-tuple in `ZG_CONN_PEER` (and a captured
//!   connection's original destination in `ZG_ORIG_DST`) and keeps the
//!   5-tuple in the record; `sock_release` removes both (and notes the
//!   5-tuple as closed, `zgate_common::conn`).
//! - A **bound** socket: `post_bind4|6` records the bound address, whose
//!   `ZG_LISTENERS` entry `sock_release` removes (it may not read the
//!   address itself). A bound socket that then connects keeps it.
//! - An **accepted** socket has no record: `sock_ops` keeps its counters'
//!   key ([`ConnStatsKey`]) from `PASSIVE_ESTABLISHED_CB` to `TCP_CLOSE`,
//!   when its byte counts are added (every TCP socket passes through
//!   `TCP_CLOSE` before the kernel frees it).
//!
//! # Slots
//! A record (or counters' key) is kept in the slot of a direct-mapped
//! array its cookie names ([`cookie_slot`]; `ZG_SOCKET_SLOTS`,
//! `ZG_ACCEPTED_SLOTS`), or, when another open socket holds that slot, in a
//! hash by cookie ([`MAP`], [`ACCEPTED_MAP`]). The kernel hands cookies out
//! from a counter, consecutively on each CPU, so successive connections'
//! slots are neighbours: a claim is one compare-and-swap on a warm cache
//! line, where a hash insert takes a bucket lock on a cold one (a cookie
//! names a random bucket of a table megabytes long) and a free element
//! from a shared list. A socket loses its slot only to one still open
//! [`COOKIE_SLOTS`] cookies later, so the hashes, allocated per entry, are
//! nearly always empty. A socket slot counts the records of the sockets
//! naming it that are in the hash, so a socket with none is known to have
//! none without a look-up there. Neither is socket-local storage: creating
//! a socket's storage allocates twice and charges the memory cgroup, which
//! costs more than a hash insert.

use crate::{conn::ConnKey, listener::ListenerKey, stats::ConnStatsKey};

pub const MAP: &str = "ZG_SOCKETS";
pub const SLOTS_MAP: &str = "ZG_SOCKET_SLOTS";
pub const ACCEPTED_MAP: &str = "ZG_ACCEPTED";
pub const ACCEPTED_SLOTS_MAP: &str = "ZG_ACCEPTED_SLOTS";
/// `ZG_SOCKETS_BY_AGENT`: a one-element array, non-zero once the agent has
/// written a record into `ZG_SOCKETS` (a re-learned listener, not counted
/// in its slot): from then on every socket's record may be there.
pub const BY_AGENT_MAP: &str = "ZG_SOCKETS_BY_AGENT";

/// Slots of each array.
pub const COOKIE_SLOTS: u32 = 65_536;

/// The slot of the socket `cookie`.
pub const fn cookie_slot(cookie: u64) -> u32 {
    (cookie % COOKIE_SLOTS as u64) as u32
}

/// A `ZG_SOCKET_SLOTS` element: free while `cookie` is 0 (no socket has
/// cookie 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketSlot {
    pub cookie: u64,
    /// Records in `ZG_SOCKETS` that the kernel put there because this slot
    /// was taken.
    pub overflow: u32,
    pub record: SocketRecord,
}
const _: () = assert!(size_of::<SocketSlot>() == 112);

/// A `ZG_ACCEPTED_SLOTS` element: free while `cookie` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptedSlot {
    pub cookie: u64,
    pub stats: ConnStatsKey,
}
const _: () = assert!(size_of::<AcceptedSlot>() == 16);

/// `connect()` from an enrolled workload.
pub const KIND_CONNECTING: u8 = 1;
/// An address an enrolled workload bound.
pub const KIND_BOUND: u8 = 3;

/// Connecting: redirected to the agent's outbound listener (HBONE).
pub const FLAG_CAPTURED: u8 = 1;
/// Connecting: `conn` is the 5-tuple, published in `ZG_CONN_PEER` (and,
/// captured, in `ZG_ORIG_DST`).
pub const FLAG_PUBLISHED: u8 = 2;
/// `bound` is this socket's `ZG_LISTENERS` key, and the socket is counted
/// in its entry (`bound_tag`).
pub const FLAG_BOUND: u8 = 4;
/// Written by the agent (`BY_AGENT_MAP`), not counted in its slot.
pub const FLAG_BY_AGENT: u8 = 8;

/// The destination's policy allowed a connection at `connect()`, where both
/// identities are known: the accept side honours that verdict instead of
/// deciding again, as long as the policy generation and the destination
/// workload are still the same. `generation` 0: no approval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Approval {
    pub generation: u32,
    /// Numeric id of the destination workload whose policy allowed it.
    pub workload: u32,
}
const _: () = assert!(size_of::<Approval>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketRecord {
    /// `KIND_*`.
    pub kind: u8,
    /// `FLAG_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Connecting: the source workload's identity.
    pub identity: u32,
    /// Connecting: the source workload. Bound: the workload that owns the
    /// socket.
    pub workload: u32,
    /// Connecting only.
    pub approval: Approval,
    /// Connecting: the destination `connect()` judged (source unset), then
    /// the 5-tuple once published.
    pub conn: ConnKey,
    /// `FLAG_BOUND`: the address and port this socket bound.
    pub bound: ListenerKey,
    /// `FLAG_BOUND`: the tag of the `ZG_LISTENERS` entry this socket is
    /// counted in (`listener::Listener::held`).
    pub bound_tag: u32,
}
const _: () = assert!(size_of::<SocketRecord>() == 96);

/// Records for `connections` connecting sockets and `listeners` bound
/// ones.
pub const fn capacity(connections: u32, listeners: u32) -> u32 {
    connections.saturating_add(listeners)
}

pub const MAX_ENTRIES: u32 = capacity(crate::conn::MAX_ENTRIES, crate::listener::MAX_ENTRIES);
