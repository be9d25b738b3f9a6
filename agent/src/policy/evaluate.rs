//! The reference evaluator: a plain-Rust twin of ztunnel's
//! `Authorization::matches` (`src/rbac.rs`) and `DemandProxyState::assert_rbac`
//! (`src/state.rs`). Everything else (the BPF compiler, the `check` command,
//! the differential tests) is measured against this module, so it favours
//! being obviously right over being fast.
//!
//! The per-field predicates on [`Match`] are public so that a compiler can
//! evaluate one match's identity, source-IP, destination-IP and port fields
//! separately: for every match `m` and connection `c`,
//! `m.holds(c) == !m.is_empty() && m.identity_holds(..) && m.src_ip_holds(..)
//! && m.dst_ip_holds(..) && m.port_holds(..)`.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;

use super::{
    field_pair_holds, Action, Authorization, Conn, Match, PolicyKey, ServiceAccountMatch,
    StringMatch,
};
use crate::identity::SpiffeId;

/// The outcome of [`evaluate`]: the enforced verdict, plus what dry-run
/// policies would have done (ztunnel only logs those).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// In evaluation order; empty when no dry-run policy had anything to say.
    pub dry_run: Vec<DryRunNote>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(Reason),
    Deny(Reason),
}

/// Why a connection was allowed or denied. The deny texts are ztunnel's own
/// (`AuthorizationRejectionError` in `src/proxy.rs`), so logs read the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No enforced ALLOW policy applies to the destination.
    DefaultAllow,
    /// This enforced ALLOW policy matched.
    AllowMatched(PolicyKey),
    /// This enforced DENY policy matched. When the key is one of the
    /// synthetic PeerAuthentication policies (see
    /// [`PolicyKey::is_peer_authentication`]) the connection was plaintext
    /// rejected by STRICT mTLS, and `Display` says so after ztunnel's words.
    ExplicitDeny(PolicyKey),
    /// Enforced ALLOW policies exist, and none matched.
    NoAllowMatched,
}

/// What a dry-run policy would have done; ztunnel logs these and moves on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DryRunNote {
    /// ztunnel: `"dry-run: deny policy match"`.
    DenyMatched(PolicyKey),
    /// ztunnel: `"dry-run: allow policy match"`.
    AllowMatched(PolicyKey),
    /// ztunnel: `"dry-run: no allow policies match"`: there are no enforced
    /// ALLOW policies, there are dry-run ones, and none of them matched.
    NoAllowMatched,
}

/// Decides one connection against the policies that apply to its
/// destination, in ztunnel's order (spec §1.5). `policies` is the complete
/// candidate set (namespace, global, selector and PeerAuthentication-derived
/// policies); the first matching enforced DENY, in slice order, is reported.
pub fn evaluate(policies: &[&Authorization], conn: &Conn) -> Evaluation {
    let (allow, deny): (Vec<&Authorization>, Vec<&Authorization>) = policies
        .iter()
        .copied()
        .partition(|p| p.action == Action::Allow);
    let (dry_deny, deny): (Vec<_>, Vec<_>) = deny.into_iter().partition(|p| p.dry_run);
    let (dry_allow, allow): (Vec<_>, Vec<_>) = allow.into_iter().partition(|p| p.dry_run);
    let mut dry_run = Vec::new();

    for p in &dry_deny {
        if matches(p, conn) {
            tracing::debug!(policy = %p.key, "dry-run: deny policy match");
            dry_run.push(DryRunNote::DenyMatched(p.key.clone()));
        }
    }

    // "If there are any DENY policies that match the request, deny the request."
    if let Some(p) = deny.iter().find(|p| matches(p, conn)) {
        let verdict = Verdict::Deny(Reason::ExplicitDeny(p.key.clone()));
        return Evaluation { verdict, dry_run };
    }

    let mut dry_allow_matched = false;
    for p in &dry_allow {
        if matches(p, conn) {
            tracing::debug!(policy = %p.key, "dry-run: allow policy match");
            dry_run.push(DryRunNote::AllowMatched(p.key.clone()));
            dry_allow_matched = true;
        }
    }
    if allow.is_empty() && !dry_allow.is_empty() && !dry_allow_matched {
        tracing::debug!("dry-run: no allow policies match");
        dry_run.push(DryRunNote::NoAllowMatched);
    }

    // "If there are no ALLOW policies for the workload, allow the request."
    let verdict = if allow.is_empty() {
        Verdict::Allow(Reason::DefaultAllow)
    // "If any of the ALLOW policies match the request, allow the request."
    } else if let Some(p) = allow.iter().find(|p| matches(p, conn)) {
        Verdict::Allow(Reason::AllowMatched(p.key.clone()))
    // "Deny the request."
    } else {
        Verdict::Deny(Reason::NoAllowMatched)
    };
    Evaluation { verdict, dry_run }
}

/// ztunnel's `Authorization::matches`: rules are ORed, a rule's clauses are
/// ANDed, a clause's matches are ORed.
///
/// * No rules at all: never matches (an ALLOW `spec: {}` is allow-nothing,
///   a DENY without rules never fires).
/// * A rule with no clauses matches everything.
/// * A clause with no matches is true; otherwise it is true when one of its
///   *non-empty* matches holds. Empty matches are skipped, so a clause made
///   only of empty matches is false.
pub fn matches(policy: &Authorization, conn: &Conn) -> bool {
    policy.rules.iter().any(|rule| {
        rule.iter()
            .all(|clause| clause.is_empty() || clause.iter().any(|m| m.holds(conn)))
    })
}

