//! AuthorizationPolicy → ztunnel `Authorization`, as istiod converts it for
//! ambient (`convertAuthorizationPolicy` and `handleRule` in
//! `pilot/pkg/serviceregistry/ambient/authorization.go`; spec §2), plus the
//! `ZtunnelAccepted`-style status istiod would write.
//!
//! Deliberate divergences from istiod, each also noted where it happens:
//! * Dry-run policies are always converted (istiod needs the feature flag
//!   `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`).
//! * Bad ports and CIDRs are errors, not silently dropped values: istiod's
//!   validation webhook rejects them before conversion ever sees them.
//! * `source.trustDomains` / `notTrustDomains` are treated like HTTP
//!   attributes instead of being silently ignored (spec §2.3, §7 item 4).
//! * The `istio.io/rev` label is not looked at: zgate serves one revision.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use super::{
    k8s::{self, Condition, FieldError, Located, StringLists},
    Invalid, PolicyAction, PolicyStatus, StatusReason,
};
use crate::policy::{
    Action, Authorization, Match, Origin, PolicyKey, Scope, ServiceAccountMatch, StringMatch,
};

/// One policy's conversion: the Authorization ztunnel would receive (none
/// for `targetRefs`, AUDIT and CUSTOM) and its status.
#[derive(Debug)]
pub(super) struct Converted {
    pub authorization: Option<Authorization>,
    pub status: PolicyStatus,
}

/// A policy's rules after conversion, and what could not be enforced.
struct KeptRules {
    kept: Vec<Vec<Vec<Match>>>,
    http: BTreeSet<String>,
    trust_domains: BTreeSet<String>,
}

/// One AuthorizationPolicy rule after conversion.
struct ConvertedRule {
    clauses: Vec<Vec<Match>>,
    /// HTTP-only fields and `when` keys found in the rule, by API name.
    http: BTreeSet<String>,
    /// `trustDomains` / `notTrustDomains`, when present.
    trust_domains: BTreeSet<String>,
}

/// Converts one parsed policy. `source` names where it was read from.
pub(super) fn convert(
    policy: k8s::AuthorizationPolicy,
    root_namespace: &str,
    source: String,
) -> Result<Converted, FieldError> {
    let k8s::AuthorizationPolicy {
        metadata,
        selector,
        action,
        rules,
        has_target_refs,
    } = policy;
    let key = PolicyKey::new(metadata.namespace.clone(), metadata.name.clone());
    let dry_run = dry_run(&key, &metadata.annotations);
    let mut status = PolicyStatus {
        key: key.clone(),
        source,
        action,
        dry_run,
        attached: false,
        reason: StatusReason::Accepted,
        message: String::new(),
        unsupported: Vec::new(),
    };

    // "TargetRef is not intended for ztunnel": nothing is sent.
    if has_target_refs {
        status.reason = StatusReason::NotForZtunnel;
        status.message = TARGET_REFS.to_owned();
        return Ok(Converted {
            authorization: None,
            status,
        });
    }
    let action = match action {
        PolicyAction::Allow => Action::Allow,
        PolicyAction::Deny => Action::Deny,
        PolicyAction::Audit | PolicyAction::Custom => {
            status.reason = StatusReason::UnsupportedValue;
            status.message = format!("ztunnel does not support the {action} action");
            return Ok(Converted {
                authorization: None,
                status,
            });
        }
    };

    let scope = match selector {
        Some(labels) => Scope::WorkloadSelector(labels),
        None if key.namespace == root_namespace => Scope::Global,
        None => Scope::Namespace,
    };
    let converted = convert_rules(&rules, action, &key.namespace)?;
    let authorization = Authorization {
        key,
        scope,
        action,
        rules: converted.kept,
        dry_run,
        origin: Origin::AuthorizationPolicy,
    };
    status.attached = true;
    set_message(
        &mut status,
        &authorization,
        &converted.http,
        &converted.trust_domains,
    );
    Ok(Converted {
        authorization: Some(authorization),
        status,
    })
}

/// The rules ztunnel keeps: "Within an ALLOW policy, rules matching HTTP
/// attributes are omitted"; a DENY keeps every rule with only its HTTP
/// fields stripped.
fn convert_rules(
    rules: &[k8s::Rule],
    action: Action,
    policy_ns: &str,
) -> Result<KeptRules, FieldError> {
    let mut out = KeptRules {
        kept: Vec::new(),
        http: BTreeSet::new(),
        trust_domains: BTreeSet::new(),
    };
    for rule in rules {
        let r = convert_rule(rule, policy_ns)?;
        let unenforceable = !r.http.is_empty() || !r.trust_domains.is_empty();
        out.http.extend(r.http);
        out.trust_domains.extend(r.trust_domains);
        if action == Action::Deny || !unenforceable {
            out.kept.push(r.clauses);
        }
    }
    Ok(out)
}

