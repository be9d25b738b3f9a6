//! PeerAuthentication in ambient (spec §3): the effective mTLS mode of a
//! workload, computed per (workload, port) directly from the API, and
//! expressed as the one synthetic DENY Authorization ztunnel would hold.
//!
//! istiod computes the same thing in two places that disagree
//! (`convertedSelectorPeerAuthentications` picks which policy a Workload
//! references; `convertPeerAuthentication` builds the converted policy),
//! which produces the three bugs of spec §3.4. zgate follows the API
//! instead, and so differs from upstream in exactly these cases:
//!
//! * **Q1.** Mesh STRICT, workload `PERMISSIVE` with port 9090 `STRICT`:
//!   upstream skips the port (an operator-precedence slip) and allows
//!   plaintext to 9090. zgate denies it, as the port-level STRICT says.
//! * **Q2.** Mesh STRICT, namespace PA with `mode` unset, workload unset
//!   with port 9090 `PERMISSIVE`: upstream drops the static STRICT policy and
//!   references a converted policy it never builds, so plaintext is allowed
//!   on every port. zgate denies plaintext on every port except 9090.
//! * **Q3.** Mesh STRICT, workload unset with port 9090 `DISABLE`: upstream
//!   only looks for PERMISSIVE ports in this branch and keeps denying 9090.
//!   zgate treats DISABLE like PERMISSIVE everywhere, so 9090 accepts
//!   plaintext.

use std::collections::{BTreeMap, BTreeSet};

use super::k8s::{self, Timestamp};
use crate::policy::{
    Action, Authorization, Match, Origin, PolicyKey, Scope, StringMatch,
    CONVERTED_PEER_AUTHENTICATION_PREFIX, STATIC_STRICT_NAME,
};

/// `spec.mtls.mode`. DISABLE cannot turn mTLS off in ambient (ztunnel always
/// speaks HBONE to other mesh pods); it only stops rejecting plaintext, so it
/// behaves exactly like PERMISSIVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    /// Inherit from the parent level (PERMISSIVE at the top).
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// The effective mTLS settings of one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EffectiveMtls {
    /// Plaintext is rejected, except on the ports in `port_exceptions`.
    pub strict: bool,
    /// Ports whose effective mode is the opposite of `strict`.
    pub port_exceptions: BTreeSet<u16>,
    /// The PeerAuthentications that decided, by level; `None` where a level
    /// has none.
    pub mesh: Option<PolicyKey>,
    pub namespace: Option<PolicyKey>,
    pub workload: Option<PolicyKey>,
}

/// A validated PeerAuthentication.
#[derive(Clone, Debug)]
pub(super) struct PeerAuthentication {
    key: PolicyKey,
    /// `None` or empty: applies to the whole namespace (or mesh).
    selector: Option<BTreeMap<String, String>>,
    mode: Mode,
    port_level: BTreeMap<u16, Mode>,
    created: Option<Timestamp>,
}

// === impl PeerAuthentication ===

impl PeerAuthentication {
    pub fn new(wire: k8s::PeerAuthentication, root_namespace: &str) -> Self {
        let k8s::PeerAuthentication {
            metadata,
            selector,
            mode,
            port_level,
        } = wire;
        let key = PolicyKey::new(metadata.namespace, metadata.name);
        let this = Self {
            key,
            selector: selector.filter(|s| !s.is_empty()),
            mode,
            port_level,
            created: metadata.creation_timestamp,
        };
        if this.selector.is_some() && this.key.namespace == root_namespace {
            tracing::warn!(policy = %this.key, "PeerAuthentication with a selector in the root namespace is ignored");
        } else if this.selector.is_none() && !this.port_level.is_empty() {
            tracing::warn!(policy = %this.key, "portLevelMtls needs a selector; it is ignored");
        }
        this
    }

    /// Oldest first (missing `creationTimestamp` last), then by name.
    fn age(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.key.name)
    }
}

