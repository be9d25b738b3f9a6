//! Policy → map entries: the compiled form the eBPF programs read
//! (layout and rationale in `zgate_common::policy`).
//!
//! Each workload's applicable policies become *terms* (one per way a rule
//! can match: the AND of one non-empty match from each of its clauses).
//! A term's predicate splits into four independent dimensions, so for each
//! dimension we store, per value class, the bitset of terms that hold there:
//!
//! - identity: one entry per (set, identity) only where the identity's bits
//!   differ from a generic identity's, found through an index of the exact
//!   principals, namespaces and service accounts the policies name;
//! - port: one entry per port a policy names, plus a default;
//! - source / destination IP: one LPM entry per CIDR a policy names, holding
//!   the bits for "every CIDR that contains this one holds", plus a /0
//!   default per family — the longest-prefix match makes that exact.
//!
//! Map size therefore grows with the size of the policies (and the number
//! of identities they name), never with identities × rules.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use zgate_common::policy::{
    PolicySet, TermBits, TermInfo, MAX_TERMS, SET_HAS_ALLOW, SET_HAS_DRY_ALLOW,
    SET_SRC_IP_SENSITIVE, TERM_PEER_AUTHN,
};

use crate::{
    identity::SpiffeId,
    policy::{Action, Authorization, Match, Origin, StringMatch},
};

mod identities;
mod model;
mod plan;

pub use identities::{Identities, PolicyIds};

use plan::PolicyPlan;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "workload {workload} is selected by policies with {terms} terms in all; the in-kernel limit is {MAX_TERMS} per workload: split or simplify the policies that select it"
    )]
    TooManyTerms { workload: String, terms: usize },
}

/// The address dimension of an LPM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpDim {
    Source,
    Destination,
}

/// One LPM-trie entry: `net` is truncated to its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpEntry {
    pub dim: IpDim,
    pub net: IpNet,
    pub bits: TermBits,
}

/// One policy set, shared by every workload with the same policies.
#[derive(Debug)]
pub struct CompiledSet {
    pub info: PolicySet,
    pub identity_bits: BTreeMap<u32, TermBits>,
    pub port_bits: BTreeMap<u16, TermBits>,
    pub ip_bits: Vec<IpEntry>,
    pub terms: Vec<TermInfo>,
    plans: Vec<Arc<PolicyPlan>>,
}

/// The compiled form of one policy generation.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Index = policy set id.
    pub sets: Vec<CompiledSet>,
    /// Workload id → policy set id.
    pub workload_sets: BTreeMap<u32, u32>,
}

/// A workload to compile for: its id, a name for errors, and the policies
/// that apply to it (`MeshConfig::policies_for`).
pub struct WorkloadPolicies {
    pub id: u32,
    pub name: String,
    pub policies: Vec<Arc<Authorization>>,
}

/// Compile every workload's policies. `identities` are the identities known
/// now; one that appears later gets its entries from `CompiledSet::identity`.
pub fn compile(
    workloads: &[WorkloadPolicies],
    identities: &Identities,
    policy_ids: &mut PolicyIds,
) -> Result<Compiled, Error> {
    // Policies shared by workloads are the same `Arc`; PeerAuthentication
    // policies are made per workload, so they are shared by content.
    let mut shared: HashMap<*const Authorization, Arc<PolicyPlan>> = HashMap::new();
    let mut per_workload: HashMap<Authorization, Arc<PolicyPlan>> = HashMap::new();
    let mut sets_by_content: HashMap<Vec<*const PolicyPlan>, u32> = HashMap::new();
    let mut compiled = Compiled::default();
    for wl in workloads {
        let set_plans: Vec<Arc<PolicyPlan>> = wl
            .policies
            .iter()
            .map(|auth| {
                let plan = || Arc::new(PolicyPlan::new(auth, identities));
                match auth.origin {
                    Origin::AuthorizationPolicy => {
                        shared.entry(Arc::as_ptr(auth)).or_insert_with(plan).clone()
                    }
                    Origin::PeerAuthentication => per_workload
                        .entry(Authorization::clone(auth))
                        .or_insert_with(plan)
                        .clone(),
                }
            })
            .collect();
        let key: Vec<*const PolicyPlan> = set_plans.iter().map(Arc::as_ptr).collect();
        let set = match sets_by_content.get(&key) {
            Some(set) => *set,
            None => {
                let terms: usize = set_plans.iter().map(|p| p.terms.len()).sum();
                if terms > MAX_TERMS {
                    return Err(Error::TooManyTerms {
                        workload: wl.name.clone(),
                        terms,
                    });
                }
                let set = compiled.sets.len() as u32;
                compiled.sets.push(CompiledSet::new(set_plans, policy_ids));
                sets_by_content.insert(key, set);
                set
            }
        };
        compiled.workload_sets.insert(wl.id, set);
    }
    Ok(compiled)
}

