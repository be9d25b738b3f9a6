//! `ZG_CONN_PEER`: connection 5-tuple → the peer identity behind it.
//!
//! Written by the agent for connections it delivers after authenticating the
//! peer over mTLS, and by the `sock_ops` program for connections between
//! workloads on this node; read by the accept-side program. Entries live as
//! long as the connection, then linger a little, marked closed. A plain hash
//! (not LRU): an evicted identity would silently turn an authenticated peer
//! into a plaintext one.
//!
//! # Why a closed connection's entry lingers
//!
//! `sk_lookup` runs for every TCP segment that finds no established socket,
//! and cannot tell a SYN from the others. When both ends of a connection
//! are gone, its trailing segments (a RST answering data sent to a closed
//! socket, a `TIME_WAIT` ACK) reach the listener's look-up as if a new
//! connection came in. Without the entry they were judged as plaintext, and
//! a connection the policy allowed left a logged and counted plaintext
//! denial behind. A [`STATE_CLOSED`] entry tells `sk_lookup` the 5-tuple
//! belonged to a connection that is over: what arrives on it is judged as
//! plaintext (the identity is never inherited, so a socket that later takes
//! the same 5-tuple without `connect()` recording it gains nothing) and is
//! neither counted nor logged. The kernel removes a closed entry
//! [`LINGER_SLOTS`] closes later on the same CPU ([`LINGER_MAP`]); the agent
//! its own after [`AGENT_LINGER`] more of its closes.

use crate::{socket::Approval, Addr};

pub const MAP: &str = "ZG_CONN_PEER";
/// Open connections by default; the map has room for the closed ones that
/// linger on top ([`lingering_capacity`]).
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

/// The connection is open.
pub const STATE_OPEN: u32 = 0;
/// The connection is over; the entry only lingers (see the module doc).
pub const STATE_CLOSED: u32 = 1;

/// `ZG_CONN_LINGER`: per CPU, the closed `ORIGIN_LOCAL` entries still
/// lingering, oldest first from `next`.
pub const LINGER_MAP: &str = "ZG_CONN_LINGER";
/// Closed entries each CPU keeps: at 10 000 closes a second on one CPU, a
/// closed connection's trailing segments have 12 ms; the map holds at most
/// this many per CPU beyond live connections.
pub const LINGER_SLOTS: usize = 128;
/// Closed entries of connections the agent delivered it keeps.
pub const AGENT_LINGER: usize = 256;

/// Room `ZG_CONN_PEER` needs for closed entries beyond the open ones, with
/// `cpus` possible CPUs: they never count against the connection limit.
pub const fn lingering_capacity(cpus: u32) -> u32 {
    (LINGER_SLOTS as u32)
        .saturating_mul(cpus)
        .saturating_add(AGENT_LINGER as u32)
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnPeer {
    /// Who wrote the entry: the connecting socket's cookie (`ORIGIN_LOCAL`)
    /// or the agent's number for the connection (`ORIGIN_AGENT`). A
    /// lingering entry is removed only while it is still its owner's: a new
    /// connection on the same 5-tuple has replaced it otherwise.
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
    /// `STATE_*`.
    pub state: u32,
}
const _: () = assert!(size_of::<ConnPeer>() == 48);

impl ConnPeer {
    /// The connection is not over: only then does the entry vouch for its
    /// identity.
    pub fn is_open(&self) -> bool {
        self.state == STATE_OPEN
    }

    /// Still the entry `origin`'s writer made for the connection `owner`.
    pub fn is_owned_by(&self, origin: u32, owner: u64) -> bool {
        self.origin == origin && self.owner == owner
    }
}

/// One closed entry in a CPU's [`Linger`] ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LingerSlot {
    pub key: ConnKey,
    /// [`ConnPeer::owner`] when it closed; 0: an empty slot.
    pub owner: u64,
}
const _: () = assert!(size_of::<LingerSlot>() == 56);

/// [`LINGER_MAP`]'s value: a ring of the CPU's last closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linger {
    /// Slot the next close takes (and whose occupant it removes), modulo
    /// [`LINGER_SLOTS`].
    pub next: u32,
    pub _pad: u32,
    pub slots: [LingerSlot; LINGER_SLOTS],
}
const _: () = assert!(size_of::<Linger>() == 8 + 56 * LINGER_SLOTS);
const _: () = assert!(LINGER_SLOTS.is_power_of_two());
