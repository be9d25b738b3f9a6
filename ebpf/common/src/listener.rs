//! `ZG_LISTENERS`: which enrolled workload owns a bound address, learned by
//! the `post_bind` programs and removed by `sock_release` (through the
//! socket's `socket::SocketRecord`), so policy applies to whatever a
//! workload listens on without configuring ports.

use crate::Addr;

pub const MAP: &str = "ZG_LISTENERS";
pub const MAX_ENTRIES: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The bound address; `Addr::any(family)` for a wildcard bind.
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ListenerKey>() == 24);