/// istiod's `Accepted` / `UnsupportedValue` condition for an attached policy.
fn set_message(
    status: &mut PolicyStatus,
    policy: &Authorization,
    http: &BTreeSet<String>,
    trust_domains: &BTreeSet<String>,
) {
    status.unsupported = http.iter().chain(trust_domains).cloned().collect();
    status.unsupported.sort();
    if status.unsupported.is_empty() {
        status.reason = StatusReason::Accepted;
        status.message = ACCEPTED.to_owned();
        if policy.dry_run {
            status.message.push_str(DRY_RUN_NOTE);
        }
    } else {
        status.reason = StatusReason::UnsupportedValue;
        status.message = unsupported_message(policy, http, trust_domains);
    }
    if matches!(&policy.scope, Scope::WorkloadSelector(l) if l.is_empty()) {
        status.message.push_str(EMPTY_SELECTOR);
    }
}

/// `handleRule`: a `to` clause, a `from` clause, then one clause per `when`
/// condition, each only when present. Every `from`/`to` entry and every
/// condition yields exactly one Match, empty when nothing in it is L4.
fn convert_rule(rule: &k8s::Rule, policy_ns: &str) -> Result<ConvertedRule, FieldError> {
    let mut out = ConvertedRule {
        clauses: Vec::new(),
        http: BTreeSet::new(),
        trust_domains: BTreeSet::new(),
    };
    if !rule.to.is_empty() {
        let clause = rule
            .to
            .iter()
            .map(|op| operation(op, &mut out))
            .collect::<Result<_, _>>()?;
        out.clauses.push(clause);
    }
    if !rule.from.is_empty() {
        let clause = rule
            .from
            .iter()
            .map(|src| source(src, policy_ns, &mut out))
            .collect::<Result<_, _>>()?;
        out.clauses.push(clause);
    }
    for cond in &rule.when {
        let m = condition(cond, &mut out)?;
        out.clauses.push(vec![m]);
    }
    Ok(out)
}

fn operation(op: &StringLists, out: &mut ConvertedRule) -> Result<Match, FieldError> {
    out.http.extend(
        op.names()
            .filter(|n| !matches!(*n, "ports" | "notPorts"))
            .map(str::to_owned),
    );
    Ok(Match {
        destination_ports: ports(op.get("ports"))?,
        not_destination_ports: ports(op.get("notPorts"))?,
        ..Match::default()
    })
}

fn source(
    src: &StringLists,
    policy_ns: &str,
    out: &mut ConvertedRule,
) -> Result<Match, FieldError> {
    for name in src.names() {
        match name {
            "trustDomains" | "notTrustDomains" => {
                out.trust_domains.insert(name.to_owned());
            }
            "requestPrincipals"
            | "notRequestPrincipals"
            | "remoteIpBlocks"
            | "notRemoteIpBlocks" => {
                out.http.insert(name.to_owned());
            }
            _ => {}
        }
    }
    let sas = |field| {
        src.get(field)
            .iter()
            .map(|v| service_account(&v.value, policy_ns))
            .collect()
    };
    Ok(Match {
        principals: strings(src.get("principals")),
        not_principals: strings(src.get("notPrincipals")),
        namespaces: strings(src.get("namespaces")),
        not_namespaces: strings(src.get("notNamespaces")),
        service_accounts: sas("serviceAccounts"),
        not_service_accounts: sas("notServiceAccounts"),
        source_ips: cidrs(src.get("ipBlocks"))?,
        not_source_ips: cidrs(src.get("notIpBlocks"))?,
        ..Match::default()
    })
}

/// `values` go to the positive field and `notValues` to the negative field
/// of the same Match; a key outside the converter's list is L7 and yields an
/// empty Match (which ztunnel skips).
fn condition(cond: &Condition, out: &mut ConvertedRule) -> Result<Match, FieldError> {
    let (pos, neg) = (&cond.values, &cond.not_values);
    Ok(match cond.key.as_str() {
        "source.ip" => Match {
            source_ips: cidrs(pos)?,
            not_source_ips: cidrs(neg)?,
            ..Match::default()
        },
        "source.namespace" => Match {
            namespaces: strings(pos),
            not_namespaces: strings(neg),
            ..Match::default()
        },
        "source.principal" => Match {
            principals: strings(pos),
            not_principals: strings(neg),
            ..Match::default()
        },
        "destination.ip" => Match {
            destination_ips: cidrs(pos)?,
            not_destination_ips: cidrs(neg)?,
            ..Match::default()
        },
        "destination.port" => Match {
            destination_ports: ports(pos)?,
            not_destination_ports: ports(neg)?,
            ..Match::default()
        },
        other => {
            out.http.insert(other.to_owned());
            Match::default()
        }
    })
}

/// istiod's `stringToMatch`: `*` is presence, a leading `*` a suffix match,
/// else a trailing `*` a prefix match, anything else exact. Only one end is
/// special: `*a*` is the suffix `a*`, with a literal trailing `*`.
pub(super) fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence
    } else if let Some(rest) = s.strip_prefix('*') {
        StringMatch::Suffix(rest.to_owned())
    } else if let Some(rest) = s.strip_suffix('*') {
        StringMatch::Prefix(rest.to_owned())
    } else {
        StringMatch::Exact(s.to_owned())
    }
}

