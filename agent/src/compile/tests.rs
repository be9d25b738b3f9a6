//! The compiled maps, read through the kernel's look-up model, must give
//! exactly the reference evaluator's verdict, for every connection.

use std::net::IpAddr;

use proptest::prelude::*;
use zgate_common::policy::{
    REASON_ALLOW_MATCHED, REASON_DEFAULT_ALLOW, REASON_EXPLICIT_DENY, REASON_NO_ALLOW_MATCHED,
};

use super::*;
use crate::policy::{evaluate, Conn, PolicyKey, Reason, Scope, ServiceAccountMatch};

const NAMESPACES: [&str; 3] = ["a", "b", "ab"];
const ACCOUNTS: [&str; 2] = ["x", "y"];
const DOMAINS: [&str; 2] = ["cluster.local", "other.td"];
const PORTS: [u16; 4] = [80, 443, 8080, 9090];
const ADDRS: [&str; 9] = [
    "10.0.0.1",
    "10.0.1.2",
    "10.1.0.1",
    "192.168.0.1",
    "127.0.0.1",
    "fd00::1",
    "fd00:1::2",
    "::ffff:10.0.0.1",
    "::1",
];
const CIDRS: [&str; 12] = [
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.0.1/32",
    "10.0.0.5/16",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "fd00::/8",
    "fd00::1/128",
    "::/0",
    "::ffff:10.0.0.0/104",
    "127.0.0.1/32",
];
const STRINGS: [&str; 9] = [
    "a",
    "ab",
    "b",
    "",
    "cluster.local/ns/a/sa/x",
    "other.td/ns/b/sa/y",
    "cluster.local/ns/",
    "/sa/x",
    "spiffe://cluster.local/ns/a/sa/x",
];

fn identities() -> Vec<SpiffeId> {
    let mut out = Vec::new();
    for td in DOMAINS {
        for ns in NAMESPACES {
            for sa in ACCOUNTS {
                out.push(SpiffeId::new(td, ns, sa));
            }
        }
    }
    out
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    let s = proptest::sample::select(&STRINGS[..]).prop_map(str::to_owned);
    prop_oneof![
        s.clone().prop_map(StringMatch::Exact),
        s.clone().prop_map(StringMatch::Prefix),
        s.prop_map(StringMatch::Suffix),
        Just(StringMatch::Presence),
    ]
}

fn few<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(s, 1..3)]
}

fn cidr() -> impl Strategy<Value = IpNet> {
    proptest::sample::select(&CIDRS[..]).prop_map(|c| c.parse().unwrap())
}

fn account() -> impl Strategy<Value = ServiceAccountMatch> {
    (
        proptest::sample::select(&NAMESPACES[..]),
        proptest::sample::select(&ACCOUNTS[..]),
    )
        .prop_map(|(ns, sa)| ServiceAccountMatch {
            namespace: ns.into(),
            service_account: sa.into(),
        })
}

fn a_match() -> impl Strategy<Value = Match> {
    let port = proptest::sample::select(&PORTS[..]);
    (
        (few(string_match()), few(string_match())),
        (few(account()), few(account())),
        (few(string_match()), few(string_match())),
        (few(cidr()), few(cidr()), few(cidr()), few(cidr())),
        (few(port.clone()), few(port)),
    )
        .prop_map(
            |((ns, nns), (sa, nsa), (p, np), (si, nsi, di, ndi), (dp, ndp))| Match {
                namespaces: ns,
                not_namespaces: nns,
                service_accounts: sa,
                not_service_accounts: nsa,
                principals: p,
                not_principals: np,
                source_ips: si,
                not_source_ips: nsi,
                destination_ips: di,
                not_destination_ips: ndi,
                destination_ports: dp,
                not_destination_ports: ndp,
            },
        )
}

