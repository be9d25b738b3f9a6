//! Map definitions. Names, key and value types come from `zgate-common`;
//! every map is pinned by name, so programs and maps outlive the agent
//! (fail-static) and a restarted agent adopts them.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC,
        BPF_SK_STORAGE_GET_F_CREATE,
    },
    helpers::generated::bpf_sk_storage_get,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use zgate_common::{
    config::Config,
    conn::{self, ConnKey, ConnPeer, Linger},
    event,
    listener::{self, ListenerKey},
    policy::{
        CachedVerdict, IdentityBitsKey, IpBitsKey, PolicySet, PolicySetKey, PortBitsKey, TermBits,
        TermInfo, TermKey, VerdictCacheKey, WorkloadPolicyKey, VERDICT_CACHE_ENTRIES,
    },
    redirect::{self, OrigDst, RemoteWorkload},
    socket::{self, SocketRecord},
    stats::{self, ConnStats, ConnStatsKey, VerdictKey},
    workload::{self, Workload},
    Addr,
};

/// Policy maps are sized by the agent at load time (`set_max_entries`).
const POLICY_DEFAULT_ENTRIES: u32 = 65_536;

#[map(name = "ZG_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "ZG_WORKLOADS")]
pub static WORKLOADS: HashMap<u64, Workload> = HashMap::pinned(workload::MAX_ENTRIES, 0);

#[map(name = "ZG_LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, u32> = HashMap::pinned(listener::MAX_ENTRIES, 0);

/// Allocated per entry (`BPF_F_NO_PREALLOC`), like `ZG_SOCKETS`; its
/// capacity still bounds it, and a full map fails closed.
#[map(name = "ZG_CONN_PEER")]
pub static CONN_PEER: HashMap<ConnKey, ConnPeer> =
    HashMap::pinned(conn::MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per CPU, the closed `ZG_CONN_PEER` entries still lingering
/// (`zgate_common::conn`).
#[map(name = "ZG_CONN_LINGER")]
pub static CONN_LINGER: PerCpuArray<Linger> = PerCpuArray::pinned(1, 0);

/// Entries only for live sockets (`BPF_F_NO_PREALLOC`): sized for every
/// connection and listener, most of it is usually unused, and an element
/// comes from the kernel's per-CPU cache rather than a shared free list.
#[map(name = "ZG_SOCKETS")]
pub static SOCKETS: HashMap<u64, SocketRecord> =
    HashMap::pinned(socket::MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "ZG_REMOTE")]
pub static REMOTE: HashMap<Addr, RemoteWorkload> = HashMap::pinned(redirect::REMOTE_MAX_ENTRIES, 0);

#[map(name = "ZG_ORIG_DST")]
pub static ORIG_DST: HashMap<ConnKey, OrigDst> = HashMap::pinned(redirect::ORIG_DST_MAX_ENTRIES, 0);

#[map(name = "ZG_CONN_COUNT")]
pub static CONN_COUNT: Array<u64> = Array::pinned(1, 0);

#[map(name = "ZG_VERDICTS")]
pub static VERDICTS: PerCpuHashMap<VerdictKey, u64> = PerCpuHashMap::pinned(stats::MAX_ENTRIES, 0);

#[map(name = "ZG_CONN_STATS")]
pub static CONN_STATS: PerCpuHashMap<ConnStatsKey, ConnStats> =
    PerCpuHashMap::pinned(stats::MAX_ENTRIES, 0);

#[map(name = "ZG_WL_POLICY")]
pub static WL_POLICY: HashMap<WorkloadPolicyKey, u32> = HashMap::pinned(POLICY_DEFAULT_ENTRIES, 0);

#[map(name = "ZG_POLICY_SETS")]
pub static POLICY_SETS: HashMap<PolicySetKey, PolicySet> =
    HashMap::pinned(POLICY_DEFAULT_ENTRIES, 0);

