//! `ZG_LISTENERS`: which enrolled workload owns a bound address, learned by
//! the `post_bind` programs and removed by `sock_release` (through the
//! socket's `socket::SocketRecord`), so policy applies to whatever a
//! workload listens on without configuring ports.
//!
//! Several sockets may hold one address (`SO_REUSEPORT`: a server's worker
//! processes, or a new one started before the old one stops), so an entry
//! counts them and goes when the last one is released; a port whose entry
//! went with the first would be open to anyone. The count moves by
//! compare-and-swap; only the release that takes it from 1 to 0 deletes
//! the entry, and a bind that finds it at 0 waits for that delete and
//! inserts afresh, so no bind's count is lost to a delete. Each socket
//! counted keeps the entry's tag in its record (`socket::SocketRecord`)
//! and uncounts itself only from that entry. A socket of another workload
//! bound beside the owner's (`SO_REUSEPORT` across workloads of one user)
//! is counted, and enforced with the owner's policy.

use crate::Addr;

pub const MAP: &str = "ZG_LISTENERS";
pub const MAX_ENTRIES: u32 = 65_536;

/// `ZG_LISTENER_OWNERS`: entry tag → owning workload, for the entries
/// `sock_ops` made for sockets listening on a port `listen()` picked (no
/// `bind()`, so no `post_bind`): `sock_ops` cannot tell whose they are
/// (it may not read the current cgroup before Linux 6.4), so it enters
/// them for [`UNATTRIBUTED`] and reports them, and the agent, which reads
/// the socket's cgroup from the kernel's socket table, names the owner
/// here. Until then no policy applies to the address and every
/// connection to it is refused (fail closed).
pub const OWNERS_MAP: &str = "ZG_LISTENER_OWNERS";

/// The owner of an entry whose owner the agent names (`OWNERS_MAP`).
pub const UNATTRIBUTED: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The bound address; `Addr::any(family)` for a wildcard bind.
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ListenerKey>() == 24);

/// A `ZG_LISTENERS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    /// The workload that bound the address first, whose policy applies.
    pub workload: u32,
    pub _pad: u32,
    /// The entry's tag (high half) and the sockets bound to the address
    /// (low half): one word, so a compare-and-swap moves the count only on
    /// the entry it was read from. A deleted entry's memory is reused at
    /// once, for another address; the tag, from the cookie of the socket
    /// that created the entry, tells them apart.
    pub held: u64,
}
const _: () = assert!(size_of::<Listener>() == 16);

impl Listener {
    /// `workload`'s new entry, tagged `tag`, held by `refs` sockets.
    pub const fn new(workload: u32, tag: u32, refs: u32) -> Self {
        Self {
            workload,
            _pad: 0,
            held: ((tag as u64) << 32) | refs as u64,
        }
    }

    /// The tag of a [`Listener::held`] word.
    pub const fn tag(held: u64) -> u32 {
        (held >> 32) as u32
    }

    /// The sockets counted in a [`Listener::held`] word: 0 only while the
    /// release that took it there deletes the entry.
    pub const fn refs(held: u64) -> u32 {
        held as u32
    }
}

/// The tag an entry created by the socket `cookie` gets.
pub const fn tag_of(cookie: u64) -> u32 {
    cookie as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_moves_within_its_half_of_the_word() {
        let entry = Listener::new(7, u32::MAX, 1);
        let held = entry.held + 1;
        assert_eq!((Listener::tag(held), Listener::refs(held)), (u32::MAX, 2));
        let held = held - 2;
        assert_eq!((Listener::tag(held), Listener::refs(held)), (u32::MAX, 0));
        assert_eq!(tag_of(0x1234_5678_9abc_def0), 0x9abc_def0);
    }
}