/// The effective mode for a workload with this namespace and labels.
///
/// Candidates (istiod's `fetchPeerAuthentications`): the root namespace's
/// PeerAuthentications without selector (mesh level), the workload
/// namespace's without selector (namespace level), and the workload
/// namespace's whose `matchLabels` are a subset of the workload's labels
/// (workload level). Root-namespace PAs with a selector are ignored, even
/// for workloads in the root namespace. At each level the oldest wins.
pub(super) fn resolve(
    all: &[PeerAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> EffectiveMtls {
    let oldest = |pick: &dyn Fn(&PeerAuthentication) -> bool| {
        all.iter()
            .filter(|pa| pick(pa))
            .min_by(|a, b| a.age().cmp(&b.age()))
    };
    let mesh = oldest(&|pa| pa.key.namespace == root_namespace && pa.selector.is_none());
    let in_ns =
        |pa: &PeerAuthentication| pa.key.namespace == namespace && namespace != root_namespace;
    let ns = oldest(&|pa| in_ns(pa) && pa.selector.is_none());
    let workload = oldest(&|pa| {
        in_ns(pa)
            && pa
                .selector
                .as_ref()
                .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    });

    // Mesh: STRICT or not (UNSET and DISABLE are PERMISSIVE at the top);
    // namespace and workload: a set mode overrides, UNSET inherits.
    let mut strict = mesh.is_some_and(|pa| pa.mode == Mode::Strict);
    for pa in [ns, workload].into_iter().flatten() {
        if pa.mode != Mode::Unset {
            strict = pa.mode == Mode::Strict;
        }
    }
    // portLevelMtls overrides per port; an UNSET port inherits.
    let port_exceptions = workload
        .into_iter()
        .flat_map(|pa| &pa.port_level)
        .filter(|&(_, &mode)| mode != Mode::Unset && (mode == Mode::Strict) != strict)
        .map(|(&port, _)| port)
        .collect();
    EffectiveMtls {
        strict,
        port_exceptions,
        mesh: mesh.map(|pa| pa.key.clone()),
        namespace: ns.map(|pa| pa.key.clone()),
        workload: workload.map(|pa| pa.key.clone()),
    }
}

// === impl EffectiveMtls ===

impl EffectiveMtls {
    /// Whether plaintext to `port` is rejected.
    pub fn strict_on(&self, port: u16) -> bool {
        self.strict != self.port_exceptions.contains(&port)
    }

    /// The synthetic DENY that enforces this, or `None` when plaintext is
    /// accepted on every port.
    ///
    /// * strict, permissive ports P: `[[np*], [!dp P]]` (the second clause
    ///   only when P is non-empty);
    /// * not strict, strict ports S: `[[np* & dp S]]`.
    ///
    /// It is named as istiod names the policy the Workload references:
    /// `<root>/istio_converted_static_strict` for plain STRICT, else
    /// `<pa-ns>/converted_peer_authentication_<pa-name>` after the workload
    /// PeerAuthentication whose `portLevelMtls` made the difference. istiod
    /// sends several groups where zgate writes one Match with several ports;
    /// the two are equivalent. The scope is the workload's own labels: the
    /// policy is computed per workload and never looked up by scope.
    pub fn authorization(
        &self,
        root_namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Authorization> {
        let no_identity = || Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        };
        let ports: Vec<u16> = self.port_exceptions.iter().copied().collect();
        let rule = match (self.strict, ports.is_empty()) {
            (false, true) => return None,
            (true, true) => vec![vec![no_identity()]],
            (true, false) => vec![
                vec![no_identity()],
                vec![Match {
                    not_destination_ports: ports,
                    ..Match::default()
                }],
            ],
            (false, false) => vec![vec![Match {
                destination_ports: ports,
                ..no_identity()
            }]],
        };
        let key = match (&self.workload, self.port_exceptions.is_empty()) {
            (Some(pa), false) => PolicyKey::new(
                pa.namespace.clone(),
                format!("{CONVERTED_PEER_AUTHENTICATION_PREFIX}{}", pa.name),
            ),
            _ => PolicyKey::new(root_namespace, STATIC_STRICT_NAME),
        };
        Some(Authorization {
            key,
            scope: Scope::WorkloadSelector(labels.clone()),
            action: Action::Deny,
            rules: vec![rule],
            dry_run: false,
            origin: Origin::PeerAuthentication,
        })
    }
}

#[cfg(test)]
mod tests;
