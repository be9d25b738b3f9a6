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
