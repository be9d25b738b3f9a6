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

use crate::{socket::Approval, Addr};

pub const MAP: &str = "ZG_CONN_PEER";
/// Open connections by default.
pub const MAX_ENTRIES: u32 = 65_536;
/// `ZG_CONN_COUNT[0]`: open entries `sock_ops` has in `ZG_CONN_PEER`.
pub const COUNT_MAP: &str = "ZG_CONN_COUNT";
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
    pub _pad: [u8; 3],
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
            _pad: [0; 3],
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
    const GOLDEN: u32 = 0x9e37_79b1;
    let word = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut h = (u32::from(key.src_port) << 16) | u32::from(key.dst_port);
    for i in [0, 4, 8, 12] {
        h = (h ^ word(&key.src.bytes, i)).wrapping_mul(GOLDEN);
        h = (h ^ word(&key.dst.bytes, i)).wrapping_mul(GOLDEN);
    }
    h = (h ^ u32::from(key.proto)).wrapping_mul(GOLDEN);
    // The high bits are the well-mixed ones.
    h >> (32 - CLOSED_SLOTS.trailing_zeros())
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
            _pad: [0; 3],
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
}
