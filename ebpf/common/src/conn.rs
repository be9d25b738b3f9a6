//! `ZG_CONN_PEER`: connection 5-tuple → the peer identity behind it.
//!
//! Written by the agent for connections it delivers after authenticating the
//! peer over mTLS, and by the `sock_ops` program for connections between
//! workloads on this node; read by the accept-side program. An entry lives
//! exactly as long as the connection's client end. A plain hash (not LRU):
//! an evicted identity would silently turn an authenticated peer into a
//! plaintext one.
//!
//! # Closed connections (`ZG_CONN_CLOSED`)
//!
//! `sk_lookup` runs for every TCP segment that finds no established socket,
//! and cannot tell a SYN from the others. When both ends of a connection
//! are gone, its trailing segments (a RST answering data sent to a closed
//! socket, a `TIME_WAIT` ACK) reach the listener's look-up as if a new
//! connection came in. Judged without their connection's identity they are
//! plaintext — the right verdict, since an identity is never inherited by
//! whatever later arrives on a 5-tuple — but a connection the policy allowed
//! would leave a logged and counted plaintext denial behind.
//!
//! So the end that removes a `ZG_CONN_PEER` entry also writes its 5-tuple
//! into [`CLOSED_MAP`], a direct-mapped array: slot [`closed_slot`] of the
//! key, overwritten by whichever closed connection hashes there next. A
//! segment whose 5-tuple has no `ZG_CONN_PEER` entry but sits in its slot
//! is judged as plaintext **without being counted or logged**. Only the
//! reporting depends on the array, never a verdict, so its one weakness —
//! a slot overwritten (or torn by two closes writing it at once) before a
//! trailing segment arrives — costs at most one spurious report: at 10 000
//! closes a second a slot keeps its 5-tuple for 0.8 s on average. A close
//! costs one store and no look-up, and the accept side reads one slot only
//! for segments no open connection vouches for.
//!
//! # Slots (`ZG_CONN_SLOTS`)
//!
//! A connection between two workloads on this node publishes its peer at
//! `connect()`, is looked up by its destination at SYN time and once
//! established, and is unpublished when its client closes: five hash
//! operations, each hashing 48 bytes to a random bucket of a table a
//! megabyte long (the insert and the delete locking it). So `sock_ops`
//! puts these peers in a
//! direct-mapped array instead, [`SLOTS_MAP`], in the slot [`conn_slot`]
//! names: successive connections from a client take neighbouring slots,
//! and the destination's look-ups, on the same CPU over loopback, find
//! the line still warm. A connection whose slot another open one holds
//! goes to [`MAP`]; readers look in the slot first, then in [`MAP`],
//! which also keeps every peer the agent records. A freed slot keeps its
//! 5-tuple: for a connection closed there, that is its closed note, and
//! nothing goes to [`CLOSED_MAP`].

use crate::{socket::Approval, Addr};

pub const MAP: &str = "ZG_CONN_PEER";
/// Open connections by default.
pub const MAX_ENTRIES: u32 = 65_536;
/// Entries kept free for the agent's own (mTLS-relayed) connections; past
/// capacity less `RESERVED` (`config::Config::conn_limit`), `connect()` from
/// a workload fails (EPERM) rather than let its identity go unrecorded.
pub const RESERVED: u32 = 1_024;

/// The peer was authenticated by the agent (HBONE/mTLS).
pub const ORIGIN_AGENT: u32 = 1;
/// The peer is an enrolled workload on this node (recorded at `connect()`).
pub const ORIGIN_LOCAL: u32 = 2;

/// A TCP/UDP connection as the destination sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    // Scalars, not `[u8; 3]`: an array is zeroed by a call to `memset` in
    // the eBPF programs.
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(size_of::<ConnKey>() == 48);

