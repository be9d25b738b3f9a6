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

/// Map capacities; when one is full, connections fail closed, loudly. The
/// kernel reserves memory up front for about 0.2 KiB per connection (its
/// identity) and 0.1 KiB per listener, plus 12.5 MiB of socket and
/// connection slots; the records of sockets beyond the slots' reach are
/// allocated as needed.
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
    #[command(flatten)]
    pub mesh_tls: MeshTlsOptions,
}

/// The mTLS data path between nodes: the node CA, and the HBONE listeners.
#[derive(Clone, Debug, clap::Args)]
pub struct MeshTlsOptions {
    /// Where connections from enrolled workloads to mesh workloads on other
    /// nodes are redirected (by `connect()` rewriting, no iptables).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound_addr: std::net::SocketAddr,
    /// HBONE (HTTP/2 CONNECT over mTLS) from other nodes.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub hbone_addr: std::net::SocketAddr,
    /// zgate's own root CA: loaded from, or generated on first start in,
    /// this directory. Default: `<state-dir>/ca`.
    #[arg(long, conflicts_with_all = ["ca_cert", "ca_key"])]
    pub ca_dir: Option<PathBuf>,
    /// An operator-supplied root CA certificate (PEM); with `--ca-key`.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key of `--ca-cert` (PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of the workload certificates (SVIDs) this node issues, e.g.
    /// `24h`, `90s`; renewed half-way through (counted from a minute
    /// before issue, for clock skew).
    #[arg(long, hide = true, default_value = "24h", value_parser = parse_duration)]
    pub svid_ttl: std::time::Duration,
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

impl MeshTlsOptions {
    /// Where the root CA comes from.
    pub fn root_source(&self, node: &NodeOptions) -> crate::ca::RootSource {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => crate::ca::RootSource::Operator {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => crate::ca::RootSource::Generated {
                dir: self
                    .ca_dir
                    .clone()
                    .unwrap_or_else(|| node.state_dir.join("ca")),
            },
        }
    }
}

/// `90s`, `5m`, `24h`, or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 5m or 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(std::time::Duration::from_secs(secs))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
    }
}
