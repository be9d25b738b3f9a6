//! Per-socket state by cookie: the slot its cookie names, or, when another
//! open socket holds that slot, a hash (`zgate_common::socket`, "Slots").
//! Only a socket's own programs touch its state, one at a time (the socket
//! lock, or the socket's own softirq processing), so a slot needs atomics
//! only to claim it against another socket naming the same one.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::BPF_NOEXIST;
use zgate_common::{
    socket::{cookie_slot, SocketRecord, FLAG_BY_AGENT},
    stats::ConnStatsKey,
};

use crate::maps::{ACCEPTED, ACCEPTED_SLOTS, SOCKETS, SOCKETS_BY_AGENT, SOCKET_SLOTS};

/// The socket `cookie`'s record, if it has one.
#[inline(always)]
pub fn record(cookie: u64) -> Option<*mut SocketRecord> {
    let slot = SOCKET_SLOTS.get_ptr_mut(cookie_slot(cookie))?;
    // SAFETY: a valid, aligned element for this program run.
    unsafe {
        if (*slot).cookie == cookie {
            return Some(&raw mut (*slot).record);
        }
        if (*slot).overflow == 0 && SOCKETS_BY_AGENT.get(0).is_none_or(|n| *n == 0) {
            return None;
        }
    }
    SOCKETS.get_ptr_mut(&cookie)
}

/// Give the socket `cookie`, which has no record, `record`; false if there
/// is no room.
#[inline(always)]
pub fn add_record(cookie: u64, record: &SocketRecord) -> bool {
    let Some(slot) = SOCKET_SLOTS.get_ptr_mut(cookie_slot(cookie)) else {
        return false;
    };
    // SAFETY: a valid, aligned element for this program run; a claimed
    // slot is this socket's alone.
    unsafe {
        if claim(&raw mut (*slot).cookie, cookie) {
            (*slot).record = *record;
            return true;
        }
        // Counted before the insert, so a look-up never misses the record.
        atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*slot).overflow, 1);
    }
    if SOCKETS.insert(&cookie, record, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // SAFETY: as above.
    unsafe { uncount(&raw mut (*slot).overflow) };
    false
}

/// Remove the socket `cookie`'s record, `record` (a copy).
#[inline(always)]
pub fn remove_record(cookie: u64, record: &SocketRecord) {
    let Some(slot) = SOCKET_SLOTS.get_ptr_mut(cookie_slot(cookie)) else {
        return;
    };
    // SAFETY: a valid, aligned element for this program run.
    unsafe {
        if (*slot).cookie == cookie {
            release(&raw mut (*slot).cookie);
            return;
        }
    }
    if SOCKETS.remove(&cookie).is_ok() && record.flags & FLAG_BY_AGENT == 0 {
        // SAFETY: as above.
        unsafe { uncount(&raw mut (*slot).overflow) };
    }
}

/// Keep the counters' key of the accepted socket `cookie`. No room: its
/// close goes uncounted; nothing else depends on it.
#[inline(always)]
pub fn add_accepted(cookie: u64, stats: &ConnStatsKey) {
    if let Some(slot) = ACCEPTED_SLOTS.get_ptr_mut(cookie_slot(cookie)) {
        // SAFETY: a valid, aligned element for this program run; a claimed
        // slot is this socket's alone.
        unsafe {
            if claim(&raw mut (*slot).cookie, cookie) {
                (*slot).stats = *stats;
                return;
            }
        }
    }
    let _ = ACCEPTED.insert(&cookie, stats, 0);
}

/// Take the counters' key of the accepted socket `cookie`.
#[inline(always)]
pub fn take_accepted(cookie: u64) -> Option<ConnStatsKey> {
    if let Some(slot) = ACCEPTED_SLOTS.get_ptr_mut(cookie_slot(cookie)) {
        // SAFETY: a valid, aligned element for this program run; the key
        // is copied out before the slot is freed.
        unsafe {
            if (*slot).cookie == cookie {
                let stats = (*slot).stats;
                release(&raw mut (*slot).cookie);
                return Some(stats);
            }
        }
    }
    // SAFETY: a plain Copy value, copied out at once.
    let stats = (unsafe { ACCEPTED.get(&cookie) }).copied()?;
    let _ = ACCEPTED.remove(&cookie);
    Some(stats)
}

/// Claim a free slot (`*owner` 0) for the socket `cookie`.
///
/// # Safety
/// `owner` is a slot's owner word, valid and aligned for this program run.
#[inline(always)]
unsafe fn claim(owner: *mut u64, cookie: u64) -> bool {
    // SAFETY: the caller's.
    unsafe { swap(owner, 0, cookie) }
}

/// `*owner = new` if it is `old` (a full barrier, on every JIT).
///
/// # Safety
/// `owner` is a word of a map element (a slot's owner, a listener's
/// count), valid and aligned for this program run.
#[inline(always)]
pub unsafe fn swap(owner: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: the caller's.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(owner, old, new)
    };
    swapped
}

/// `*owner`, read with a full barrier (an atomic no-op): what a reader
/// reads after it, it reads after this.
///
/// # Safety
/// As [`swap`].
#[inline(always)]
pub unsafe fn load(owner: *mut u64) -> u64 {
    // SAFETY: the caller's.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(owner, 0) }
}

/// Free a slot its socket holds.
///
/// # Safety
/// As [`claim`].
#[inline(always)]
pub unsafe fn release(owner: *mut u64) {
    // An aligned 8-byte store is atomic (BPF has no ordered store before
    // v4): a claim on another CPU sees the slot free or held.
    // SAFETY: the caller's.
    unsafe { core::ptr::write_volatile(owner, 0) };
}

/// `*overflow -= 1`.
///
/// # Safety
/// As [`claim`], for a slot's overflow count.
#[inline(always)]
unsafe fn uncount(overflow: *mut u32) {
    // SAFETY: the caller's.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(overflow, u32::MAX) };
}
