//! `ZG_EVENTS`: a ring buffer of verdict events, one per denial and per
//! dry-run match, which the agent turns into log lines and counters.

use crate::Addr;

pub const MAP: &str = "ZG_EVENTS";
/// `ZG_EVENTS_DROPPED[0]`: per-CPU count of events the full ring dropped.
pub const DROPPED_MAP: &str = "ZG_EVENTS_DROPPED";
pub const RING_BYTES: u32 = 256 * 1024;

/// Where the verdict was taken.
pub const HOOK_CONNECT: u8 = 1;
pub const HOOK_ACCEPT: u8 = 2;
pub const HOOK_BIND: u8 = 3;

/// What the event reports.
pub const KIND_DENY: u8 = 1;
pub const KIND_DRY_RUN_DENY_MATCH: u8 = 2;
pub const KIND_DRY_RUN_NO_ALLOW: u8 = 3;
/// A socket of an enrolled workload listens on `dst:dst_port`, a port
/// `listen()` picked, under an entry for an owner not yet named
/// (`listener::OWNERS_MAP`): the agent names it. Not rate-limited.
pub const KIND_LISTEN_UNATTRIBUTED: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEvent {
    pub kind: u8,
    pub hook: u8,
    /// `policy::REASON_*`.
    pub reason: u8,
    pub _pad: u8,
    pub generation: u32,
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Numeric source identity, 0 for plaintext.
    pub identity: u32,
    /// Numeric destination workload id.
    pub workload: u32,
    /// Numeric id of the deciding policy, `policy::POLICY_NONE` if none.
    pub policy: u32,
}
const _: () = assert!(size_of::<VerdictEvent>() == 64);

impl VerdictEvent {
    /// An event as the ring buffer delivers it; `None` if the record is
    /// shorter than an event.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked, the type is `repr(C)` plain data
        // valid for any bit pattern, and the read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}
