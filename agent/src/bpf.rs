//! The datapath: loads the embedded eBPF object, attaches its programs to
//! zgate's cgroup and network namespace, and pins programs' links and maps
//! under bpffs, so enforcement survives the agent (fail-static) and a
//! restarted agent adopts what is pinned instead of attaching twice.

use std::{
    fs::{self, File},
    io,
    mem::offset_of,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, Program,
    },
    Ebpf, EbpfLoader, Pod,
};
use zgate_common::{
    config::{self, Config},
    conn::{self, ConnKey, ConnPeer, ConnSlot},
    event,
    listener::{self, Listener, ListenerKey},
    policy::{
        self, CachedVerdict, IdentityBitsKey, IpBitsKey, PolicySet, PolicySetKey, PortBitsKey,
        TermBits, TermInfo, TermKey, VerdictCacheKey, WorkloadPolicyKey,
    },
    redirect::{self, RemoteWorkload},
    socket::{self, AcceptedSlot, SocketRecord, SocketSlot},
    stats::{self, ConnStats, ConnStatsKey, VerdictKey},
    workload::{self, Workload},
};

mod conn_table;
mod paths;
mod preflight;
mod writer;

pub use conn_table::{peer_of, ConnTable, PeerEntry};
pub use paths::Paths;
pub use preflight::preflight;
pub use writer::PolicyWriter;

/// The eBPF object built by `build.rs` from `ebpf/progs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zgate.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {name}: pinning its link at {}: {source}", path.display())]
    Pin {
        name: &'static str,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("removing the link pinned at {}: {source}", path.display())]
    Unpin {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("reading the map pinned at {}: {source}", path.display())]
    PinnedMap {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("parsing the eBPF object: {0}")]
    Object(String),
    #[error("bug: the eBPF object has no {0}")]
    BugMissing(&'static str),
    #[error("{0}")]
    Preflight(String),
}

/// Where each program attaches.
#[derive(Clone, Copy)]
enum Target {
    Cgroup,
    Netns,
}

/// Every program in the object, in attach order: listener learning and
/// identity recording before the verdict hooks that read them.
const PROGRAMS: [(&str, Target); 7] = [
    ("zg_post_bind4", Target::Cgroup),
    ("zg_post_bind6", Target::Cgroup),
    ("zg_sock_release", Target::Cgroup),
    ("zg_sock_ops", Target::Cgroup),
    ("zg_connect4", Target::Cgroup),
    ("zg_connect6", Target::Cgroup),
    ("zg_sk_lookup", Target::Netns),
];

/// Capacities of the maps the agent sizes at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub policy_entries: u32,
    /// Connections whose peer identity the kernel can hold at once.
    pub connections: u32,
    /// Bound addresses of workloads the kernel can attribute at once.
    pub listeners: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            policy_entries: 262_144,
            connections: conn::MAX_ENTRIES,
            listeners: listener::MAX_ENTRIES,
        }
    }
}

impl MapSizes {
    /// Records of connecting and bound sockets (`ZG_SOCKETS`).
    pub fn sockets(&self) -> u32 {
        socket::capacity(self.connections, self.listeners)
    }

    /// `Config::conn_limit`: connection capacity less the agent's reserve.
    pub fn conn_limit(&self) -> u32 {
        self.connections.saturating_sub(conn::RESERVED)
    }
}

