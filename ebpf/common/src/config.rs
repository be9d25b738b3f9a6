//! `ZG_CONFIG`: a one-entry array the agent writes last when it applies a
//! policy generation, so every verdict reads one consistent generation.

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
}
const _: () = assert!(size_of::<Config>() == 8);
