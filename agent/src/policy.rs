//! The L4 authorization model, as ztunnel holds it (`src/rbac.rs`): a policy
//! is rules (OR) of clauses (AND) of matches (OR); a match ANDs its fields
//! and ORs the values inside each field. Types here are validated domain
//! values: Kubernetes YAML is converted into them by `config`.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;

use crate::identity::SpiffeId;

mod evaluate;

pub use evaluate::{evaluate, matches, DryRunNote, Evaluation, Reason, Verdict};

/// `namespace/name`, the key ztunnel stores a policy under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// One of istiod's synthetic PeerAuthentication-derived DENY policies
    /// (`istio_converted_static_strict`, `converted_peer_authentication_*`).
    /// Their names contain `_`, which Kubernetes object names cannot, so
    /// they never clash with a user's AuthorizationPolicy.
    pub fn is_peer_authentication(&self) -> bool {
        self.name == STATIC_STRICT_NAME
            || self.name.starts_with(CONVERTED_PEER_AUTHENTICATION_PREFIX)
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
}

/// Which workloads a policy applies to (istiod's conversion, §2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Root namespace, no selector: every workload in the mesh.
    Global,
    /// No selector: every workload in the policy's namespace.
    Namespace,
    /// `matchLabels` must be a subset of the workload's labels; the workload
    /// must be in the policy's namespace, or the policy in the root namespace.
    /// An empty label map selects nothing (`selector: {}`).
    WorkloadSelector(BTreeMap<String, String>),
}

/// Where a policy came from: the user's AuthorizationPolicy, or a
/// PeerAuthentication expressed as a DENY on plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    AuthorizationPolicy,
    PeerAuthentication,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authorization {
    pub key: PolicyKey,
    pub scope: Scope,
    pub action: Action,
    /// rules (OR) → clauses (AND) → matches (OR).
    pub rules: Vec<Vec<Vec<Match>>>,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    pub dry_run: bool,
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `"*"`: the value is non-empty.
    Presence,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One match: every non-empty field pair must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// The attributes of one connection that L4 policy can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The authenticated peer; `None` for plaintext.
    pub src_identity: Option<SpiffeId>,
}

/// istiod's name for the DENY-plaintext policy every STRICT workload references
/// (in the root namespace).
pub const STATIC_STRICT_NAME: &str = "istio_converted_static_strict";

/// istiod's name prefix for a per-workload PeerAuthentication conversion
/// (`converted_peer_authentication_<pa-name>`, in the PA's namespace).
pub const CONVERTED_PEER_AUTHENTICATION_PREFIX: &str = "converted_peer_authentication_";

/// One field pair of a match (§1.3): true when the positive list is empty or
/// any of its values holds, and the negative list is empty or none holds.
pub fn field_pair_holds<T>(positive: &[T], negative: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&holds)) && !negative.iter().any(&holds)
}
