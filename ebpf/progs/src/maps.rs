//! Map definitions. Names, key and value types come from `zgate-common`;
//! every map is pinned by name, so programs and maps outlive the agent
//! (fail-static) and a restarted agent adopts them.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use zgate_common::{
    config::Config,
    conn::{self, ConnKey, ConnPeer, ConnSlot},
    event,
    listener::{self, Listener, ListenerKey},
    policy::{
        CachedVerdict, IdentityBitsKey, IpBitsKey, PolicySet, PolicySetKey, PortBitsKey, TermBits,
        TermInfo, TermKey, VerdictCacheKey, WorkloadPolicyKey, VERDICT_CACHE_ENTRIES,
    },
    redirect::{self, OrigDst, RemoteWorkload},
    socket::{self, AcceptedSlot, SocketRecord, SocketSlot},
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
pub static LISTENERS: HashMap<ListenerKey, Listener> =
    HashMap::pinned(listener::MAX_ENTRIES, 0);

/// Every connection between workloads inserts an entry and deletes it, so
/// the elements are preallocated (the agent sizes the map): an insert pops
/// a free element and a delete pushes it back, where an allocated map's
/// per-CPU caches, emptied on one CPU and filled on another, are refilled
/// and trimmed by deferred `kmalloc`, RCU and `kfree` work (measured with
/// the socket maps, which were hashes then, 1.2 µs less program time per
/// connection). Both kinds reuse a deleted element at once, so a reader
/// copies the value it looked up before acting on it.
#[map(name = "ZG_CONN_PEER")]
pub static CONN_PEER: HashMap<ConnKey, ConnPeer> =
    HashMap::pinned(conn::MAX_ENTRIES, 0);

/// The peers of connections between workloads on this node, in the slot
/// their 5-tuple names (`zgate_common::conn`, "Slots"). The slot tables
/// are mmapable, so the agent counts the held slots by reading memory, not
/// an element a syscall.
#[map(name = "ZG_CONN_SLOTS")]
pub static CONN_SLOTS: Array<ConnSlot> = Array::pinned(conn::CONN_SLOTS, BPF_F_MMAPABLE);

/// The 5-tuples of recently closed connections, one per slot
/// (`zgate_common::conn::closed_slot`).
#[map(name = "ZG_CONN_CLOSED")]
pub static CONN_CLOSED: Array<ConnKey> = Array::pinned(conn::CLOSED_SLOTS, 0);

/// Socket records (`zgate_common::socket`), in the slot their socket's
/// cookie names; `ZG_SOCKETS` has those whose slot another socket held.
#[map(name = "ZG_SOCKET_SLOTS")]
pub static SOCKET_SLOTS: Array<SocketSlot> =
    Array::pinned(socket::COOKIE_SLOTS, BPF_F_MMAPABLE);

/// Nearly always empty, so allocated per entry; sized by the agent for
/// every connection and listener.
#[map(name = "ZG_SOCKETS")]
pub static SOCKETS: HashMap<u64, SocketRecord> =
    HashMap::pinned(socket::MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "ZG_SOCKETS_BY_AGENT")]
pub static SOCKETS_BY_AGENT: Array<u32> = Array::pinned(1, 0);

/// Named owners of the listener entries `sock_ops` made for ports
/// `listen()` picked (`zgate_common::listener::OWNERS_MAP`): rare, so
/// allocated per entry.
#[map(name = "ZG_LISTENER_OWNERS")]
pub static OWNERS: HashMap<u32, u32> =
    HashMap::pinned(listener::MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "ZG_REMOTE")]
pub static REMOTE: HashMap<Addr, RemoteWorkload> = HashMap::pinned(redirect::REMOTE_MAX_ENTRIES, 0);

#[map(name = "ZG_ORIG_DST")]
pub static ORIG_DST: HashMap<ConnKey, OrigDst> = HashMap::pinned(redirect::ORIG_DST_MAX_ENTRIES, 0);

/// `[0]`: the entries `sock_ops` has in `ZG_CONN_PEER` (`peers`).
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
/// the slot its socket cookie names (`zgate_common::socket`).
#[map(name = "ZG_ACCEPTED_SLOTS")]
pub static ACCEPTED_SLOTS: Array<AcceptedSlot> =
    Array::pinned(socket::COOKIE_SLOTS, BPF_F_MMAPABLE);

/// The counters' keys whose slot another open socket held, by cookie:
/// nearly always empty, so allocated per entry; sized by the agent like
/// `ZG_CONN_PEER`.
#[map(name = "ZG_ACCEPTED")]
pub static ACCEPTED: HashMap<u64, ConnStatsKey> =
    HashMap::pinned(conn::MAX_ENTRIES, BPF_F_NO_PREALLOC);