/// The loaded, attached datapath and typed handles to its maps.
pub struct Datapath {
    pub paths: Paths,
    /// Programs attached by this agent (true) or adopted from bpffs (false).
    pub attached: Vec<(&'static str, bool)>,
    pub maps: Maps,
    events: Option<RingBuf<MapData>>,
    links: Vec<(&'static str, PinnedLink)>,
    _ebpf: Ebpf,
}

pub struct Maps {
    pub config: Array<MapData, Config>,
    pub verdicts: PerCpuHashMap<MapData, VerdictKey, u64>,
    pub conn_stats: PerCpuHashMap<MapData, ConnStatsKey, ConnStats>,
    pub events_dropped: PerCpuArray<MapData, u64>,
    pub workloads: HashMap<MapData, u64, Workload>,
    pub listeners: HashMap<MapData, ListenerKey, Listener>,
    /// Entry tag → the workload the agent named for a listener entry
    /// `sock_ops` made (`listener::OWNERS_MAP`).
    pub listener_owners: HashMap<MapData, u32, u32>,
    /// Socket records in the slot their cookie names, or in `sockets` when
    /// another socket held it (`zgate_common::socket`).
    pub socket_slots: Array<MapData, SocketSlot>,
    pub sockets: HashMap<MapData, u64, SocketRecord>,
    /// Non-zero once the agent wrote into `sockets`.
    pub sockets_by_agent: Array<MapData, u32>,
    /// Counters' keys of the connections workloads accepted, in the slot
    /// their socket's cookie names, or by cookie when another holds it.
    pub accepted_slots: Array<MapData, AcceptedSlot>,
    pub accepted: HashMap<MapData, u64, ConnStatsKey>,
    /// Peers of connections between workloads on this node, in the slot
    /// their 5-tuple names, or in `conn_peer` (`zgate_common::conn`).
    pub conn_slots: Array<MapData, ConnSlot>,
    pub conn_peer: HashMap<MapData, ConnKey, ConnPeer>,
    /// Mesh workloads on other nodes: `connect()` to them is captured.
    pub remote: HashMap<MapData, zgate_common::Addr, RemoteWorkload>,
    /// Verdicts the programs remember (an LRU the kernel fills).
    pub verdict_cache: HashMap<MapData, VerdictCacheKey, CachedVerdict>,
    pub policy: PolicyMaps,
}

pub struct PolicyMaps {
    pub workload_policy: HashMap<MapData, WorkloadPolicyKey, u32>,
    pub sets: HashMap<MapData, PolicySetKey, PolicySet>,
    pub identity_bits: HashMap<MapData, IdentityBitsKey, TermBits>,
    pub port_bits: HashMap<MapData, PortBitsKey, TermBits>,
    pub ip_bits: LpmTrie<MapData, IpBitsKey, TermBits>,
    pub terms: HashMap<MapData, TermKey, TermInfo>,
}

/// The elements of a hash or array map (of an array: all of them), read a
/// few thousand a syscall, not one or two an element: a status or a
/// metrics scrape counts every map's on the agent's one command loop.
pub fn entries(map: &MapData) -> io::Result<u64> {
    crate::sys::count_elements(map)
}

/// The keys of `map` whose value passes `keep`, collected first, so the
/// caller may remove them as it goes.
pub fn keys_where<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keep: impl Fn(&V) -> bool,
) -> Vec<K> {
    map.iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| keep(v))
        .map(|(k, _)| k)
        .collect()
}

/// The slots of a slot table (`zgate_common::socket`, `zgate_common::conn`)
/// that are held: whose owner, the first word of each slot type, is
/// non-zero. Read from the table's memory (it is mmapable): the three
/// tables of 65 536 slots, an element a syscall, held a status or a scrape
/// up for 0.3 s.
pub fn held_slots<T: Pod>(slots: &Array<MapData, T>) -> io::Result<u64> {
    const {
        assert!(
            offset_of!(ConnSlot, owner) == 0
                && offset_of!(SocketSlot, cookie) == 0
                && offset_of!(AcceptedSlot, cookie) == 0
        );
    }
    crate::sys::nonzero_first_words(slots.map())
}

// === impl Datapath ===

