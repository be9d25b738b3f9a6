//! The agent's command-line options.

use std::path::{Path, PathBuf};

use crate::config;

/// Where this node's zgate instance keeps its state; shared by `agent`,
/// `run` and `uninstall`, and overridable so tests run isolated instances.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeOptions {
    /// zgate's cgroup; programs attach here and workloads are created below
    /// it. Default: `zgate` under the cgroup v2 mount.
    #[arg(long, default_value_os_t = default_cgroup_root())]
    pub cgroup_root: PathBuf,
    /// The bpffs mount; pins go under `<bpffs>/<instance>/v<ABI>/`.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Instance name: the bpffs directory of this agent.
    #[arg(long, default_value = "zgate")]
    pub instance: String,
    /// The root-only admin socket.
    #[arg(long, default_value = "/run/zgate/admin.sock")]
    pub admin_socket: PathBuf,
    /// Directory for the agent's state (enrolled workloads, identities).
    #[arg(long, default_value = "/run/zgate")]
    pub state_dir: PathBuf,
}

/// Map capacities; when one is full, connections fail closed, loudly.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Capacity {
    /// Connections of enrolled workloads whose peer identity the kernel
    /// tracks at once (1 024 are kept for the agent's own).
    #[arg(long, default_value_t = zgate_common::conn::MAX_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1025..))]
    pub max_connections: u32,
    /// Bound addresses of enrolled workloads tracked at once.
    #[arg(long, default_value_t = zgate_common::listener::MAX_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_listeners: u32,
}

#[derive(Clone, Debug, clap::Args)]
pub struct AgentOptions {
    /// Directory of Kubernetes YAML (AuthorizationPolicy, PeerAuthentication,
    /// WorkloadEntry), watched for changes. Default: the embedded
    /// `ambient-demo` example.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Policies here without a selector apply to the whole mesh.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[command(flatten)]
    pub node: NodeOptions,
    #[command(flatten)]
    pub capacity: Capacity,
    /// Prometheus metrics (`/metrics`).
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub metrics_addr: std::net::SocketAddr,
    /// Readiness (`/healthz/ready`), served once the programs are attached
    /// and the first config is applied.
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub readiness_addr: std::net::SocketAddr,
    /// Log format (`RUST_LOG` filters either).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl AgentOptions {
    pub fn map_sizes(&self) -> crate::bpf::MapSizes {
        crate::bpf::MapSizes {
            connections: self.capacity.max_connections,
            listeners: self.capacity.max_listeners,
            ..crate::bpf::MapSizes::default()
        }
    }

    pub fn mesh(&self) -> config::Options {
        config::Options {
            root_namespace: self.root_namespace.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }
}

impl NodeOptions {
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.state.json", self.instance))
    }
}

/// The first cgroup2 mount in `/proc/mounts` (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

fn default_cgroup_root() -> PathBuf {
    cgroup2_mount()
        .unwrap_or_else(|| Path::new("/sys/fs/cgroup").to_owned())
        .join("zgate")
}
