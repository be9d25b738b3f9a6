//! One policy's terms and the per-dimension facts the set compiler needs.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::{live, Identities, IpDim};
use crate::{
    identity::SpiffeId,
    policy::{Authorization, Match},
};

#[derive(Debug)]
pub(super) struct PolicyPlan {
    pub auth: Authorization,
    /// Each term is the AND of these matches.
    pub terms: Vec<Vec<Match>>,
    /// Bits of an identity that no exact/prefix/suffix predicate names.
    pub generic_identity_bits: Vec<bool>,
    /// Bits of a port that no predicate names.
    pub generic_port_bits: Vec<bool>,
    /// Every known identity some non-trivial identity predicate holds for,
    /// with its bits; all others have the generic bits.
    pub identity_candidates: BTreeMap<u32, Vec<bool>>,
}

impl PolicyPlan {
    pub fn new(auth: &Authorization, identities: &Identities) -> Self {
        let terms = expand(auth);
        let mut plan = Self {
            auth: auth.clone(),
            terms,
            generic_identity_bits: Vec::new(),
            generic_port_bits: Vec::new(),
            identity_candidates: BTreeMap::new(),
        };
        // No policy names this identity: every exact/prefix/suffix predicate
        // with a non-empty pattern is false for it, as for any identity the
        // candidate index below does not return. Its fields are non-empty,
        // as every real identity's are (`SpiffeId::from_str` and enrolment
        // refuse empty ones), so `Presence` holds for both.
        let generic = SpiffeId::new("\0", "\0", "\0");
        plan.generic_identity_bits = plan.identity_bits(Some(&generic));
        let named: Vec<u16> = plan.ports().collect();
        let generic_port = (1..=u16::MAX).find(|p| !named.contains(p)).unwrap_or(0);
        plan.generic_port_bits = plan.port_bits(generic_port);
        for id in plan.candidates(identities) {
            if let Some(spiffe) = identities.get(id) {
                let bits = plan.identity_bits(Some(spiffe));
                plan.identity_candidates.insert(id, bits);
            }
        }
        plan
    }

    pub fn identity_bits(&self, id: Option<&SpiffeId>) -> Vec<bool> {
        self.terms
            .iter()
            .map(|t| t.iter().all(|m| m.identity_holds(id)))
            .collect()
    }

    pub fn port_bits(&self, port: u16) -> Vec<bool> {
        self.terms
            .iter()
            .map(|t| t.iter().all(|m| m.port_holds(port)))
            .collect()
    }

    /// Bits given which CIDRs hold (`holds`) in one address dimension.
    pub fn ip_bits(&self, dim: IpDim, holds: impl Fn(&IpNet) -> bool) -> Vec<bool> {
        self.terms
            .iter()
            .map(|t| {
                t.iter().all(|m| {
                    let (pos, neg) = ip_fields(m, dim);
                    crate::policy::field_pair_holds(pos, neg, &holds)
                })
            })
            .collect()
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.terms.iter().flatten().flat_map(|m| {
            m.destination_ports
                .iter()
                .chain(&m.not_destination_ports)
                .copied()
        })
    }

    /// The CIDRs named in `dim`, truncated to their prefix.
    pub fn cidrs(&self, dim: IpDim) -> impl Iterator<Item = IpNet> + '_ {
        self.terms.iter().flatten().flat_map(move |m| {
            let (pos, neg) = ip_fields(m, dim);
            pos.iter().chain(neg).map(canonical_net)
        })
    }

    pub fn src_ip_sensitive(&self) -> bool {
        self.terms
            .iter()
            .flatten()
            .any(|m| !m.source_ips.is_empty() || !m.not_source_ips.is_empty())
    }

    /// Known identities for which some non-trivial identity predicate of
    /// this policy holds.
    fn candidates(&self, identities: &Identities) -> Vec<u32> {
        let mut out = Vec::new();
        for m in self.terms.iter().flatten() {
            for sm in m.principals.iter().chain(&m.not_principals) {
                out.extend(identities.matching(sm, |id| id.principal()));
            }
            for sm in m.namespaces.iter().chain(&m.not_namespaces) {
                out.extend(identities.matching(sm, |id| id.namespace.clone()));
            }
            for sa in m.service_accounts.iter().chain(&m.not_service_accounts) {
                out.extend(identities.with_account(&sa.namespace, &sa.service_account));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Rules → terms: the cartesian product of each clause's non-empty matches.
/// A clause with no matches is true (contributes nothing); a clause whose
/// matches are all empty is false (the rule yields no term).
fn expand(auth: &Authorization) -> Vec<Vec<Match>> {
    let mut terms = Vec::new();
    'rules: for rule in &auth.rules {
        let mut partial: Vec<Vec<Match>> = vec![Vec::new()];
        for clause in rule {
            if clause.is_empty() {
                continue;
            }
            let alternatives: Vec<&Match> = live(clause).collect();
            if alternatives.is_empty() {
                continue 'rules;
            }
            partial = partial
                .iter()
                .flat_map(|t| {
                    alternatives.iter().map(move |m| {
                        let mut t = t.clone();
                        t.push((*m).clone());
                        t
                    })
                })
                .collect();
        }
        terms.extend(partial);
    }
    terms
}

fn ip_fields(m: &Match, dim: IpDim) -> (&[IpNet], &[IpNet]) {
    match dim {
        IpDim::Source => (&m.source_ips, &m.not_source_ips),
        IpDim::Destination => (&m.destination_ips, &m.not_destination_ips),
    }
}

/// The CIDR as the trie stores it: host bits cleared.
pub(super) fn canonical_net(net: &IpNet) -> IpNet {
    net.trunc()
}

/// IPv4-mapped IPv6 addresses are IPv4, as ztunnel canonicalises them.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