// === impl CompiledSet ===

impl CompiledSet {
    fn new(plans: Vec<Arc<PolicyPlan>>, ids: &mut PolicyIds) -> Self {
        let mut info = PolicySet::default();
        let mut terms = Vec::new();
        for plan in &plans {
            let auth = &plan.auth;
            let flags = match auth.origin {
                Origin::PeerAuthentication => TERM_PEER_AUTHN,
                Origin::AuthorizationPolicy => 0,
            };
            let policy = ids.intern(&auth.key);
            let (mask, set_flag) = match (auth.action, auth.dry_run) {
                (Action::Deny, false) => (&mut info.deny, 0),
                (Action::Deny, true) => (&mut info.dry_deny, 0),
                (Action::Allow, false) => (&mut info.allow, SET_HAS_ALLOW),
                (Action::Allow, true) => (&mut info.dry_allow, SET_HAS_DRY_ALLOW),
            };
            // An ALLOW policy with no terms still counts: it allows nothing.
            info.flags |= set_flag;
            for _ in &plan.terms {
                mask.set(terms.len());
                terms.push(TermInfo { policy, flags });
            }
            if plan.src_ip_sensitive() {
                info.flags |= SET_SRC_IP_SENSITIVE;
            }
        }
        let mut set = Self {
            info,
            identity_bits: BTreeMap::new(),
            port_bits: BTreeMap::new(),
            ip_bits: Vec::new(),
            terms,
            plans,
        };
        set.info.identity_plaintext = set.concat(|p| p.identity_bits(None));
        set.info.identity_default = set.concat(|p| p.generic_identity_bits.clone());
        set.info.port_default = set.concat(|p| p.generic_port_bits.clone());
        let candidates: BTreeSet<u32> = set
            .plans
            .iter()
            .flat_map(|p| p.identity_candidates.keys().copied())
            .collect();
        for id in candidates {
            let bits = set.concat(|p| match p.identity_candidates.get(&id) {
                Some(bits) => bits.clone(),
                None => p.generic_identity_bits.clone(),
            });
            if bits != set.info.identity_default {
                set.identity_bits.insert(id, bits);
            }
        }
        let ports: BTreeSet<u16> = set.plans.iter().flat_map(|p| p.ports()).collect();
        for port in ports {
            let bits = set.concat(|p| p.port_bits(port));
            if bits != set.info.port_default {
                set.port_bits.insert(port, bits);
            }
        }
        for dim in [IpDim::Source, IpDim::Destination] {
            set.ip_bits.extend(set.ip_entries(dim));
        }
        set
    }

    /// The identity-dimension bits of an identity that was not known when
    /// the set was compiled; `None` when they equal the default.
    pub fn identity(&self, id: &SpiffeId) -> Option<TermBits> {
        let bits = self.concat(|p| p.identity_bits(Some(id)));
        (bits != self.info.identity_default).then_some(bits)
    }

    /// Every CIDR the set's policies name in `dim`, plus each family's /0.
    fn ip_entries(&self, dim: IpDim) -> Vec<IpEntry> {
        let mut nets: BTreeSet<IpNet> = self.plans.iter().flat_map(|p| p.cidrs(dim)).collect();
        nets.insert(IpNet::new(IpAddr::from([0u8; 4]), 0).unwrap_or_default());
        nets.insert(IpNet::new(IpAddr::from([0u8; 16]), 0).unwrap_or_default());
        nets.iter()
            .map(|net| IpEntry {
                dim,
                net: *net,
                // An address whose longest match is `net` lies in exactly
                // the CIDRs that contain `net`.
                bits: self.concat(|p| p.ip_bits(dim, |atom| contains(atom, net))),
            })
            .collect()
    }

    /// Concatenate per-policy term bits into the set's bitset.
    fn concat(&self, f: impl Fn(&PolicyPlan) -> Vec<bool>) -> TermBits {
        let mut bits = TermBits::EMPTY;
        let mut offset = 0;
        for plan in &self.plans {
            for (i, holds) in f(plan).into_iter().enumerate() {
                if holds {
                    bits.set(offset + i);
                }
            }
            offset += plan.terms.len();
        }
        bits
    }
}

/// Does CIDR `outer` contain every address of `inner` (same family)?
fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// A string predicate a generic (never named) identity can still satisfy.
fn trivially_true(m: &StringMatch) -> bool {
    match m {
        StringMatch::Presence => true,
        StringMatch::Prefix(p) | StringMatch::Suffix(p) => p.is_empty(),
        StringMatch::Exact(_) => false,
    }
}

/// Non-empty matches, the ones that can be true (§1.3: empty ones are skipped).
fn live(clause: &[Match]) -> impl Iterator<Item = &Match> {
    clause.iter().filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests;
