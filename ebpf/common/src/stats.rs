//! `ZG_VERDICTS`: per-CPU verdict counters, by deciding policy, reason and
//! hook — counted once, in the kernel, and summed by the agent.

pub const MAP: &str = "ZG_VERDICTS";
pub const MAX_ENTRIES: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictKey {
    /// Numeric policy id, `policy::POLICY_NONE` when no policy decided.
    pub policy: u32,
    /// `policy::REASON_*`.
    pub reason: u8,
    /// `event::HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<VerdictKey>() == 8);

/// `ZG_CONN_STATS`: per-CPU connection counters by source identity and
/// destination workload, for Istio's TCP metrics (reporter=destination).
pub const CONN_MAP: &str = "ZG_CONN_STATS";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnStatsKey {
    /// Numeric source identity, 0 for plaintext.
    pub identity: u32,
    /// Numeric destination workload id.
    pub workload: u32,
}
const _: () = assert!(size_of::<ConnStatsKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections the destination's policy let through (at SYN time).
    pub opened: u64,
    /// Connections refused by policy (at `connect()` or SYN time).
    pub denied: u64,
    /// Opened connections that have closed.
    pub closed: u64,
    /// Bytes the destination sent (acknowledged by the peer), at close.
    pub sent_bytes: u64,
    /// Bytes the destination received, at close.
    pub received_bytes: u64,
}
const _: () = assert!(size_of::<ConnStats>() == 40);