impl ConnKey {
    /// The TCP connection from `src` to `dst`, as the destination sees it.
    pub fn tcp(src: core::net::SocketAddr, dst: core::net::SocketAddr) -> Self {
        Self {
            src: Addr::from(src.ip()),
            dst: Addr::from(dst.ip()),
            src_port: src.port(),
            dst_port: dst.port(),
            proto: crate::IPPROTO_TCP,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// `ZG_CONN_CLOSED`: the 5-tuples of recently closed connections (see the
/// module doc).
pub const CLOSED_MAP: &str = "ZG_CONN_CLOSED";
/// Slots of [`CLOSED_MAP`] (384 KiB).
pub const CLOSED_SLOTS: u32 = 8_192;
const _: () = assert!(CLOSED_SLOTS.is_power_of_two());

/// The [`CLOSED_MAP`] slot of `key`: a multiplicative hash of its words,
/// the same in the kernel and the agent.
#[inline(always)]
pub fn closed_slot(key: &ConnKey) -> u32 {
    let h = mix(
        key,
        (u32::from(key.src_port) << 16) | u32::from(key.dst_port),
    );
    // The high bits are the well-mixed ones.
    h >> (32 - CLOSED_SLOTS.trailing_zeros())
}

/// `seed` mixed with `key`'s addresses and protocol (multiplicative).
#[inline(always)]
fn mix(key: &ConnKey, seed: u32) -> u32 {
    const GOLDEN: u32 = 0x9e37_79b1;
    let (src, dst) = (key.src.words(), key.dst.words());
    let mut h = seed;
    // The address words, not the family's.
    for i in 1..5 {
        h = (h ^ src[i]).wrapping_mul(GOLDEN);
        h = (h ^ dst[i]).wrapping_mul(GOLDEN);
    }
    (h ^ u32::from(key.proto)).wrapping_mul(GOLDEN)
}

/// `ZG_CONN_SLOTS`: the peers `sock_ops` publishes for connections between
/// workloads on this node (see "Slots" in the module doc).
pub const SLOTS_MAP: &str = "ZG_CONN_SLOTS";
/// Slots of [`SLOTS_MAP`] (4.5 MiB): one per source port.
pub const CONN_SLOTS: u32 = 65_536;
const _: () = assert!(CONN_SLOTS == 1 << 16);
/// [`ConnSlot::owner`] while its writer fills the slot in.
pub const SLOT_BUSY: u64 = 1 << 63;

/// The [`SLOTS_MAP`] slot of `key`: its source port, offset by a hash of
/// the rest, so one client's connections to one destination never take
/// the same slot, and take nearby ones: the kernel picks a connection's
/// ephemeral port a few even steps after the last one to that destination
/// (2–16 on Linux 5.18 and later), so the port is rotated right by one
/// first, and consecutive even ports name consecutive slots.
#[inline(always)]
pub fn conn_slot(key: &ConnKey) -> u32 {
    let offset = mix(key, u32::from(key.dst_port)) >> 16;
    (offset + u32::from(key.src_port.rotate_right(1))) & (CONN_SLOTS - 1)
}

/// A [`SLOTS_MAP`] element. Free while `owner` is 0; a freed slot keeps its
/// connection's `key`, the closed-connection note for that 5-tuple until
/// another connection takes the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSlot {
    /// The connecting socket's cookie, with [`SLOT_BUSY`] while the rest
    /// is being written. Readers take it (atomically) before and after the
    /// rest, and trust what they read only if it did not change: cookies
    /// are never reused, so an unchanged owner means an unchanged slot.
    pub owner: u64,
    pub key: ConnKey,
    /// As [`ConnPeer::identity`].
    pub identity: u32,
    pub _pad: u32,
    /// As [`ConnPeer::approval`].
    pub approval: Approval,
}
const _: () = assert!(size_of::<ConnSlot>() == 72);

impl ConnSlot {
    /// A slot whose owner word reads `owner` holds a published peer: held,
    /// and not being written.
    #[inline(always)]
    pub const fn published(owner: u64) -> bool {
        owner != 0 && owner & SLOT_BUSY == 0
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnPeer {
    /// Who wrote the entry: the connecting socket's cookie (`ORIGIN_LOCAL`)
    /// or the agent's number for the connection (`ORIGIN_AGENT`). An entry
    /// is removed only while it is still its owner's: another connection on
    /// the same 5-tuple has replaced it otherwise.
    pub owner: u64,
    /// Numeric identity of the authenticated peer (never 0).
    pub identity: u32,
    /// `ORIGIN_*`.
    pub origin: u32,
    /// The original source address when the agent relayed the connection,
    /// used for `ipBlocks`; all-zero (family 0) means "the packet's source".
    pub original_src: Addr,
    /// `ORIGIN_LOCAL`: the verdict `connect()` already took, if it was an
    /// allow the accept side may honour.
    pub approval: Approval,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ConnPeer>() == 48);

impl ConnPeer {
    /// Still the entry `origin`'s writer made for the connection `owner`.
    pub fn is_owned_by(&self, origin: u32, owner: u64) -> bool {
        self.origin == origin && self.owner == owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_port: u16) -> ConnKey {
        ConnKey {
            src: Addr::v4([127, 0, 0, 1]),
            dst: Addr::v4([127, 0, 0, 1]),
            src_port,
            dst_port: 8000,
            proto: crate::IPPROTO_TCP,
            _pad0: 0,
            _pad1: 0,
        }
    }

    /// Consecutive source ports — one client's connections — spread over
    /// the slots instead of overwriting each other's.
    #[test]
    fn closed_slots_spread_consecutive_ports() {
        let mut used = [false; CLOSED_SLOTS as usize];
        for port in 32_768..32_768 + 1_024 {
            let slot = closed_slot(&key(port));
            assert!(slot < CLOSED_SLOTS);
            used[slot as usize] = true;
        }
        // Random placement would fill about 8192 · (1 - e^(-1/8)) ≈ 963.
        assert!(used.iter().filter(|u| **u).count() > 950);
    }

    /// One client's connections to one destination: every source port its
    /// own slot, and the next even port the next slot.
    #[test]
    fn conn_slots_follow_source_ports() {
        let mut used = [false; CONN_SLOTS as usize];
        for port in 0..=u16::MAX {
            let slot = conn_slot(&key(port));
            assert!(slot < CONN_SLOTS);
            assert!(!used[slot as usize], "port {port} shares a slot");
            used[slot as usize] = true;
        }
        for port in (32_768..60_998).step_by(2) {
            assert_eq!(
                conn_slot(&key(port + 2)),
                (conn_slot(&key(port)) + 1) % CONN_SLOTS
            );
        }
        let first = conn_slot(&key(32_768));
        // Another destination port starts elsewhere.
        let other = ConnKey {
            dst_port: 8001,
            ..key(32_768)
        };
        assert_ne!(conn_slot(&other), first);
    }
}
