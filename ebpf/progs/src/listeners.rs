//! Counting the sockets bound to an address in its `ZG_LISTENERS` entry
//! (`zgate_common::listener`), and naming an entry's owner.

use aya_ebpf::bindings::BPF_NOEXIST;
use zgate_common::listener::{Listener, ListenerKey, UNATTRIBUTED};

use crate::{
    maps::{LISTENERS, OWNERS},
    slots,
};

/// Tries at an entry other CPUs keep changing meanwhile; past them a bind
/// is refused (like a full map), and a release leaves the entry counted
/// one too many (its address stays enforced).
const TRIES: u32 = 8;

/// Count a socket in `key`'s entry, creating the entry, tagged `tag`, for
/// `workload` if there is none; the tag of the entry it is counted in, or
/// `None` (the map is full).
#[inline(always)]
pub fn hold(key: &ListenerKey, workload: u32, tag: u32) -> Option<u32> {
    for _ in 0..TRIES {
        match LISTENERS.get_ptr_mut(key) {
            Some(entry) => {
                // SAFETY: a valid, aligned element for this program run;
                // its count only ever moves by compare-and-swap.
                let held = unsafe { slots::load(&raw mut (*entry).held) };
                // At 0 its last socket is deleting it: insert afresh after.
                if Listener::refs(held) != 0
                    && unsafe { slots::swap(&raw mut (*entry).held, held, held + 1) }
                {
                    return Some(Listener::tag(held));
                }
            }
            None => {
                let fresh = Listener::new(workload, tag, 1);
                if LISTENERS.insert(key, &fresh, u64::from(BPF_NOEXIST)).is_ok() {
                    return Some(tag);
                }
            }
        }
    }
    None
}

/// Uncount a socket from `key`'s entry tagged `tag`; the last one deletes
/// it (and the name the agent gave an entry's owner, if it named one). An
/// entry of another tag is not the one the socket was counted in (that one
/// went with a lost map, and another socket's bind made this).
#[inline(always)]
pub fn unhold(key: &ListenerKey, tag: u32) {
    for _ in 0..TRIES {
        let Some(entry) = LISTENERS.get_ptr_mut(key) else {
            return;
        };
        // SAFETY: as in `hold`.
        let held = unsafe { slots::load(&raw mut (*entry).held) };
        if Listener::tag(held) != tag || Listener::refs(held) == 0 {
            return;
        }
        if unsafe { slots::swap(&raw mut (*entry).held, held, held - 1) } {
            if Listener::refs(held) == 1 {
                // SAFETY: a plain Copy field, read before the delete.
                let unnamed = unsafe { (*entry).workload } == UNATTRIBUTED;
                let _ = LISTENERS.remove(key);
                if unnamed {
                    let _ = OWNERS.remove(&tag);
                }
            }
            return;
        }
    }
}

/// The workload that owns `entry`: its own, or the one the agent named for
/// an entry `sock_ops` made (`UNATTRIBUTED` until named).
#[inline(always)]
pub fn owner(entry: &Listener) -> u32 {
    if entry.workload != UNATTRIBUTED {
        return entry.workload;
    }
    // SAFETY: a plain u32, copied out at once.
    unsafe { OWNERS.get(&Listener::tag(entry.held)) }.map_or(UNATTRIBUTED, |w| *w)
}