fn authorization(index: usize) -> impl Strategy<Value = Authorization> {
    let clause = proptest::collection::vec(a_match(), 0..3);
    let rule = proptest::collection::vec(clause, 0..3);
    (
        proptest::collection::vec(rule, 0..3),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(move |(rules, allow, dry_run, pa)| Authorization {
            key: PolicyKey {
                namespace: "ns".into(),
                name: format!("p{index}"),
            },
            scope: Scope::Namespace,
            action: if allow { Action::Allow } else { Action::Deny },
            rules,
            dry_run,
            origin: if pa {
                Origin::PeerAuthentication
            } else {
                Origin::AuthorizationPolicy
            },
        })
}

fn policy_lists() -> impl Strategy<Value = Vec<Vec<Arc<Authorization>>>> {
    let list = (0..5usize)
        .prop_flat_map(|n| (0..n).map(authorization).collect::<Vec<_>>())
        .prop_map(|v| v.into_iter().map(Arc::new).collect::<Vec<_>>());
    proptest::collection::vec(list, 1..4)
}

#[derive(Debug, Clone)]
struct Probe {
    workload: usize,
    identity: Option<usize>,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
}

fn probe() -> impl Strategy<Value = Probe> {
    let addr = proptest::sample::select(&ADDRS[..]).prop_map(|a| a.parse::<IpAddr>().unwrap());
    (
        0..4usize,
        proptest::option::weighted(0.7, 0..12usize),
        addr.clone(),
        addr,
        prop_oneof![proptest::sample::select(&PORTS[..]), Just(22u16)],
    )
        .prop_map(|(workload, identity, src, dst, port)| Probe {
            workload,
            identity,
            src,
            dst,
            port,
        })
}

fn reason_code(r: &Reason) -> u8 {
    match r {
        Reason::DefaultAllow => REASON_DEFAULT_ALLOW,
        Reason::AllowMatched(_) => REASON_ALLOW_MATCHED,
        Reason::ExplicitDeny(_) => REASON_EXPLICIT_DENY,
        Reason::NoAllowMatched => REASON_NO_ALLOW_MATCHED,
    }
}

/// Compile, registering only some identities up front; the rest arrive
/// after compilation and are added the way the agent adds them.
fn compile_with_late_identities(
    lists: &[Vec<Arc<Authorization>>],
    early: usize,
) -> (Compiled, Identities, PolicyIds) {
    let all = identities();
    let mut ids = Identities::default();
    for id in &all[..early] {
        ids.intern(id);
    }
    let mut policy_ids = PolicyIds::default();
    let workloads: Vec<WorkloadPolicies> = lists
        .iter()
        .enumerate()
        .map(|(i, policies)| WorkloadPolicies {
            id: i as u32 + 1,
            name: format!("ns/w{i}"),
            policies: policies.clone(),
        })
        .collect();
    let mut compiled = compile(&workloads, &ids, &mut policy_ids).unwrap();
    for id in &all[early..] {
        let n = ids.intern(id);
        for set in &mut compiled.sets {
            if let Some(bits) = set.identity(id) {
                set.identity_bits.insert(n, bits);
            }
        }
    }
    (compiled, ids, policy_ids)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn kernel_lookups_agree_with_the_reference_evaluator(
        lists in policy_lists(),
        early in 0..=12usize,
        probes in proptest::collection::vec(probe(), 1..24),
    ) {
        let (compiled, ids, policy_ids) = compile_with_late_identities(&lists, early);
        let all = identities();
        for p in probes {
            let Some(policies) = lists.get(p.workload) else { continue };
            let spiffe = p.identity.map(|i| all[i].clone());
            let conn = Conn { src: p.src, dst: p.dst, dst_port: p.port, src_identity: spiffe.clone() };
            let refs: Vec<&Authorization> = policies.iter().map(|a| a.as_ref()).collect();
            let expected = evaluate(&refs, &conn);
            let identity = spiffe.as_ref().and_then(|s| ids.id(s)).unwrap_or(0);
            let got = compiled
                .lookup(p.workload as u32 + 1, identity, p.src, p.dst, p.port)
                .expect("every workload has a set");
            prop_assert_eq!(got.allowed(), expected.is_allow(), "{:?} {:?}", p, expected);
            prop_assert_eq!(got.reason, reason_code(expected.verdict.reason()));
            let decided_by = got
                .deciding_term()
                .and_then(|t| compiled.sets[compiled.workload_sets[&(p.workload as u32 + 1)] as usize].terms.get(t as usize))
                .and_then(|info| policy_ids.key(info.policy));
            prop_assert_eq!(decided_by, expected.verdict.reason().policy());
        }
    }
}

fn allow_principal(name: &str, principal: &str) -> Arc<Authorization> {
    Arc::new(Authorization {
        key: PolicyKey {
            namespace: "demo".into(),
            name: name.into(),
        },
        scope: Scope::Namespace,
        action: Action::Allow,
        rules: vec![vec![vec![Match {
            principals: vec![StringMatch::Exact(principal.into())],
            ..Match::default()
        }]]],
        dry_run: false,
        origin: Origin::AuthorizationPolicy,
    })
}

#[test]
fn workloads_with_the_same_policies_share_a_set() {
    let p = allow_principal("allow", "cluster.local/ns/demo/sa/sleep");
    let workloads: Vec<WorkloadPolicies> = (1..=3)
        .map(|id| WorkloadPolicies {
            id,
            name: format!("demo/w{id}"),
            policies: vec![p.clone()],
        })
        .collect();
    let compiled = compile(
        &workloads,
        &Identities::default(),
        &mut PolicyIds::default(),
    )
    .unwrap();
    assert_eq!(compiled.sets.len(), 1);
    assert_eq!(compiled.workload_sets.len(), 3);
}

#[test]
fn identity_entries_exist_only_for_named_identities() {
    let mut ids = Identities::default();
    for ns in 0..50 {
        ids.intern(&SpiffeId::new("cluster.local", &format!("ns{ns}"), "sa"));
    }
    let p = allow_principal("allow", "cluster.local/ns/ns7/sa/sa");
    let workloads = [WorkloadPolicies {
        id: 1,
        name: "demo/w".into(),
        policies: vec![p],
    }];
    let compiled = compile(&workloads, &ids, &mut PolicyIds::default()).unwrap();
    let set = &compiled.sets[0];
    assert_eq!(
        set.identity_bits.len(),
        1,
        "only ns7's identity differs from the default"
    );
    let ns7 = ids
        .id(&SpiffeId::new("cluster.local", "ns7", "sa"))
        .unwrap();
    let allowed = compiled.lookup(
        1,
        ns7,
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        80,
    );
    assert!(allowed.unwrap().allowed());
    let other = ids
        .id(&SpiffeId::new("cluster.local", "ns8", "sa"))
        .unwrap();
    let denied = compiled.lookup(
        1,
        other,
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        80,
    );
    assert_eq!(denied.unwrap().reason, REASON_NO_ALLOW_MATCHED);
}

#[test]
fn too_many_terms_is_a_clear_error() {
    let rules: Vec<Vec<Vec<Match>>> = (0..(MAX_TERMS as u16 + 1))
        .map(|port| {
            vec![vec![Match {
                destination_ports: vec![port + 1],
                ..Match::default()
            }]]
        })
        .collect();
    let p = Arc::new(Authorization {
        key: PolicyKey {
            namespace: "demo".into(),
            name: "huge".into(),
        },
        scope: Scope::Namespace,
        action: Action::Allow,
        rules,
        dry_run: false,
        origin: Origin::AuthorizationPolicy,
    });
    let workloads = [WorkloadPolicies {
        id: 1,
        name: "demo/w".into(),
        policies: vec![p],
    }];
    let err = compile(
        &workloads,
        &Identities::default(),
        &mut PolicyIds::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::TooManyTerms {
            workload: "demo/w".into(),
            terms: MAX_TERMS + 1
        }
    );
    assert!(err.to_string().contains("in-kernel limit is 256"));
}
