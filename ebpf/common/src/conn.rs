//! `ZG_CONN_PEER`: connection 5-tuple → the peer identity behind it.
//!
//! Written by the agent for connections it delivers after authenticating the
//! peer over mTLS, and by the `sock_ops` program for connections between
//! workloads on this node; read by the accept-side program. Entries live as
//! long as the connection. A plain hash (not LRU): an evicted identity would
//! silently turn an authenticated peer into a plaintext one.

use crate::{socket::Approval, Addr};

pub const MAP: &str = "ZG_CONN_PEER";
pub const MAX_ENTRIES: u32 = 65_536;
/// `ZG_CONN_COUNT[0]`: entries `sock_ops` has in `ZG_CONN_PEER`.
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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnPeer {
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
}
const _: () = assert!(size_of::<ConnPeer>() == 36);
