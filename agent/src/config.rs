//! The mesh configuration zgate enforces, read from Kubernetes YAML:
//! AuthorizationPolicy and PeerAuthentication (`security.istio.io/v1`,
//! `v1beta1`) and WorkloadEntry (`networking.istio.io/v1`, `v1beta1`).
//!
//! Loading is all-or-nothing: [`MeshConfig::load_dir`] returns a complete
//! configuration or an [`Error`] naming the file, the document, the field and
//! the reason, so a caller can keep the last good configuration. The
//! conversion to ztunnel's model follows istiod (spec §2, §3); see `authz`
//! and `peer_auth` for where zgate knowingly differs.

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::policy::{Authorization, PolicyKey, Scope};

mod authz;
mod k8s;
mod load;
mod peer_auth;
mod workload_entry;

pub use peer_auth::{EffectiveMtls, Mode};
pub use workload_entry::WorkloadEntry;

/// The embedded demo: the example of Istio's "Use Layer 4 security policy"
/// page (namespace `ambient-demo`, `sleep` may reach `httpbin`).
pub const DEMO_CONFIG: &str = include_str!("../demo/ambient-demo.yaml");

/// Mesh-wide settings istiod would take from its MeshConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Policies here without a selector are global (default `istio-system`).
    pub root_namespace: String,
    /// The trust domain of workload identities (default `cluster.local`).
    pub trust_domain: String,
}

/// A complete, validated configuration.
#[derive(Clone, Debug, Default)]
pub struct MeshConfig {
    options: Options,
    /// Sorted by namespace, then name.
    workloads: Vec<WorkloadEntry>,
    /// Converted AuthorizationPolicies (enforced and dry-run), sorted by key.
    authorizations: Vec<Arc<Authorization>>,
    /// One per AuthorizationPolicy read, sorted by key.
    statuses: Vec<PolicyStatus>,
    peer_authentications: Vec<peer_auth::PeerAuthentication>,
}

/// What istiod would write into the policy's `ZtunnelAccepted` condition,
/// plus what zgate did with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyStatus {
    pub key: PolicyKey,
    /// Where it was read: `<file>: document <n>`.
    pub source: String,
    /// `spec.action` as written.
    pub action: PolicyAction,
    pub dry_run: bool,
    /// Converted and enforced (or, for dry-run, evaluated). False for
    /// `targetRefs`, AUDIT and CUSTOM.
    pub attached: bool,
    pub reason: StatusReason,
    pub message: String,
    /// The fields zgate could not enforce at L4 (HTTP attributes, L7 `when`
    /// keys, trust domains), sorted.
    pub unsupported: Vec<String>,
}

/// The condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StatusReason {
    /// istiod's `Accepted` ("attached to ztunnel").
    Accepted,
    /// istiod's `UnsupportedValue`: part or all of it cannot be enforced.
    UnsupportedValue,
    /// `targetRef`/`targetRefs` is set: the policy is for a waypoint or
    /// gateway, and istiod writes no ztunnel condition at all.
    NotForZtunnel,
}

/// `spec.action` of an AuthorizationPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// A configuration that cannot be loaded. Every variant's message is one
/// self-contained line (the underlying I/O or YAML error included), because
/// callers log it and keep running on the last good configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{file}: document {document}: invalid YAML: {error}")]
    Yaml {
        file: String,
        document: usize,
        error: serde_yaml::Error,
    },
    #[error("{file}: document {document}: {}{reason}", FieldPrefix(field))]
    Field {
        file: String,
        document: usize,
        /// e.g. `spec.rules[0].to[0].operation.ports[1]`; empty for the
        /// document itself.
        field: String,
        reason: Invalid,
    },
    #[error("{file}: document {document}: {kind} {key} is defined twice (first in {first}); remove one of them")]
    Duplicate {
        file: String,
        document: usize,
        kind: &'static str,
        key: PolicyKey,
        first: String,
    },
}

/// Why one field was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("is required")]
    Missing,
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("unknown field; expected one of: {}", expected.join(", "))]
    UnknownField { expected: &'static [&'static str] },
    #[error("unknown value {value:?}; expected one of: {expected}")]
    UnknownValue {
        value: String,
        expected: &'static str,
    },
    #[error("{value:?} is not a port number")]
    NotAPort { value: String },
    #[error("{value:?} is not an IP address or CIDR")]
    NotACidr { value: String },
    #[error("{value:?} is not an IP address (zgate does not resolve host names)")]
    NotAnIp { value: String },
    #[error("{value:?} is not a valid Kubernetes name (lowercase RFC 1123)")]
    NotAName { value: String },
    #[error("{value:?} is not an RFC 3339 timestamp")]
    NotATimestamp { value: String },
}

/// Renders `field: ` before a reason, or nothing for the document itself.
struct FieldPrefix<'a>(&'a str);

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            trust_domain: "cluster.local".to_owned(),
        }
    }
}

// === impl MeshConfig ===