fn strings(values: &[Located<String>]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(&v.value)).collect()
}

/// `ns/sa` splits on the first `/`; a bare `sa` is in the policy's namespace.
fn service_account(value: &str, policy_ns: &str) -> ServiceAccountMatch {
    let (namespace, service_account) = value.split_once('/').unwrap_or((policy_ns, value));
    ServiceAccountMatch {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
    }
}

/// Decimal port numbers. istiod drops bad ones silently, but only after its
/// validation has already rejected them, so here they are an error.
fn ports(values: &[Located<String>]) -> Result<Vec<u16>, FieldError> {
    values
        .iter()
        .map(|v| {
            let digits = !v.value.is_empty() && v.value.bytes().all(|c| c.is_ascii_digit());
            match v.value.parse::<u16>() {
                Ok(p) if digits => Ok(p),
                _ => Err(invalid(
                    v,
                    Invalid::NotAPort {
                        value: v.value.clone(),
                    },
                )),
            }
        })
        .collect()
}

/// A bare address becomes /32 or /128; a CIDR keeps its host bits
/// (`127.0.0.1/24` matches like `127.0.0.0/24`).
fn cidrs(values: &[Located<String>]) -> Result<Vec<IpNet>, FieldError> {
    values
        .iter()
        .map(|v| {
            let parsed = match v.value.parse::<IpAddr>() {
                Ok(ip) => Ok(IpNet::from(ip)),
                Err(_) => v.value.parse::<IpNet>(),
            };
            parsed.map_err(|_| {
                invalid(
                    v,
                    Invalid::NotACidr {
                        value: v.value.clone(),
                    },
                )
            })
        })
        .collect()
}

fn invalid(at: &Located<String>, reason: Invalid) -> FieldError {
    FieldError {
        path: at.path.clone(),
        reason,
    }
}

/// `istio.io/dry-run`, read like Go's `strconv.ParseBool`; anything else is
/// logged and taken as false, as istiod does.
fn dry_run(key: &PolicyKey, annotations: &std::collections::BTreeMap<String, String>) -> bool {
    let Some(value) = annotations.get(DRY_RUN_ANNOTATION) else {
        return false;
    };
    match value.as_str() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        other => {
            tracing::warn!(policy = %key, value = other, "cannot parse {DRY_RUN_ANNOTATION}; treating it as false");
            false
        }
    }
}

/// The `UnsupportedValue` message: istiod's text for HTTP attributes, ours
/// for trust domains, then what the omission does to this policy.
fn unsupported_message(
    policy: &Authorization,
    http: &BTreeSet<String>,
    trust_domains: &BTreeSet<String>,
) -> String {
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut parts = Vec::new();
    if !http.is_empty() {
        parts.push(format!(
            "ztunnel does not support HTTP attributes (found: {}). In ambient mode you must use a waypoint proxy to enforce HTTP rules.",
            join(http)
        ));
    }
    if !trust_domains.is_empty() {
        parts.push(format!(
            "zgate cannot enforce trust domains at L4 (found: {}) and omits them like HTTP attributes; istiod ignores them silently, which can make a policy broader than written.",
            join(trust_domains)
        ));
    }
    let attributes = if http.is_empty() {
        "trust-domain attributes"
    } else {
        "HTTP attributes"
    };
    match policy.action {
        Action::Allow => {
            parts.push(format!(
                "Within an ALLOW policy, rules matching {attributes} are omitted. This will be more restrictive than requested."
            ));
            if policy.rules.is_empty() {
                parts.push(ALLOW_NOTHING_LEFT.to_owned());
            }
        }
        Action::Deny if has_effective_rules(policy) => parts.push(format!(
            "DENY policy with {attributes} is enforced without the HTTP rules. This will be more restrictive than requested."
        )),
        Action::Deny => parts.push(format!(
            "After omitting unsupported {attributes}, this DENY policy has no enforceable rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
        )),
    }
    parts.join(" ")
}

/// istiod's `hasEffectiveRules`: some rule can still match, i.e. it has no
/// clauses, or each of its clauses is empty or has a non-empty Match.
fn has_effective_rules(policy: &Authorization) -> bool {
    policy.rules.iter().any(|rule| {
        rule.iter()
            .all(|c| c.is_empty() || c.iter().any(|m| !m.is_empty()))
    })
}

const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

const ACCEPTED: &str = "attached to ztunnel";

const DRY_RUN_NOTE: &str = " (dry-run: evaluated and logged, never enforced)";

const TARGET_REFS: &str =
    "targetRefs is set: the policy is for a waypoint or gateway, not ztunnel, so zgate skips it";

const ALLOW_NOTHING_LEFT: &str = "No enforceable rules at ztunnel remain: this ALLOW policy now denies all traffic to the selected workloads.";

const EMPTY_SELECTOR: &str =
    " The selector has no matchLabels, so this policy selects no workload and has no effect.";

#[cfg(test)]
mod tests;
