//! Outbound capture, without iptables: `connect()` from an enrolled
//! workload to a mesh workload on another node is rewritten, in
//! `cgroup/connect4|6`, to the agent's outbound listener
//! (`config::Config::outbound`), which carries it over HBONE.
//!
//! - `ZG_REMOTE`: address → remote workload, written by the agent from the
//!   WorkloadEntry inventory less this node's own addresses.
//! - The connecting socket's `socket::SocketRecord` (`FLAG_CAPTURED`) holds
//!   the original destination, written by `connect4|6` when it rewrites;
//!   `sock_ops` copies it, at `TCP_CONNECT_CB` (source port chosen, SYN not
//!   sent), to
//! - `ZG_ORIG_DST`: the 5-tuple the agent's accepted socket sees → original
//!   destination, which the agent reads and deletes on accept;
//!   `sock_release` deletes what is left when the client socket goes away.

use crate::Addr;

pub const REMOTE_MAP: &str = "ZG_REMOTE";
pub const ORIG_DST_MAP: &str = "ZG_ORIG_DST";
pub const REMOTE_MAX_ENTRIES: u32 = 65_536;
/// Captured connections between `connect()` and the agent's accept.
pub const ORIG_DST_MAX_ENTRIES: u32 = 16_384;

/// A mesh workload that runs on another node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteWorkload {
    /// Numeric identity the destination must present (for logs).
    pub identity: u32,
}
const _: () = assert!(size_of::<RemoteWorkload>() == 4);

/// A captured connection: where the workload meant to go, and who it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// The original destination address.
    pub dst: Addr,
    /// The original destination port, host byte order.
    pub dst_port: u16,
    pub _pad: [u8; 2],
    /// Numeric identity of the connecting workload.
    pub identity: u32,
    /// Numeric id of the connecting workload.
    pub workload: u32,
}
const _: () = assert!(size_of::<OrigDst>() == 32);
