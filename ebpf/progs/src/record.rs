//! Undoing what a connecting socket's record (`zgate_common::socket`) says
//! was published for it.

use zgate_common::socket::{SocketRecord, FLAG_CAPTURED, FLAG_PUBLISHED};

use crate::{
    maps::ORIG_DST,
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
    remove(&record.conn, cookie);
    if record.flags & FLAG_CAPTURED != 0 {
        let _ = ORIG_DST.remove(&record.conn);
    }
}
