//! `zgate check` (decide one connection as ztunnel would, and say why) and
//! `zgate policies` (what each AuthorizationPolicy became, and the
//! effective PeerAuthentication of each WorkloadEntry).
//!
//! Both read the configuration the agent reads and run the reference
//! evaluator, so they answer "what would ztunnel do?" without a cluster.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf, str::FromStr};

use crate::{
    config::{self, EffectiveMtls, MeshConfig, Options, PolicyStatus},
    identity::SpiffeId,
    policy::{self, Action, Conn, Evaluation, Origin, PolicyKey},
};

mod render;

/// Where the configuration comes from; shared by every subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ConfigArgs {
    /// Directory of Kubernetes YAML (AuthorizationPolicy, PeerAuthentication,
    /// WorkloadEntry), read recursively.
    /// Required unless --demo (or, for `check`, --agent) is given.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Use the embedded demo (Istio's L4 policy example) instead of --config.
    #[arg(long, conflicts_with = "config")]
    pub demo: bool,
    /// Policies here without a selector apply mesh-wide.
    #[arg(long, value_name = "NS", default_value = "istio-system")]
    pub root_namespace: String,
    /// Trust domain of the identities built for --source.
    #[arg(long, value_name = "TD", default_value = "cluster.local")]
    pub trust_domain: String,
}

/// `zgate check`: one connection, one verdict.
///
/// An omitted `--source-ip` is `127.0.0.1` (or the `--source` workload's
/// address); an omitted `--dest-ip` is the `--dest` workload's address, else
/// `127.0.0.1`. When a policy looks at an IP that was defaulted, the output
/// says so.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Destination WorkloadEntry: its namespace, labels and address.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        conflicts_with_all = ["dest_namespace", "dest_labels"],
        required_unless_present = "dest_namespace"
    )]
    pub dest: Option<WorkloadRef>,
    /// Destination namespace (instead of --dest).
    #[arg(long, value_name = "NS")]
    pub dest_namespace: Option<String>,
    /// A destination label (instead of --dest); repeat for more.
    #[arg(long = "dest-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub dest_labels: Vec<(String, String)>,
    #[arg(long, value_name = "IP")]
    pub dest_ip: Option<IpAddr>,
    /// Destination (target) port.
    #[arg(long)]
    pub port: u16,
    /// The peer's identity over mTLS; without it (or --source) the
    /// connection is plaintext.
    #[arg(long, value_name = "spiffe://TD/ns/NS/sa/SA")]
    pub source_identity: Option<SpiffeId>,
    /// Source WorkloadEntry: mTLS with its identity, from its address.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        conflicts_with = "source_identity"
    )]
    pub source: Option<WorkloadRef>,
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask the running agent instead: its live policies, its enrolled
    /// workloads (for --dest/--source) and the kernel's verdict.
    #[arg(long, conflicts_with_all = ["config", "demo"])]
    pub agent: bool,
    /// The agent's admin socket, with --agent.
    #[arg(long, default_value = "/run/zgate/admin.sock", requires = "agent")]
    pub admin_socket: PathBuf,
}

/// `zgate policies`: every AuthorizationPolicy's status.
#[derive(Clone, Debug, clap::Args)]
pub struct PoliciesArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `namespace/name` of a WorkloadEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
}

/// One connection to decide, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub dest_namespace: String,
    pub dest_labels: BTreeMap<String, String>,
    /// The WorkloadEntry the destination was taken from, if any.
    pub dest_workload: Option<PolicyKey>,
    pub conn: Conn,
    /// The source IP was not given and is a default.
    pub src_ip_defaulted: bool,
    /// The destination IP was not given and is a default.
    pub dst_ip_defaulted: bool,
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub query: Query,
    pub evaluation: Evaluation,
    /// Every policy applying to the destination, in evaluation order.
    pub considered: Vec<Considered>,
    /// Caveats about the answer (defaulted IPs that a policy looks at).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Considered {
    pub key: PolicyKey,
    pub action: Action,
    pub dry_run: bool,
    pub origin: Origin,
    pub matched: bool,
}

/// What `zgate policies` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoliciesReport {
    pub policies: Vec<PolicyStatus>,
    pub workloads: Vec<WorkloadMtls>,
}

/// The effective PeerAuthentication of one WorkloadEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadMtls {
    pub workload: PolicyKey,
    pub mtls: EffectiveMtls,
    /// The synthetic DENY that enforces it, if any.
    pub policy: Option<PolicyKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config {
        #[from]
        source: config::Error,
    },
    #[error("no WorkloadEntry {reference} in the configuration; check the namespace and name")]
    UnknownWorkload { reference: String },
    #[error("{value:?} is not NAMESPACE/NAME")]
    WorkloadRef { value: String },
    #[error("{value:?} is not KEY=VALUE")]
    Label { value: String },
    #[error("cannot render JSON: {error}")]
    Json { error: serde_json::Error },
    #[error("no configuration: pass --config DIR (or --demo for the embedded example)")]
    NoConfig,
}

/// Runs `zgate check`.
pub fn run_check(args: &CheckArgs) -> Result<CheckReport, Error> {
    check_in(&args.config.load()?, args)
}

