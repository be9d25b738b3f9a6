//! Undoing what a connecting socket's record (`zgate_common::socket`) says
//! was published for it.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use zgate_common::{
    conn::{ConnKey, LINGER_SLOTS, ORIGIN_LOCAL, STATE_CLOSED},
    socket::{SocketRecord, FLAG_CAPTURED, FLAG_PUBLISHED},
};

use crate::maps::{CONN_COUNT, CONN_LINGER, CONN_PEER, ORIG_DST};

/// The socket `cookie` is going: mark its `ZG_CONN_PEER` entry closed, to
/// linger (`zgate_common::conn`), and remove what the agent never took from
/// `ZG_ORIG_DST` if it was captured.
#[inline(always)]
pub fn unpublish(record: &SocketRecord, cookie: u64) {
    if record.flags & FLAG_PUBLISHED == 0 {
        return;
    }
    linger(&record.conn, cookie);
    if record.flags & FLAG_CAPTURED != 0 {
        let _ = ORIG_DST.remove(&record.conn);
    }
}

/// Close the entry `key` of the socket `cookie` and put it in this CPU's
/// ring, removing the entry that closed `LINGER_SLOTS` closes ago. (A close
/// preempted by another one on the same CPU may share its slot; the entry
/// it loses then lingers until a connection takes its 5-tuple again.)
#[inline(never)]
fn linger(key: &ConnKey, cookie: u64) {
    match CONN_PEER.get_ptr_mut(key) {
        // SAFETY: a valid entry for this program run (RCU); a plain store.
        Some(p) if unsafe { (*p).is_owned_by(ORIGIN_LOCAL, cookie) } => unsafe {
            (*p).state = STATE_CLOSED;
        },
        // Replaced by a newer connection on the 5-tuple, or never inserted.
        _ => return,
    }
    // Closed entries have room of their own beyond the limit.
    add_conn_count(u64::MAX);
    let Some(ring) = CONN_LINGER.get_ptr_mut(0) else {
        remove_closed(key, cookie);
        return;
    };
    // SAFETY: this CPU's value, valid for the program run.
    let ring = unsafe { &mut *ring };
    let slot = &mut ring.slots[ring.next as usize & (LINGER_SLOTS - 1)];
    ring.next = ring.next.wrapping_add(1);
    if slot.owner != 0 {
        remove_closed(&slot.key, slot.owner);
    }
    slot.key = *key;
    slot.owner = cookie;
}

/// Remove `key` if it is still the closed entry of the socket `owner`.
#[inline(always)]
fn remove_closed(key: &ConnKey, owner: u64) {
    // SAFETY: a plain Copy value, read at once.
    let closed = unsafe { CONN_PEER.get(key) }
        .is_some_and(|p| p.is_owned_by(ORIGIN_LOCAL, owner) && !p.is_open());
    if closed {
        let _ = CONN_PEER.remove(key);
    }
}

/// `ZG_CONN_COUNT[0] += delta` (wrapping: `u64::MAX` subtracts one): the
/// open entries `sock_ops` has in `ZG_CONN_PEER`.
#[inline(always)]
pub fn add_conn_count(delta: u64) {
    if let Some(p) = CONN_COUNT.get_ptr_mut(0) {
        // SAFETY: a valid, aligned u64 in the map, shared by every CPU, so
        // updated with an atomic add (BPF `lock xadd`); core's `AtomicU64`
        // has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}