// === impl Evaluation ===

impl Evaluation {
    pub fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow(_))
    }
}

// === impl Verdict ===

impl Verdict {
    pub fn reason(&self) -> &Reason {
        match self {
            Self::Allow(r) | Self::Deny(r) => r,
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow(r) => write!(f, "ALLOW {r}"),
            Self::Deny(r) => write!(f, "DENY {r}"),
        }
    }
}

// === impl Reason ===

impl Reason {
    /// The policy that decided, if one did.
    pub fn policy(&self) -> Option<&PolicyKey> {
        match self {
            Self::AllowMatched(k) | Self::ExplicitDeny(k) => Some(k),
            Self::DefaultAllow | Self::NoAllowMatched => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultAllow => f.write_str("no allow policies apply (default allow)"),
            Self::AllowMatched(k) => write!(f, "allowed by: {k}"),
            Self::ExplicitDeny(k) if k.is_peer_authentication() => {
                write!(
                    f,
                    "explicitly denied by: {k} (STRICT mTLS: plaintext rejected)"
                )
            }
            Self::ExplicitDeny(k) => write!(f, "explicitly denied by: {k}"),
            Self::NoAllowMatched => f.write_str("allow policies exist, but none allowed"),
        }
    }
}

// === impl DryRunNote ===

impl fmt::Display for DryRunNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DenyMatched(k) => write!(f, "dry-run: deny policy match: {k}"),
            Self::AllowMatched(k) => write!(f, "dry-run: allow policy match: {k}"),
            Self::NoAllowMatched => f.write_str("dry-run: no allow policies match"),
        }
    }
}

// === impl Match ===

impl Match {
    /// No field set. ztunnel skips such a match: it is neither true nor false.
    pub fn is_empty(&self) -> bool {
        let Self {
            namespaces,
            not_namespaces,
            service_accounts,
            not_service_accounts,
            principals,
            not_principals,
            source_ips,
            not_source_ips,
            destination_ips,
            not_destination_ips,
            destination_ports,
            not_destination_ports,
        } = self;
        namespaces.is_empty()
            && not_namespaces.is_empty()
            && service_accounts.is_empty()
            && not_service_accounts.is_empty()
            && principals.is_empty()
            && not_principals.is_empty()
            && source_ips.is_empty()
            && not_source_ips.is_empty()
            && destination_ips.is_empty()
            && not_destination_ips.is_empty()
            && destination_ports.is_empty()
            && not_destination_ports.is_empty()
    }

    /// The match is non-empty and all of its fields hold for `conn`.
    pub fn holds(&self, conn: &Conn) -> bool {
        !self.is_empty()
            && self.identity_holds(conn.src_identity.as_ref())
            && self.src_ip_holds(conn.src)
            && self.dst_ip_holds(conn.dst)
            && self.port_holds(conn.dst_port)
    }

    /// `namespaces`, `service_accounts` and `principals` with their `not_*`
    /// twins. `None` is plaintext: positive identity fields are then false
    /// and negative ones true (`not_principals: [*]` means "no identity").
    pub fn identity_holds(&self, id: Option<&SpiffeId>) -> bool {
        // ztunnel matches namespaces against "" when there is no identity.
        let ns = id.map_or("", |id| id.namespace.as_str());
        // `principals` see the identity without `spiffe://`; with no identity
        // there is nothing to strip the prefix from, so they never match.
        let principal = id.map(SpiffeId::principal);
        let principal_is = |m: &StringMatch| principal.as_deref().is_some_and(|p| m.matches(p));
        let sa_is = |m: &ServiceAccountMatch| id.is_some_and(|id| m.matches(id));
        field_pair_holds(&self.namespaces, &self.not_namespaces, |m| m.matches(ns))
            && field_pair_holds(&self.service_accounts, &self.not_service_accounts, sa_is)
            && field_pair_holds(&self.principals, &self.not_principals, principal_is)
    }

    /// `source_ips` / `not_source_ips`.
    pub fn src_ip_holds(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        field_pair_holds(&self.source_ips, &self.not_source_ips, |n| n.contains(&ip))
    }

    /// `destination_ips` / `not_destination_ips`.
    pub fn dst_ip_holds(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        field_pair_holds(
            &self.destination_ips,
            &self.not_destination_ips,
            |n: &IpNet| n.contains(&ip),
        )
    }

    /// `destination_ports` / `not_destination_ports`.
    pub fn port_holds(&self, port: u16) -> bool {
        field_pair_holds(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == port
        })
    }
}

// === impl StringMatch ===

impl StringMatch {
    /// Case-sensitive, as in ztunnel. `Presence` means "non-empty".
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

// === impl ServiceAccountMatch ===

impl ServiceAccountMatch {
    /// Namespace and service account must be equal; the trust domain is
    /// ignored.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.namespace == id.namespace && self.service_account == id.service_account
    }
}

#[cfg(test)]
mod tests;