/// `zgate check` against a loaded mesh (the agent passes its live one).
pub fn check_in(mesh: &MeshConfig, args: &CheckArgs) -> Result<CheckReport, Error> {
    let query = query(mesh, args)?;
    Ok(check(mesh, &query))
}

/// Runs `zgate policies`.
pub fn run_policies(args: &PoliciesArgs) -> Result<PoliciesReport, Error> {
    Ok(policies(&args.config.load()?))
}

/// Decides `query` against `mesh`.
pub fn check(mesh: &MeshConfig, query: &Query) -> CheckReport {
    let applicable = mesh.policies_for(&query.dest_namespace, &query.dest_labels);
    let refs: Vec<&policy::Authorization> = applicable.iter().map(AsRef::as_ref).collect();
    let evaluation = policy::evaluate(&refs, &query.conn);
    let considered = refs
        .iter()
        .map(|p| Considered {
            key: p.key.clone(),
            action: p.action,
            dry_run: p.dry_run,
            origin: p.origin.clone(),
            matched: policy::matches(p, &query.conn),
        })
        .collect();
    let looks_at = |f: &dyn Fn(&policy::Match) -> bool| {
        refs.iter()
            .flat_map(|p| p.rules.iter().flatten().flatten())
            .any(f)
    };
    let mut notes = Vec::new();
    if query.src_ip_defaulted
        && looks_at(&|m| !m.source_ips.is_empty() || !m.not_source_ips.is_empty())
    {
        notes.push(format!(
            "--source-ip not given: a policy matches on source IPs and {} was assumed",
            query.conn.src
        ));
    }
    if query.dst_ip_defaulted
        && looks_at(&|m| !m.destination_ips.is_empty() || !m.not_destination_ips.is_empty())
    {
        notes.push(format!(
            "--dest-ip not given: a policy matches on destination IPs and {} was assumed",
            query.conn.dst
        ));
    }
    CheckReport {
        query: query.clone(),
        evaluation,
        considered,
        notes,
    }
}

/// The status of every AuthorizationPolicy, and the effective mTLS of every
/// WorkloadEntry.
pub fn policies(mesh: &MeshConfig) -> PoliciesReport {
    let root = &mesh.options().root_namespace;
    let workloads = mesh
        .workloads()
        .iter()
        .map(|w| {
            let mtls = mesh.peer_authentication_for(&w.namespace, &w.labels);
            let policy = mtls.authorization(root, &w.labels).map(|a| a.key);
            WorkloadMtls {
                workload: w.key(),
                mtls,
                policy,
            }
        })
        .collect();
    PoliciesReport {
        policies: mesh.policy_status(),
        workloads,
    }
}

/// Resolves the command line against the configuration.
fn query(mesh: &MeshConfig, args: &CheckArgs) -> Result<Query, Error> {
    let workload = |r: &WorkloadRef| {
        mesh.workload(&r.namespace, &r.name)
            .ok_or_else(|| Error::UnknownWorkload {
                reference: r.to_string(),
            })
    };
    let (dest_namespace, dest_labels, dest_workload, dest_address) = match &args.dest {
        Some(r) => {
            let w = workload(r)?;
            (
                w.namespace.clone(),
                w.labels.clone(),
                Some(w.key()),
                w.address,
            )
        }
        None => {
            let ns = args
                .dest_namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned());
            (ns, args.dest_labels.iter().cloned().collect(), None, None)
        }
    };
    let (src_identity, src_address) = match &args.source {
        Some(r) => {
            let w = workload(r)?;
            (Some(w.identity(&mesh.options().trust_domain)), w.address)
        }
        None => (args.source_identity.clone(), None),
    };
    let src = args.source_ip.or(src_address);
    let dst = args.dest_ip.or(dest_address);
    Ok(Query {
        dest_namespace,
        dest_labels,
        dest_workload,
        conn: Conn {
            src: src.unwrap_or(DEFAULT_IP),
            dst: dst.unwrap_or(DEFAULT_IP),
            dst_port: args.port,
            src_identity,
        },
        src_ip_defaulted: src.is_none(),
        dst_ip_defaulted: dst.is_none(),
    })
}

fn parse_label(s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(Error::Label {
            value: s.to_owned(),
        }),
    }
}

// === impl ConfigArgs ===

impl ConfigArgs {
    pub fn options(&self) -> Options {
        Options {
            root_namespace: self.root_namespace.clone(),
            trust_domain: self.trust_domain.clone(),
        }
    }

    /// The embedded demo with `--demo`, else the `--config` directory.
    pub fn load(&self) -> Result<MeshConfig, Error> {
        match &self.config {
            _ if self.demo => Ok(MeshConfig::demo(&self.options())?),
            Some(dir) => Ok(MeshConfig::load_dir(dir, &self.options())?),
            None => Err(Error::NoConfig),
        }
    }
}

// === impl WorkloadRef ===

impl FromStr for WorkloadRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(Error::WorkloadRef {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Used for an IP that was neither given nor known from a WorkloadEntry.
const DEFAULT_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests;
