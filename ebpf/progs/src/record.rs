//! Undoing what a connecting socket's record (`zgate_common::socket`) says
//! was published for it.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use zgate_common::socket::{SocketRecord, FLAG_CAPTURED, FLAG_PUBLISHED};

use crate::{
    maps::{CONN_COUNT, ORIG_DST},
    peers::remove,
};

/// The socket `cookie` is going: remove its connection's peer, noting the
/// 5-tuple as closed (`zgate_common::conn`), and what the agent never took
/// from `ZG_ORIG_DST` if it was captured.
#[inline(always)]
pub fn unpublish(record: &SocketRecord, cookie: u64) {
    if record.flags & FLAG_PUBLISHED == 0 {
        return;
    }
    if remove(&record.conn, cookie) {
        add_conn_count(u64::MAX);
    }
    if record.flags & FLAG_CAPTURED != 0 {
        let _ = ORIG_DST.remove(&record.conn);
    }
}

/// `ZG_CONN_COUNT[0] += delta` (wrapping: `u64::MAX` subtracts one): the
/// peers `sock_ops` has recorded (`peers`).
#[inline(always)]
pub fn add_conn_count(delta: u64) {
    if let Some(p) = CONN_COUNT.get_ptr_mut(0) {
        // SAFETY: a valid, aligned u64 in the map, shared by every CPU, so
        // updated with an atomic add (BPF `lock xadd`); core's `AtomicU64`
        // has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}
