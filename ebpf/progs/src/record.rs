//! Undoing what a connecting socket's record (`zgate_common::socket`) says
//! was published for it.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use zgate_common::{
    conn::{closed_slot, ConnKey, ORIGIN_LOCAL},
    socket::{SocketRecord, FLAG_CAPTURED, FLAG_PUBLISHED},
};

use crate::maps::{CONN_CLOSED, CONN_COUNT, CONN_PEER, ORIG_DST};

/// The socket `cookie` is going: remove its `ZG_CONN_PEER` entry, noting
/// the 5-tuple as closed (`zgate_common::conn`), and what the agent never
/// took from `ZG_ORIG_DST` if it was captured.
#[inline(always)]
pub fn unpublish(record: &SocketRecord, cookie: u64) {
    if record.flags & FLAG_PUBLISHED == 0 {
        return;
    }
    close(&record.conn, cookie);
    if record.flags & FLAG_CAPTURED != 0 {
        let _ = ORIG_DST.remove(&record.conn);
    }
}

/// Remove the entry `key` if it is still the socket `cookie`'s, and put the
/// 5-tuple in its `ZG_CONN_CLOSED` slot.
#[inline(never)]
fn close(key: &ConnKey, cookie: u64) {
    // SAFETY: a plain Copy value, read at once.
    let owned = unsafe { CONN_PEER.get(key) }.is_some_and(|p| p.is_owned_by(ORIGIN_LOCAL, cookie));
    // Replaced by a newer connection on the 5-tuple, or never inserted.
    if !owned || CONN_PEER.remove(key).is_err() {
        return;
    }
    add_conn_count(u64::MAX);
    if let Some(slot) = CONN_CLOSED.get_ptr_mut(closed_slot(key)) {
        // SAFETY: a valid element for this program run; a plain store (two
        // closes storing at once may tear it, which only loses the slot).
        unsafe { *slot = *key };
    }
}

/// `ZG_CONN_COUNT[0] += delta` (wrapping: `u64::MAX` subtracts one): the
/// entries `sock_ops` has in `ZG_CONN_PEER`.
#[inline(always)]
pub fn add_conn_count(delta: u64) {
    if let Some(p) = CONN_COUNT.get_ptr_mut(0) {
        // SAFETY: a valid, aligned u64 in the map, shared by every CPU, so
        // updated with an atomic add (BPF `lock xadd`); core's `AtomicU64`
        // has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}
