//! AuthorizationPolicy conversion, against the shapes of istiod's goldens
//! (`testdata/allow-groups*`, `deny-groups*`, `allow-full*`; spec §2.5).

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::*;
use crate::{
    config::{MeshConfig, Options},
    identity::SpiffeId,
    policy::{evaluate, Conn, Reason, Verdict},
};

// --- helpers ------------------------------------------------------------

fn load(yaml: &str) -> MeshConfig {
    MeshConfig::from_str(yaml, "test.yaml", &Options::default()).unwrap()
}

/// The single policy of `yaml`: its Authorization (if attached) and status.
fn one(yaml: &str) -> (Option<Arc<Authorization>>, PolicyStatus) {
    let mesh = load(yaml);
    let mut status = mesh.policy_status();
    assert_eq!(status.len(), 1);
    (mesh.authorizations().first().cloned(), status.remove(0))
}

fn policy(action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: app\nspec:\n  action: {action}\n  rules:\n{rules}"
    )
}

fn ports(p: &[u16]) -> Match {
    Match {
        destination_ports: p.to_vec(),
        ..Match::default()
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

fn ns(n: &str) -> Match {
    Match {
        namespaces: vec![exact(n)],
        ..Match::default()
    }
}

fn from(principal: &str, namespace: &str) -> Match {
    Match {
        principals: vec![exact(principal)],
        namespaces: vec![exact(namespace)],
        ..Match::default()
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn conn(ns: &str, port: u16) -> Conn {
    Conn {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        dst_port: port,
        src_identity: Some(SpiffeId::new("cluster.local", ns, "client")),
    }
}

/// Seven rules mixing L4 and L7 the ways istiod's `*-groups` goldens do.
const GROUPS: &str = r#"
  # 0: L4 and L7 mixed inside `from`
  - from:
    - source:
        principals: [cluster.local/ns/mix-from/sa/client]
        requestPrincipals: [issuer/subject]
        namespaces: [mix-from]
    to:
    - operation: {ports: ["80"]}
  # 1: L4 and L7 mixed inside `to`
  - from:
    - source:
        principals: [cluster.local/ns/mix-to/sa/client]
        namespaces: [mix-to]
    to:
    - operation: {ports: ["80"], methods: [GET]}
  # 2: only L4
  - from:
    - source:
        principals: [cluster.local/ns/l4/sa/client]
        namespaces: [l4]
    to:
    - operation: {ports: ["80"]}
  # 3: only L7
  - from:
    - source: {requestPrincipals: [issuer/subject]}
    to:
    - operation: {paths: [/admin], methods: [POST]}
  # 4: an L4 and an L7 `when`
  - when:
    - {key: source.namespace, values: [when-mixed]}
    - {key: connection.sni, values: [a.example]}
  # 5: only L4 `when`s
  - when:
    - {key: source.namespace, values: [when-l4]}
    - {key: source.ip, values: ["10.10.10.10"], notValues: ["20.20.20.20"]}
  # 6: only L7 `when`s
  - when:
    - {key: connection.sni, values: [b.example]}
    - {key: "request.headers[x-token]", values: [secret]}
"#;

const GROUPS_FOUND: &str =
    "found: connection.sni, methods, paths, request.headers[x-token], requestPrincipals";

fn rule_only_l4() -> Vec<Vec<Match>> {
    vec![
        vec![ports(&[80])],
        vec![from("cluster.local/ns/l4/sa/client", "l4")],
    ]
}

fn rule_when_l4() -> Vec<Vec<Match>> {
    let ip = Match {
        source_ips: vec![net("10.10.10.10/32")],
        not_source_ips: vec![net("20.20.20.20/32")],
        ..Match::default()
    };
    vec![vec![ns("when-l4")], vec![ip]]
}

// --- value conversion ---------------------------------------------------

#[test]
fn wildcards_become_string_matches() {
    assert_eq!(string_match("*"), StringMatch::Presence);
    assert_eq!(
        string_match("*-suffix"),
        StringMatch::Suffix("-suffix".into())
    );
    assert_eq!(
        string_match("prefix-*"),
        StringMatch::Prefix("prefix-".into())
    );
    assert_eq!(string_match("a*b"), exact("a*b"));
    // Only the leading `*` is special: `*a*` is the suffix `a*`.
    assert_eq!(string_match("*a*"), StringMatch::Suffix("a*".into()));
    assert_eq!(string_match(""), exact(""));
}

#[test]
fn every_l4_field_maps_like_allow_full() {
    let rules = r#"
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/b", "prefix-*", "*-suffix", "*"]
        notPrincipals: [not-principal]
  - from:
    - source:
        serviceAccounts: [other/sa, sa-only, "a/b/c"]
        notServiceAccounts: [ns/sa-not]
  - from:
    - source: {namespaces: [ns, "ns-*"], notNamespaces: ["*-not"]}
  - from:
    - source: {ipBlocks: [1.2.3.4, 5.6.7.8/16, "2001:db8::1"], notIpBlocks: [2.2.3.4]}
  - to:
    - operation: {ports: ["80", 90], notPorts: ["800"]}
  - when:
    - {key: source.ip, values: [10.10.10.10, 192.168.10.0/24], notValues: [90.10.10.10]}
  - when:
    - {key: source.principal, values: ["cluster.local/*"], notValues: ["*/sa/x"]}
  - when:
    - {key: destination.ip, values: [10.0.0.1], notValues: [10.0.0.0/8]}
  - when:
    - {key: destination.port, values: ["91"], notValues: ["9001"]}
"#;
    let (authz, status) = one(&policy("ALLOW", rules));
    let a = authz.unwrap();
    assert_eq!(status.reason, StatusReason::Accepted);
    assert_eq!(status.message, "attached to ztunnel");
    assert_eq!(a.scope, Scope::Namespace);
    let m = |r: usize| a.rules[r][0][0].clone();
    assert_eq!(
        m(0).principals,
        vec![
            exact("cluster.local/ns/a/sa/b"),
            StringMatch::Prefix("prefix-".into()),
            StringMatch::Suffix("-suffix".into()),
            StringMatch::Presence
        ]
    );
    assert_eq!(m(0).not_principals, vec![exact("not-principal")]);
    let sa = |n: &str, s: &str| ServiceAccountMatch {
        namespace: n.into(),
        service_account: s.into(),
    };
    // Split on the first `/`; a bare name is in the policy's namespace.
    assert_eq!(
        m(1).service_accounts,
        vec![sa("other", "sa"), sa("app", "sa-only"), sa("a", "b/c")]
    );
    assert_eq!(m(1).not_service_accounts, vec![sa("ns", "sa-not")]);
    assert_eq!(
        m(2).not_namespaces,
        vec![StringMatch::Suffix("-not".into())]
    );
    // A bare IP is a host route; a CIDR keeps its host bits.
    assert_eq!(
        m(3).source_ips,
        vec![
            net("1.2.3.4/32"),
            "5.6.7.8/16".parse::<IpNet>().unwrap(),
            net("2001:db8::1/128")
        ]
    );
    assert_eq!(
        m(3).source_ips[1].addr(),
        "5.6.7.8".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        m(4),
        Match {
            destination_ports: vec![80, 90],
            not_destination_ports: vec![800],
            ..Match::default()
        }
    );
    // `values` and `notValues` land in the same Match.
    assert_eq!(
        m(5).source_ips,
        vec![net("10.10.10.10/32"), net("192.168.10.0/24")]
    );
    assert_eq!(m(5).not_source_ips, vec![net("90.10.10.10/32")]);
    assert_eq!(
        m(6).principals,
        vec![StringMatch::Prefix("cluster.local/".into())]
    );
    assert_eq!(
        m(6).not_principals,
        vec![StringMatch::Suffix("/sa/x".into())]
    );
    assert_eq!(m(7).destination_ips, vec![net("10.0.0.1/32")]);
    assert_eq!(m(7).not_destination_ips, vec![net("10.0.0.0/8")]);
    assert_eq!(
        m(8),
        Match {
            destination_ports: vec![91],
            not_destination_ports: vec![9001],
            ..Match::default()
        }
    );
}

#[test]
fn clauses_come_in_to_from_when_order() {
    let rules = r#"
  - when:
    - {key: source.namespace, values: [w]}
    from:
    - source: {namespaces: [f]}
    - source: {namespaces: [g]}
    to:
    - operation: {ports: ["1"]}
"#;
    let (authz, _) = one(&policy("ALLOW", rules));
    assert_eq!(
        authz.unwrap().rules,
        vec![vec![
            vec![ports(&[1])],
            vec![ns("f"), ns("g")],
            vec![ns("w")]
        ]]
    );
}

// --- L7 in ALLOW and DENY (spec §2.4, §2.5) -----------------------------

#[test]
fn allow_groups_drop_every_rule_with_l7() {
    let (authz, status) = one(&policy("ALLOW", GROUPS));
    assert_eq!(authz.unwrap().rules, vec![rule_only_l4(), rule_when_l4()]);
    assert_eq!(status.reason, StatusReason::UnsupportedValue);
    assert_eq!(
        status.message,
        format!(
            "ztunnel does not support HTTP attributes ({GROUPS_FOUND}). In ambient mode you must use a waypoint proxy \
             to enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are omitted. \
             This will be more restrictive than requested."
        )
    );
    assert_eq!(
        status.unsupported,
        vec![
            "connection.sni",
            "methods",
            "paths",
            "request.headers[x-token]",
            "requestPrincipals"
        ]
    );
}

#[test]
fn deny_groups_strip_l7_fields_and_keep_empty_matches() {
    let (authz, status) = one(&policy("DENY", GROUPS));
    let a = authz.unwrap();
    let empty = || vec![Match::default()];
    assert_eq!(a.rules.len(), 7);
    assert_eq!(
        a.rules[0],
        vec![
            vec![ports(&[80])],
            vec![from("cluster.local/ns/mix-from/sa/client", "mix-from")]
        ]
    );
    assert_eq!(
        a.rules[1],
        vec![
            vec![ports(&[80])],
            vec![from("cluster.local/ns/mix-to/sa/client", "mix-to")]
        ]
    );
    assert_eq!(a.rules[2], rule_only_l4());
    assert_eq!(a.rules[3], vec![empty(), empty()]);
    assert_eq!(a.rules[4], vec![vec![ns("when-mixed")], empty()]);
    assert_eq!(a.rules[5], rule_when_l4());
    assert_eq!(a.rules[6], vec![empty(), empty()]);
    assert_eq!(
        status.message,
        format!(
            "ztunnel does not support HTTP attributes ({GROUPS_FOUND}). In ambient mode you must use a waypoint proxy \
             to enforce HTTP rules. DENY policy with HTTP attributes is enforced without the HTTP rules. \
             This will be more restrictive than requested."
        )
    );
}

#[test]
fn deny_with_stripped_l7_denies_more_broadly() {
    let (authz, _) = one(&policy("DENY", GROUPS));
    let a = authz.unwrap();
    // Rule 1 asked for GET only; without the method it denies all of port 80.
    let e = evaluate(&[&a], &conn("mix-to", 80));
    assert_eq!(
        e.verdict,
        Verdict::Deny(Reason::ExplicitDeny(a.key.clone()))
    );
    assert!(evaluate(&[&a], &conn("mix-to", 81)).is_allow());
}

#[test]
fn deny_with_an_l7_clause_is_a_no_op() {
    let (authz, _) = one(&policy("DENY", GROUPS));
    let a = authz.unwrap();
    // Rule 4: `source.namespace` AND an emptied `connection.sni` clause.
    assert!(evaluate(&[&a], &conn("when-mixed", 80)).is_allow());
    let rules = r#"
  - from:
    - source: {namespaces: [blocked]}
    when:
    - {key: "request.auth.claims[iss]", values: [x]}
"#;
    let (authz, status) = one(&policy("DENY", rules));
    assert!(evaluate(&[&authz.unwrap()], &conn("blocked", 80)).is_allow());
    assert!(status.message.ends_with(
        "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel and will \
         have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
    ));
}

#[test]
fn deny_with_only_l7_to_has_no_effect() {
    let rules = "  - to:\n    - operation: {methods: [POST]}\n";
    let (authz, status) = one(&policy("DENY", rules));
    let a = authz.unwrap();
    assert_eq!(a.rules, vec![vec![vec![Match::default()]]]);
    assert!(evaluate(&[&a], &conn("any", 80)).is_allow());
    assert_eq!(
        status.message,
        "ztunnel does not support HTTP attributes (found: methods). In ambient mode you must use a waypoint proxy to \
         enforce HTTP rules. After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at \
         ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
    );
}

#[test]
fn allow_with_only_l7_rules_denies_everything() {
    let rules = "  - to:\n    - operation: {methods: [GET], hosts: [a.example]}\n";
    let (authz, status) = one(&policy("ALLOW", rules));
    let a = authz.unwrap();
    assert!(a.rules.is_empty());
    let e = evaluate(&[&a], &conn("any", 80));
    assert_eq!(e.verdict, Verdict::Deny(Reason::NoAllowMatched));
    assert!(
        status.message.contains("(found: hosts, methods)"),
        "{}",
        status.message
    );
    assert!(status.message.ends_with(
        "No enforceable rules at ztunnel remain: this ALLOW policy now denies all traffic to the selected workloads."
    ));
}

#[test]
fn l4_looking_when_keys_outside_the_list_are_l7() {
    let rules = r#"
  - when:
    - {key: source.serviceAccount, values: [sa]}
  - when:
    - {key: remote.ip, values: [1.2.3.4]}
  - from:
    - source: {remoteIpBlocks: [1.2.3.4], notRequestPrincipals: ["*"]}
"#;
    let (authz, status) = one(&policy("ALLOW", rules));
    assert!(authz.unwrap().rules.is_empty());
    assert_eq!(
        status.unsupported,
        vec![
            "notRequestPrincipals",
            "remote.ip",
            "remoteIpBlocks",
            "source.serviceAccount"
        ]
    );
}

#[test]
fn trust_domains_are_treated_like_l7_not_ignored() {
    let rules = r#"
  - from:
    - source: {namespaces: [a], trustDomains: [other.td]}
  - from:
    - source: {namespaces: [b]}
"#;
    // ALLOW: the rule is dropped, not widened to "any trust domain".
    let (authz, status) = one(&policy("ALLOW", rules));
    assert_eq!(authz.unwrap().rules, vec![vec![vec![ns("b")]]]);
    assert_eq!(status.reason, StatusReason::UnsupportedValue);
    assert_eq!(status.unsupported, vec!["trustDomains"]);
    assert!(
        status
            .message
            .contains("trust domains at L4 (found: trustDomains)"),
        "{}",
        status.message
    );
    assert!(
        !status.message.contains("HTTP attributes ("),
        "{}",
        status.message
    );
    // DENY: only the field is stripped.
    let (authz, _) = one(&policy("DENY", rules));
    assert_eq!(
        authz.unwrap().rules,
        vec![vec![vec![ns("a")]], vec![vec![ns("b")]]]
    );
}

// --- what is attached, and how ------------------------------------------

#[test]
fn target_refs_are_not_for_ztunnel() {
    for refs in [
        "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n",
        "  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}\n",
    ] {
        let yaml = format!("{}{refs}", policy("DENY", "  - {}\n"));
        let (authz, status) = one(&yaml);
        assert!(authz.is_none());
        assert!(!status.attached);
        assert_eq!(status.reason, StatusReason::NotForZtunnel);
    }
    // An empty `targetRefs` list is no target.
    let (authz, _) = one(&format!("{}  targetRefs: []\n", policy("DENY", "  - {}\n")));
    assert!(authz.is_some());
}

#[test]
fn audit_and_custom_are_unsupported() {
    for action in ["AUDIT", "CUSTOM"] {
        let (authz, status) = one(&policy(action, "  - {}\n"));
        assert!(authz.is_none());
        assert!(!status.attached);
        assert_eq!(status.reason, StatusReason::UnsupportedValue);
        assert_eq!(
            status.message,
            format!("ztunnel does not support the {action} action")
        );
    }
}

#[test]
fn dry_run_annotation() {
    let with = |value: &str| {
        let yaml = policy("DENY", "  - {}\n").replace(
            "  namespace: app\n",
            &format!("  namespace: app\n  annotations:\n    istio.io/dry-run: \"{value}\"\n"),
        );
        let (authz, status) = one(&yaml);
        let a = authz.unwrap();
        assert_eq!(a.dry_run, status.dry_run);
        a.dry_run
    };
    assert!(with("true"));
    assert!(with("1"));
    assert!(!with("false"));
    // Unparseable: logged, and taken as false.
    assert!(!with("yes"));
}

#[test]
fn scope_follows_selector_and_namespace() {
    let mk = |namespace: &str, selector: &str| {
        let yaml = format!(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {namespace}}}\nspec:\n{selector}  action: ALLOW\n"
        );
        let (authz, status) = one(&yaml);
        (authz.unwrap().scope.clone(), status)
    };
    assert_eq!(mk("istio-system", "").0, Scope::Global);
    assert_eq!(mk("app", "").0, Scope::Namespace);
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    assert_eq!(
        mk("istio-system", "  selector: {matchLabels: {app: web}}\n").0,
        Scope::WorkloadSelector(labels)
    );
    let (scope, status) = mk("app", "  selector: {}\n");
    assert_eq!(scope, Scope::WorkloadSelector(BTreeMap::new()));
    assert!(
        status.message.contains("selects no workload"),
        "{}",
        status.message
    );
}

#[test]
fn empty_spec_is_allow_nothing() {
    for yaml in [
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\nspec: {}\n",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\n",
    ] {
        let (authz, status) = one(yaml);
        let a = authz.unwrap();
        assert_eq!(a.action, Action::Allow);
        assert!(a.rules.is_empty());
        assert_eq!(status.reason, StatusReason::Accepted);
        assert!(!evaluate(&[&a], &conn("any", 80)).is_allow());
    }
}

#[test]
fn empty_rule_allows_everything() {
    let (authz, _) = one(&policy("ALLOW", "  - {}\n"));
    let a = authz.unwrap();
    assert_eq!(a.rules, vec![Vec::<Vec<Match>>::new()]);
    assert!(evaluate(&[&a], &conn("any", 80)).is_allow());
}