impl MeshConfig {
    /// Loads every `*.yaml` and `*.yml` under `dir`, recursively, in path
    /// order. Entries whose name starts with `.` are skipped: a mounted
    /// ConfigMap keeps the same files again under `..data/`.
    pub fn load_dir(dir: &Path, opts: &Options) -> Result<Self, Error> {
        let mut builder = load::Builder::new(opts);
        for path in load::yaml_files(dir)? {
            let text = std::fs::read_to_string(&path).map_err(|error| Error::Io {
                op: "read",
                path: path.clone(),
                error,
            })?;
            builder.add_text(&text, &path.display().to_string())?;
        }
        Ok(builder.finish())
    }

    /// Parses one YAML stream; `origin` names it in errors.
    pub fn from_str(text: &str, origin: &str, opts: &Options) -> Result<Self, Error> {
        let mut builder = load::Builder::new(opts);
        builder.add_text(text, origin)?;
        Ok(builder.finish())
    }

    /// The embedded [`DEMO_CONFIG`].
    pub fn demo(opts: &Options) -> Result<Self, Error> {
        Self::from_str(DEMO_CONFIG, "demo/ambient-demo.yaml", opts)
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Sorted by namespace, then name.
    pub fn workloads(&self) -> &[WorkloadEntry] {
        &self.workloads
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&WorkloadEntry> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// Every Authorization converted from an AuthorizationPolicy, enforced
    /// and dry-run, sorted by key. The PeerAuthentication-derived ones are
    /// per workload: see [`MeshConfig::policies_for`].
    pub fn authorizations(&self) -> &[Arc<Authorization>] {
        &self.authorizations
    }

    /// Every policy applying to a workload with this namespace and labels,
    /// as ztunnel gathers them (spec §1.4): namespace-scoped policies of
    /// its namespace, then global ones, then selector policies of its
    /// namespace or the root namespace whose `matchLabels` are a subset of
    /// `labels` (each group sorted by key), then at most one
    /// PeerAuthentication-derived DENY.
    pub fn policies_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<Arc<Authorization>> {
        let root = &self.options.root_namespace;
        let selected = |p: &Authorization| match &p.scope {
            Scope::WorkloadSelector(sel) => {
                !sel.is_empty()
                    && (p.key.namespace == namespace || &p.key.namespace == root)
                    && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
            Scope::Global | Scope::Namespace => false,
        };
        let in_ns = self.in_namespace(namespace);
        let in_root = self.in_namespace(root);
        // Selector policies may live in the workload's namespace or the root
        // namespace: both ranges, in key order.
        let selector_ranges = match namespace.cmp(root.as_str()) {
            std::cmp::Ordering::Less => [in_ns, in_root],
            std::cmp::Ordering::Equal => [in_ns, &[][..]],
            std::cmp::Ordering::Greater => [in_root, in_ns],
        };
        let mut out: Vec<Arc<Authorization>> = in_ns
            .iter()
            .filter(|p| p.scope == Scope::Namespace)
            .chain(in_root.iter().filter(|p| p.scope == Scope::Global))
            .chain(
                selector_ranges
                    .into_iter()
                    .flatten()
                    .filter(|p| selected(p)),
            )
            .cloned()
            .collect();
        let mtls = self.peer_authentication_for(namespace, labels);
        out.extend(mtls.authorization(root, labels).map(Arc::new));
        out
    }

    /// This config with `extra` workloads added to the inventory (the
    /// agent's enrolled workloads, for `zgate check --agent`).
    pub fn with_workloads(&self, extra: impl IntoIterator<Item = WorkloadEntry>) -> Self {
        let mut mesh = self.clone();
        mesh.workloads.extend(extra);
        mesh.workloads
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        mesh
    }

    /// The policies of one namespace: a contiguous run, as they are sorted
    /// by key.
    fn in_namespace(&self, namespace: &str) -> &[Arc<Authorization>] {
        let all = &self.authorizations;
        let start = all.partition_point(|p| p.key.namespace.as_str() < namespace);
        let len = all[start..].partition_point(|p| p.key.namespace == namespace);
        &all[start..start + len]
    }

    /// The effective PeerAuthentication settings for such a workload.
    pub fn peer_authentication_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> EffectiveMtls {
        peer_auth::resolve(
            &self.peer_authentications,
            &self.options.root_namespace,
            namespace,
            labels,
        )
    }

    /// One status per AuthorizationPolicy read, skipped ones included,
    /// sorted by key.
    pub fn policy_status(&self) -> Vec<PolicyStatus> {
        self.statuses.clone()
    }
}

// === impl PolicyAction ===

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        })
    }
}

// === impl StatusReason ===

impl fmt::Display for StatusReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accepted => "Accepted",
            Self::UnsupportedValue => "UnsupportedValue",
            Self::NotForZtunnel => "NotForZtunnel",
        })
    }
}

// === impl FieldPrefix ===

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

#[cfg(test)]
mod tests;
