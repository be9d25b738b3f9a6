//! Where a connection's peer is recorded (`zgate_common::conn`): the slot
//! its 5-tuple names, for the connections `sock_ops` publishes whose slot
//! was free, or `ZG_CONN_PEER`, for the others and for every connection
//! the agent relayed.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use zgate_common::{
    conn::{closed_slot, conn_slot, ConnKey, ConnPeer, ConnSlot, ORIGIN_LOCAL, SLOT_BUSY},
    socket::Approval,
    Addr,
};

use crate::{
    maps::{CONN_CLOSED, CONN_COUNT, CONN_PEER, CONN_SLOTS},
    slots::{load, release, swap},
};

/// What the accept side needs of a recorded peer.
pub struct Peer {
    pub identity: u32,
    pub approval: Approval,
    /// The original source the agent relayed the connection from; family
    /// 0: the packet's source.
    pub original_src: Addr,
}

impl Peer {
    /// The peer a published slot holds: an enrolled workload on this node,
    /// from the packet's own source.
    #[inline(always)]
    fn in_slot(s: &ConnSlot) -> Self {
        Self {
            identity: s.identity,
            approval: s.approval,
            original_src: Addr::default(),
        }
    }

    /// The peer a `ZG_CONN_PEER` entry holds.
    #[inline(always)]
    fn in_entry(p: &ConnPeer) -> Self {
        Self {
            identity: p.identity,
            approval: p.approval,
            original_src: p.original_src,
        }
    }
}

/// Record the peer of the connection `key`, which the socket `cookie`
/// opens. With no room the destination sees a plaintext peer (fails
/// closed); `connect()` refuses connections before the hash can fill
/// (`zgate_common::conn::RESERVED`).
#[inline(always)]
pub fn publish(key: &ConnKey, cookie: u64, identity: u32, approval: Approval) {
    if let Some(slot) = CONN_SLOTS.get_ptr_mut(conn_slot(key)) {
        // SAFETY: a valid, aligned element for this program run; a slot
        // claimed busy is this writer's alone, and readers ignore it until
        // the second swap, whose barrier orders the stores before it.
        unsafe {
            let owner = &raw mut (*slot).owner;
            if swap(owner, 0, cookie | SLOT_BUSY) {
                (*slot).key = *key;
                (*slot).identity = identity;
                (*slot).approval = approval;
                swap(owner, cookie | SLOT_BUSY, cookie);
                return;
            }
        }
    }
    let peer = ConnPeer {
        owner: cookie,
        identity,
        origin: ORIGIN_LOCAL,
        original_src: Addr::default(),
        approval,
        _pad: 0,
    };
    if CONN_PEER.insert(key, &peer, 0).is_ok() {
        add_conn_count(1);
    }
}

/// The recorded peer of the connection `key`, if any.
#[inline(always)]
pub fn lookup(key: &ConnKey) -> Option<Peer> {
    if let Some(slot) = CONN_SLOTS.get_ptr_mut(conn_slot(key)) {
        // SAFETY: a valid, aligned element for this program run. What is
        // read between the two loads of an unchanged owner is that owner's
        // (`zgate_common::conn::ConnSlot::owner`).
        unsafe {
            let owner = load(&raw mut (*slot).owner);
            if ConnSlot::published(owner) && (*slot).key == *key {
                let peer = Peer::in_slot(&*slot);
                if load(&raw mut (*slot).owner) == owner {
                    return Some(peer);
                }
            }
        }
    }
    // SAFETY: a plain Copy value, copied out at once.
    unsafe { CONN_PEER.get(key) }.map(Peer::in_entry)
}

/// The recorded peer of the connection `key`, read without the owner's
/// barriers: for counters only, which a racing writer can make wrong,
/// never a verdict. (Each barrier is a locked instruction, which waits
/// for every store the CPU has pending.)
#[inline(always)]
pub fn peek(key: &ConnKey) -> Option<Peer> {
    let in_slot = CONN_SLOTS
        .get(conn_slot(key))
        .filter(|s| ConnSlot::published(s.owner) && s.key == *key);
    match in_slot {
        Some(s) => Some(Peer::in_slot(s)),
        // SAFETY: a plain Copy value, copied out at once.
        None => unsafe { CONN_PEER.get(key) }.map(Peer::in_entry),
    }
}

/// Remove the peer of the connection `key` if the socket `cookie` still
/// owns it (else a newer connection on the 5-tuple replaced it, or it was
/// never recorded), noting the 5-tuple as closed.
#[inline(never)]
pub fn remove(key: &ConnKey, cookie: u64) {
    if let Some(slot) = CONN_SLOTS.get_ptr_mut(conn_slot(key)) {
        // SAFETY: a valid, aligned element for this program run; only this
        // socket writes its own cookie there. The freed slot keeps `key`.
        unsafe {
            if (*slot).owner == cookie {
                release(&raw mut (*slot).owner);
                return;
            }
        }
    }
    // SAFETY: a plain Copy value, read at once.
    let owned = unsafe { CONN_PEER.get(key) }.is_some_and(|p| p.is_owned_by(ORIGIN_LOCAL, cookie));
    if !owned || CONN_PEER.remove(key).is_err() {
        return;
    }
    add_conn_count(u64::MAX);
    if let Some(closed) = CONN_CLOSED.get_ptr_mut(closed_slot(key)) {
        // SAFETY: a valid element for this program run; a plain store (two
        // closes storing at once may tear it, which only loses the note).
        unsafe { *closed = *key };
    }
}

/// `ZG_CONN_COUNT[0] += delta` (wrapping: `u64::MAX` subtracts one): the
/// entries `sock_ops` has in `ZG_CONN_PEER`. Peers in slots take none of
/// its room, and their connections never touch the count's line, which
/// every CPU's `connect()` reads.
#[inline(always)]
fn add_conn_count(delta: u64) {
    if let Some(p) = CONN_COUNT.get_ptr_mut(0) {
        // SAFETY: a valid, aligned u64 in the map, shared by every CPU, so
        // updated with an atomic add (BPF `lock xadd`); core's `AtomicU64`
        // has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// `key` is a recently closed connection's: its slot is free and still
/// names it, or its `ZG_CONN_CLOSED` slot does.
#[inline(always)]
pub fn recently_closed(key: &ConnKey) -> bool {
    // Read without the owner's barriers: a racing writer can make only
    // this report wrong, never a verdict.
    let in_slot = CONN_SLOTS
        .get(conn_slot(key))
        .is_some_and(|s| s.owner == 0 && s.key == *key);
    in_slot
        || CONN_CLOSED
            .get(closed_slot(key))
            .is_some_and(|closed| closed == key)
}