impl Datapath {
    /// Load the object (reusing pinned maps), then attach each program that
    /// has no pinned link yet and pin its link.
    pub fn install(
        paths: Paths,
        cgroup: &Path,
        netns: &Path,
        sizes: MapSizes,
    ) -> Result<Self, Error> {
        retire_other_versions(&paths)?;
        for dir in [paths.maps(), paths.links()] {
            fs::create_dir_all(&dir).map_err(|source| Error::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        // Root only, all the way down: the pins are the enforcement state.
        let instance = paths.root().parent().map(Path::to_owned);
        for dir in [paths.maps(), paths.links(), paths.root().to_owned()]
            .into_iter()
            .chain(instance)
        {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                Error::Io {
                    op: "restricting",
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(paths.maps());
        for name in [
            policy::WORKLOAD_POLICY_MAP,
            policy::POLICY_SET_MAP,
            policy::IDENTITY_BITS_MAP,
            policy::PORT_BITS_MAP,
            policy::IP_BITS_MAP,
            policy::TERM_MAP,
        ] {
            loader.map_max_entries(name, sizes.policy_entries);
        }
        loader.map_max_entries(conn::MAP, sizes.connections);
        // An entry per open connection a workload accepted; past that many,
        // a connection's close goes uncounted (never its verdict).
        loader.map_max_entries(socket::ACCEPTED_MAP, sizes.connections);
        loader.map_max_entries(listener::MAP, sizes.listeners);
        loader.map_max_entries(listener::OWNERS_MAP, sizes.listeners);
        loader.map_max_entries(socket::MAP, sizes.sockets());
        let stale = unpin_foreign_maps(&paths)?;
        // Links pinned without the maps they were loaded with (someone
        // removed map pins, or they were another build's): adopting them
        // would leave old programs reading old maps while the agent writes
        // new ones. Detach them; attach anew.
        let maps_pinned = [config::MAP, workload::MAP, policy::POLICY_SET_MAP]
            .iter()
            .all(|m| paths.maps().join(m).exists());
        if !maps_pinned || stale {
            let why = if stale {
                "a map it was loaded with was replaced"
            } else {
                "its maps are no longer pinned"
            };
            for (name, _) in PROGRAMS {
                let pin = paths.link(name);
                if pin.exists() {
                    tracing::warn!(
                        program = name,
                        "{why}: detaching it to attach it again with fresh maps"
                    );
                    unpin_link(&pin)?;
                }
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        let cgroup_file = open(cgroup)?;
        let netns_file = open(netns)?;
        let mut links = Vec::new();
        let mut attached = Vec::new();
        for (name, target) in PROGRAMS {
            let pin = paths.link(name);
            if pin.exists() {
                let link = PinnedLink::from_pin(&pin).map_err(|e| Error::Pin {
                    name,
                    path: pin.clone(),
                    source: Box::new(e),
                })?;
                links.push((name, link));
                attached.push((name, false));
                continue;
            }
            let link = attach(&mut ebpf, name, target, &cgroup_file, &netns_file)?;
            let pinned = link.pin(&pin).map_err(|e| Error::Pin {
                name,
                path: pin.clone(),
                source: Box::new(e),
            })?;
            links.push((name, pinned));
            attached.push((name, true));
        }
        let maps = Maps::take(&mut ebpf)?;
        let events = Some(take(&mut ebpf, event::MAP)?);
        Ok(Self {
            paths,
            attached,
            maps,
            events,
            links,
            _ebpf: ebpf,
        })
    }
}

impl Maps {
    /// Verdict counters summed over CPUs, by policy, reason and hook.
    pub fn verdict_counts(&self) -> Vec<(VerdictKey, u64)> {
        sum_verdicts(&self.verdicts)
    }

    /// Verdict events the full ring buffer dropped, summed over CPUs.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// Connection counters summed over CPUs, by identity and workload.
    pub fn connection_counts(&self) -> Vec<(ConnStatsKey, ConnStats)> {
        let mut out: Vec<(ConnStatsKey, ConnStats)> = self
            .conn_stats
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let sum = per_cpu.iter().fold(ConnStats::default(), |a, s| ConnStats {
                    opened: a.opened + s.opened,
                    denied: a.denied + s.denied,
                    closed: a.closed + s.closed,
                    sent_bytes: a.sent_bytes + s.sent_bytes,
                    received_bytes: a.received_bytes + s.received_bytes,
                });
                (k, sum)
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }
}

/// The verdict counters of an installed datapath, read from its pin (for
/// tools and tests that are not the agent).
pub fn pinned_verdict_counts(paths: &Paths) -> Result<Vec<(VerdictKey, u64)>, Error> {
    let name = stats::MAP;
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(paths.maps().join(name)).map_err(err)?;
    let map = aya::maps::Map::from_map_data(data).map_err(err)?;
    let verdicts = PerCpuHashMap::try_from(map).map_err(err)?;
    Ok(sum_verdicts(&verdicts))
}

fn sum_verdicts(map: &PerCpuHashMap<MapData, VerdictKey, u64>) -> Vec<(VerdictKey, u64)> {
    let mut out: Vec<(VerdictKey, u64)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
        .collect();
    out.sort();
    out
}

impl Datapath {
    /// Pin again any link whose pin was removed by hand: the program stays
    /// attached while the agent holds it, but without its pin it would not
    /// outlive the agent (fail-static). Returns the programs re-pinned.
    pub fn repin_links(&mut self) -> Result<Vec<&'static str>, Error> {
        let mut repinned = Vec::new();
        for (name, link) in std::mem::take(&mut self.links) {
            let pin = self.paths.link(name);
            if pin.exists() {
                self.links.push((name, link));
                continue;
            }
            fs::create_dir_all(self.paths.links()).map_err(|source| Error::Io {
                op: "creating",
                path: self.paths.links(),
                source,
            })?;
            let fd: FdLink = link.into();
            let pinned = fd.pin(&pin).map_err(|e| Error::Pin {
                name,
                path: pin.clone(),
                source: Box::new(e),
            })?;
            self.links.push((name, pinned));
            repinned.push(name);
        }
        Ok(repinned)
    }

    /// The verdict-event ring buffer, for the one task that reads it.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// Detach every program and remove every pin of this instance, whatever
/// ABI version pinned it.
pub fn uninstall(paths: &Paths) -> Result<(), Error> {
    for root in paths.all_versions() {
        remove_pins(&root)?;
    }
    if let Some(instance) = paths.root().parent() {
        remove_dir(instance)?;
    }
    Ok(())
}

/// Retire what an agent of another ABI version pinned for this instance
/// (an upgrade, or a downgrade): its programs would go on enforcing the
/// policy frozen in its maps next to ours. Their workloads are re-registered
/// and their listeners re-learned from the kernel's socket table.
fn retire_other_versions(paths: &Paths) -> Result<(), Error> {
    for root in paths.all_versions() {
        if root == paths.root() {
            continue;
        }
        tracing::warn!(pins = %root.display(), "detaching the programs and removing the maps an agent of another version pinned");
        remove_pins(&root)?;
    }
    Ok(())
}

/// Remove the pins of maps whose layout is not the one this build's
/// programs were compiled for — left by another build of the same ABI
/// version (a development build, or an agent that failed to load its
/// programs): adopting one would make the programs read its entries with
/// the wrong key or value size. True if any was removed.
fn unpin_foreign_maps(paths: &Paths) -> Result<bool, Error> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Object(e.to_string()))?;
    let mut stale = false;
    for (name, def) in &object.maps {
        let pin = paths.maps().join(name);
        if !pin.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&pin).map_err(|source| Error::PinnedMap {
            path: pin.clone(),
            source,
        })?;
        let pinned_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        let expected = (
            def.map_type(),
            def.key_size(),
            def.value_size(),
            def.map_flags(),
        );
        let found = (
            pinned_type,
            info.key_size(),
            info.value_size(),
            info.map_flags(),
        );
        if expected == found {
            continue;
        }
        tracing::warn!(
            map = %name,
            pin = %pin.display(),
            "a pinned map has another layout (type, key size, value size, flags {found:?}; this build needs {expected:?}): removing it, to create it anew"
        );
        fs::remove_file(&pin).map_err(|source| Error::Io {
            op: "removing",
            path: pin,
            source,
        })?;
        stale = true;
    }
    Ok(stale)
}

/// Unpin (and so detach) every link under `root`, remove every map pin and
/// the directories.
fn remove_pins(root: &Path) -> Result<(), Error> {
    let links = root.join("links");
    let maps = root.join("maps");
    for entry in read_dir(&links)? {
        unpin_link(&entry)?;
    }
    for entry in read_dir(&maps)? {
        fs::remove_file(&entry).map_err(|source| Error::Io {
            op: "removing",
            path: entry,
            source,
        })?;
    }
    for dir in [&maps, &links, root] {
        remove_dir(dir)?;
    }
    Ok(())
}

/// The entries of a directory; none if it does not exist.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Io {
            op: "listing",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Remove an empty directory; gone already is fine.
fn remove_dir(dir: &Path) -> Result<(), Error> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Remove a link's pin; with no other reference the link detaches.
fn unpin_link(pin: &Path) -> Result<(), Error> {
    let link = PinnedLink::from_pin(pin).map_err(|e| Error::Unpin {
        path: pin.to_owned(),
        source: Box::new(e),
    })?;
    drop(link.unpin().map_err(|source| Error::Io {
        op: "unpinning",
        path: pin.to_owned(),
        source,
    })?);
    Ok(())
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    target: Target,
    cgroup: &File,
    netns: &File,
) -> Result<FdLink, Error> {
    let program = ebpf.program_mut(name).ok_or(Error::BugMissing(name))?;
    let err = |source| Error::Program { name, source };
    // Links (kernel 5.7+) always coexist with other programs on the cgroup;
    // `bpf_link_create` rejects any attach flag, so the mode must be Single.
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match (target, program) {
        (Target::Cgroup, Program::CgroupSockAddr(p)) => {
            load(p.load(), name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        (Target::Cgroup, Program::CgroupSock(p)) => {
            load(p.load(), name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        (Target::Cgroup, Program::SockOps(p)) => {
            load(p.load(), name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            fd_link(name, p.take_link(id).map_err(err)?)?
        }
        (Target::Netns, Program::SkLookup(p)) => {
            load(p.load(), name)?;
            let id = p.attach(netns).map_err(err)?;
            p.take_link(id).map_err(err)?.into()
        }
        _ => return Err(Error::BugMissing(name)),
    };
    Ok(link)
}

/// Cgroup links made with `bpf_link_create` (kernel 5.7+) can be pinned.
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, Error>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    link.try_into().map_err(|e| Error::Pin {
        name,
        path: PathBuf::new(),
        source: Box::new(e),
    })
}

fn load(result: Result<(), aya::programs::ProgramError>, name: &'static str) -> Result<(), Error> {
    result.map_err(|source| Error::Program { name, source })
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::Io {
        op: "opening",
        path: path.to_owned(),
        source,
    })
}

// === impl Maps ===

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Ok(Self {
            config: take(ebpf, config::MAP)?,
            verdicts: take(ebpf, stats::MAP)?,
            conn_stats: take(ebpf, stats::CONN_MAP)?,
            events_dropped: take(ebpf, event::DROPPED_MAP)?,
            workloads: take(ebpf, workload::MAP)?,
            listeners: take(ebpf, listener::MAP)?,
            listener_owners: take(ebpf, listener::OWNERS_MAP)?,
            socket_slots: take(ebpf, socket::SLOTS_MAP)?,
            sockets: take(ebpf, socket::MAP)?,
            sockets_by_agent: take(ebpf, socket::BY_AGENT_MAP)?,
            accepted_slots: take(ebpf, socket::ACCEPTED_SLOTS_MAP)?,
            accepted: take(ebpf, socket::ACCEPTED_MAP)?,
            conn_slots: take(ebpf, conn::SLOTS_MAP)?,
            conn_peer: take(ebpf, conn::MAP)?,
            remote: take(ebpf, redirect::REMOTE_MAP)?,
            verdict_cache: take(ebpf, policy::VERDICT_CACHE_MAP)?,
            policy: PolicyMaps {
                workload_policy: take(ebpf, policy::WORKLOAD_POLICY_MAP)?,
                sets: take(ebpf, policy::POLICY_SET_MAP)?,
                identity_bits: take(ebpf, policy::IDENTITY_BITS_MAP)?,
                port_bits: take(ebpf, policy::PORT_BITS_MAP)?,
                ip_bits: take(ebpf, policy::IP_BITS_MAP)?,
                terms: take(ebpf, policy::TERM_MAP)?,
            },
        })
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::BugMissing(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}
