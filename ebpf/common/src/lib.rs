//! The kernel/userspace ABI of zgate: every map key and value, event record,
//! verdict code and map name shared by the eBPF programs (`ebpf/progs`) and
//! the agent. Nothing here is redefined anywhere else.
//!
//! Every type is `#[repr(C)]` with explicit padding, no `bool` and no
//! implicit enum tags, and carries a compile-time size assertion. Changing a
//! layout means bumping [`ABI_VERSION`], which is part of every pin path, so
//! a new agent never misreads maps pinned by an old one.
#![no_std]

pub mod config;
pub mod conn;
pub mod event;
pub mod listener;
pub mod policy;
pub mod redirect;
pub mod socket;
pub mod stats;
pub mod workload;

/// Version of the layouts in this crate; part of the bpffs pin path.
pub const ABI_VERSION: u32 = 13;

/// `AF_INET` as the kernel numbers it.
pub const AF_INET: u8 = 2;
/// `AF_INET6` as the kernel numbers it.
pub const AF_INET6: u8 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;

/// An IPv4 or IPv6 address in network byte order. IPv4 uses the first four
/// bytes and leaves the rest zero; IPv4-mapped IPv6 addresses are stored as
/// IPv4 (as ztunnel canonicalises them), so a v4 CIDR matches them.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialOrd, Ord)]
pub struct Addr {
    pub family: u8,
    pub _pad: [u8; 3],
    pub bytes: [u8; 16],
}
const _: () = assert!(size_of::<Addr>() == 20 && align_of::<Addr>() == 4);

impl Addr {
    pub const fn v4(octets: [u8; 4]) -> Self {
        Self::from_words(AF_INET, [u32::from_ne_bytes(octets), 0, 0, 0])
    }

    /// An IPv6 address; IPv4-mapped ones (`::ffff:a.b.c.d`) become IPv4.
    pub const fn v6(octets: [u8; 16]) -> Self {
        let mapped = octets[10] == 0xff && octets[11] == 0xff && {
            let mut i = 0;
            let mut zero = true;
            while i < 10 {
                zero &= octets[i] == 0;
                i += 1;
            }
            zero
        };
        if mapped {
            return Self::v4([octets[12], octets[13], octets[14], octets[15]]);
        }
        // SAFETY: sixteen bytes are four words, in memory order.
        let words = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(octets) };
        Self::from_words(AF_INET6, words)
    }

    /// An address from its four words in memory order, as the kernel's
    /// network-order `u32` fields hold them (IPv4: `[addr, 0, 0, 0]`).
    /// Built of words, so the eBPF programs write, copy and compare it
    /// word by word (an array of bytes is zeroed and copied by calls to a
    /// byte-at-a-time `memset`/`memcpy`).
    pub const fn from_words(family: u8, words: [u32; 4]) -> Self {
        let all = [
            u32::from_ne_bytes([family, 0, 0, 0]),
            words[0],
            words[1],
            words[2],
            words[3],
        ];
        // SAFETY: `Addr` is `repr(C)`, 20 bytes of plain integers at
        // 4-byte alignment: every bit pattern of five words is one, laid
        // out as family, padding, bytes.
        unsafe { core::mem::transmute::<[u32; 5], Self>(all) }
    }

    /// The unspecified ("any") address of a family.
    pub const fn any(family: u8) -> Self {
        Self::from_words(family, [0, 0, 0, 0])
    }

    /// The address as five words: family (and padding), then the bytes.
    #[inline(always)]
    pub const fn words(&self) -> [u32; 5] {
        // SAFETY: as in `from_words`, the other way round.
        unsafe { core::mem::transmute::<Self, [u32; 5]>(*self) }
    }
}

/// Word by word and without branches: the derived comparison of the byte
/// array is sixteen byte loads a side in the eBPF programs.
impl PartialEq for Addr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0
    }
}

impl Eq for Addr {}

impl core::hash::Hash for Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.words().hash(state);
    }
}

/// No family, all zero.
impl Default for Addr {
    fn default() -> Self {
        Self::any(0)
    }
}

impl From<core::net::IpAddr> for Addr {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

impl From<Addr> for core::net::IpAddr {
    fn from(a: Addr) -> Self {
        if a.family == AF_INET6 {
            core::net::IpAddr::from(a.bytes)
        } else {
            core::net::IpAddr::from([a.bytes[0], a.bytes[1], a.bytes[2], a.bytes[3]])
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is `#[repr(C)]`, `Copy`, has explicit padding
    // and no invalid bit patterns.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for config::Config {}
    unsafe impl aya::Pod for conn::ConnKey {}
    unsafe impl aya::Pod for conn::ConnPeer {}
    unsafe impl aya::Pod for conn::ConnSlot {}
    unsafe impl aya::Pod for event::VerdictEvent {}
    unsafe impl aya::Pod for listener::ListenerKey {}
    unsafe impl aya::Pod for listener::Listener {}
    unsafe impl aya::Pod for policy::TermBits {}
    unsafe impl aya::Pod for policy::WorkloadPolicyKey {}
    unsafe impl aya::Pod for policy::PolicySetKey {}
    unsafe impl aya::Pod for policy::PolicySet {}
    unsafe impl aya::Pod for policy::IdentityBitsKey {}
    unsafe impl aya::Pod for policy::PortBitsKey {}
    unsafe impl aya::Pod for policy::IpBitsKey {}
    unsafe impl aya::Pod for policy::TermKey {}
    unsafe impl aya::Pod for policy::TermInfo {}
    unsafe impl aya::Pod for policy::VerdictCacheKey {}
    unsafe impl aya::Pod for policy::CachedVerdict {}
    unsafe impl aya::Pod for workload::Workload {}
    unsafe impl aya::Pod for redirect::RemoteWorkload {}
    unsafe impl aya::Pod for redirect::OrigDst {}
    unsafe impl aya::Pod for stats::VerdictKey {}
    unsafe impl aya::Pod for stats::ConnStatsKey {}
    unsafe impl aya::Pod for stats::ConnStats {}
    unsafe impl aya::Pod for socket::SocketRecord {}
    unsafe impl aya::Pod for socket::AcceptedSlot {}
    unsafe impl aya::Pod for socket::SocketSlot {}
}
