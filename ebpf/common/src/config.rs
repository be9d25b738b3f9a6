//! `ZG_CONFIG`: a one-entry array the agent writes last when it applies a
//! policy generation, so every verdict reads one consistent generation.

use crate::Addr;

/// Map name of the one-entry config array.
pub const MAP: &str = "ZG_CONFIG";

/// No generation applied yet: enrolled workloads fail closed.
pub const GENERATION_NONE: u32 = 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The policy generation every look-up is keyed with. The agent fills a
    /// new generation's entries first and then flips this one word.
    pub generation: u32,
    /// Past this many entries in `ZG_CONN_PEER` (its capacity less
    /// `conn::RESERVED`), `connect()` from a workload fails closed.
    pub conn_limit: u32,
    /// The agent's outbound listener: `connect()` from an enrolled workload
    /// to a remote mesh workload (`ZG_REMOTE`) is redirected here. Family 0
    /// (or port 0) turns outbound capture off.
    pub outbound: Addr,
    /// Port of `outbound`, host byte order.
    pub outbound_port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Config>() == 32);