#[map(name = "ZG_ID_BITS")]
pub static ID_BITS: HashMap<IdentityBitsKey, TermBits> = HashMap::pinned(POLICY_DEFAULT_ENTRIES, 0);

#[map(name = "ZG_PORT_BITS")]
pub static PORT_BITS: HashMap<PortBitsKey, TermBits> = HashMap::pinned(POLICY_DEFAULT_ENTRIES, 0);

#[map(name = "ZG_IP_BITS")]
pub static IP_BITS: LpmTrie<IpBitsKey, TermBits> = LpmTrie::pinned(POLICY_DEFAULT_ENTRIES, 0);

#[map(name = "ZG_TERMS")]
pub static TERMS: HashMap<TermKey, TermInfo> = HashMap::pinned(POLICY_DEFAULT_ENTRIES, 0);

/// Verdicts already taken (`zgate_common::policy::VerdictCacheKey`): one
/// look-up instead of the policy maps' eight for a connection like one seen
/// before under the same generation. Per-CPU LRU lists, so an insert takes
/// no lock another CPU contends for.
#[map(name = "ZG_VERDICT_CACHE")]
pub static VERDICT_CACHE: LruHashMap<VerdictCacheKey, CachedVerdict> =
    LruHashMap::pinned(VERDICT_CACHE_ENTRIES, BPF_F_NO_COMMON_LRU);

#[map(name = "ZG_EVENTS_DROPPED")]
pub static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[map(name = "ZG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(event::RING_BYTES, 0);

/// The counters' key of each connection an enrolled workload accepted, in
/// the socket's own storage (`zgate_common::socket::ACCEPTED_MAP`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "ZG_ACCEPTED")]
pub static ACCEPTED: SocketStorage<ConnStatsKey> = SocketStorage::new();

/// `BPF_F_NO_PREALLOC`, as the `[i32; N]` length of a BTF map field.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
/// `LIBBPF_PIN_BY_NAME`.
const PIN_BY_NAME: usize = 1;

/// A `BPF_MAP_TYPE_SK_STORAGE` map: a value per socket, kept in the socket
/// and freed with it. The kernel takes this map type only as a BTF-defined
/// map (`.maps`), whose fields encode the definition in their types;
/// aya-ebpf 0.2's own `SkStorage` serves `cgroup/sock_addr` programs only.
#[repr(C)]
pub struct SocketStorage<V> {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; NO_PREALLOC],
    pinning: *const [i32; PIN_BY_NAME],
}

// SAFETY: the fields are never read; they only carry the definition's BTF.
unsafe impl<V> Sync for SocketStorage<V> {}

impl<V> SocketStorage<V> {
    const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
            pinning: ptr::null(),
        }
    }

    /// The value of socket `sk` — `bpf_sock_ops.sk`, or the context of a
    /// `cgroup/sock` program — created as a copy of `init`
    /// if it has none and `init` is given (an existing value is kept as it
    /// is). `None`: no value (or no room for one).
    ///
    /// # Safety
    /// `sk` must be a socket pointer the verifier accepts for
    /// `bpf_sk_storage_get` in the calling program type.
    #[inline(always)]
    pub unsafe fn get(&self, sk: *mut c_void, init: Option<&V>) -> Option<&'static mut V> {
        let (value, flags) = match init {
            Some(v) => (
                ptr::from_ref(v).cast_mut().cast(),
                u64::from(BPF_SK_STORAGE_GET_F_CREATE),
            ),
            None => (ptr::null_mut(), 0),
        };
        // SAFETY: `self` is a map of this type; the caller vouches for `sk`.
        let found =
            unsafe { bpf_sk_storage_get(ptr::from_ref(self).cast_mut().cast(), sk, value, flags) };
        // SAFETY: a value of this map, valid while the socket lives, which
        // is longer than the program runs.
        unsafe { found.cast::<V>().as_mut() }
    }
}
