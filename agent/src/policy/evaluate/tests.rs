//! The matcher and `assert_rbac` order, rule by rule (spec §1.3, §1.5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::policy::{Origin, Scope};

// --- builders -----------------------------------------------------------

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}

fn mtls(ns: &str, sa: &str) -> Conn {
    Conn {
        src: ip("10.0.0.1"),
        dst: ip("10.0.0.2"),
        dst_port: 80,
        src_identity: Some(id(ns, sa)),
    }
}

fn plaintext() -> Conn {
    Conn {
        src_identity: None,
        ..mtls("x", "x")
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

fn policy(name: &str, action: Action, rules: Vec<Vec<Vec<Match>>>) -> Authorization {
    Authorization {
        key: PolicyKey::new("ns", name),
        scope: Scope::Namespace,
        action,
        rules,
        dry_run: false,
        origin: Origin::AuthorizationPolicy,
    }
}

fn allow(rules: Vec<Vec<Vec<Match>>>) -> Authorization {
    policy("allow", Action::Allow, rules)
}

fn port(p: u16) -> Match {
    Match {
        destination_ports: vec![p],
        ..Match::default()
    }
}

fn ns_is(ns: &str) -> Match {
    Match {
        namespaces: vec![exact(ns)],
        ..Match::default()
    }
}

fn principal(p: StringMatch) -> Match {
    Match {
        principals: vec![p],
        ..Match::default()
    }
}

fn on_port(conn: &Conn, p: u16) -> Conn {
    Conn {
        dst_port: p,
        ..conn.clone()
    }
}

// --- Authorization::matches structure -----------------------------------

#[test]
fn rules_are_ored() {
    let p = allow(vec![vec![vec![port(80)]], vec![vec![port(81)]]]);
    assert!(matches(&p, &on_port(&plaintext(), 80)));
    assert!(matches(&p, &on_port(&plaintext(), 81)));
    assert!(!matches(&p, &on_port(&plaintext(), 82)));
}

#[test]
fn clauses_are_anded() {
    let p = allow(vec![vec![vec![port(80)], vec![ns_is("a")]]]);
    assert!(matches(&p, &mtls("a", "x")));
    assert!(!matches(&p, &mtls("b", "x")));
    assert!(!matches(&p, &on_port(&mtls("a", "x"), 81)));
}

#[test]
fn matches_in_a_clause_are_ored() {
    let p = allow(vec![vec![vec![ns_is("a"), ns_is("b")]]]);
    assert!(matches(&p, &mtls("a", "x")));
    assert!(matches(&p, &mtls("b", "x")));
    assert!(!matches(&p, &mtls("c", "x")));
}

#[test]
fn fields_in_a_match_are_anded_and_values_ored() {
    let m = Match {
        namespaces: vec![exact("a"), exact("b")],
        destination_ports: vec![80, 81],
        ..Match::default()
    };
    let p = allow(vec![vec![vec![m]]]);
    assert!(matches(&p, &on_port(&mtls("b", "x"), 81)));
    assert!(!matches(&p, &on_port(&mtls("b", "x"), 82)));
    assert!(!matches(&p, &on_port(&mtls("c", "x"), 80)));
}

#[test]
fn empty_match_is_skipped() {
    // Skipped, not true: alone it makes the clause false...
    let only_empty = allow(vec![vec![vec![Match::default()]]]);
    assert!(!matches(&only_empty, &plaintext()));
    // ...and next to a holding match it changes nothing.
    let with_port = allow(vec![vec![vec![Match::default(), port(80)]]]);
    assert!(matches(&with_port, &plaintext()));
    let with_other_port = allow(vec![vec![vec![Match::default(), port(81)]]]);
    assert!(!matches(&with_other_port, &plaintext()));
}

#[test]
fn empty_clause_is_true() {
    let p = allow(vec![vec![vec![], vec![port(80)]]]);
    assert!(matches(&p, &plaintext()));
    assert!(!matches(&p, &on_port(&plaintext(), 81)));
}

#[test]
fn empty_rule_matches_everything() {
    let p = allow(vec![vec![]]);
    assert!(matches(&p, &plaintext()));
    assert!(matches(&p, &mtls("a", "b")));
}

#[test]
fn no_rules_never_match() {
    let p = allow(vec![]);
    assert!(!matches(&p, &plaintext()));
    assert!(!matches(&p, &mtls("a", "b")));
}

// --- identity fields ----------------------------------------------------

#[test]
fn negative_identity_fields_hold_for_plaintext() {
    let cases = [
        Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        },
        Match {
            not_namespaces: vec![exact("a")],
            ..Match::default()
        },
        Match {
            not_service_accounts: vec![ServiceAccountMatch {
                namespace: "a".into(),
                service_account: "b".into(),
            }],
            ..Match::default()
        },
    ];
    for m in cases {
        assert!(m.holds(&plaintext()), "{m:?}");
    }
    // `not_principals: [*]` is "no peer identity": false with mTLS.
    let strict = Match {
        not_principals: vec![StringMatch::Presence],
        ..Match::default()
    };
    assert!(!strict.holds(&mtls("a", "b")));
}

#[test]
fn positive_identity_fields_fail_for_plaintext() {
    let sa = Match {
        service_accounts: vec![ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "b".into(),
        }],
        ..Match::default()
    };
    for m in [principal(StringMatch::Presence), ns_is("a"), sa] {
        assert!(!m.holds(&plaintext()), "{m:?}");
    }
    // Presence on the namespace needs a non-empty namespace.
    let ns_presence = Match {
        namespaces: vec![StringMatch::Presence],
        ..Match::default()
    };
    assert!(!ns_presence.holds(&plaintext()));
    // Even a principal Prefix("") needs an identity to strip `spiffe://` from.
    assert!(!principal(StringMatch::Prefix(String::new())).holds(&plaintext()));
}

#[test]
fn principals_are_matched_without_spiffe_scheme() {
    let conn = mtls("foo", "bar");
    assert!(principal(exact("cluster.local/ns/foo/sa/bar")).holds(&conn));
    // istio/ztunnel#1901: written with the scheme, it never matches.
    assert!(!principal(exact("spiffe://cluster.local/ns/foo/sa/bar")).holds(&conn));
    assert!(!principal(StringMatch::Prefix("spiffe://".into())).holds(&conn));
    // No trust-domain aliasing (istio/ztunnel#1260).
    let other_td = Conn {
        src_identity: Some(SpiffeId::new("example.org", "foo", "bar")),
        ..conn.clone()
    };
    assert!(!principal(exact("cluster.local/ns/foo/sa/bar")).holds(&other_td));
}

#[test]
fn string_match_kinds() {
    let conn = mtls("foo", "bar");
    assert!(principal(StringMatch::Prefix("cluster.local/ns/foo/".into())).holds(&conn));
    assert!(!principal(StringMatch::Prefix("cluster.local/ns/fo/".into())).holds(&conn));
    assert!(principal(StringMatch::Suffix("/sa/bar".into())).holds(&conn));
    assert!(!principal(StringMatch::Suffix("/sa/ba".into())).holds(&conn));
    assert!(principal(StringMatch::Presence).holds(&conn));
    // Case-sensitive.
    assert!(!principal(exact("cluster.local/ns/FOO/sa/bar")).holds(&conn));
    assert!(!ns_is("Foo").holds(&conn));
    // `*a*` arrives as Suffix("a*"): the trailing `*` is a literal.
    assert!(!principal(StringMatch::Suffix("bar*".into())).holds(&conn));
}

#[test]
fn namespaces_match_the_identity_namespace() {
    let m = Match {
        namespaces: vec![StringMatch::Prefix("team-".into())],
        ..Match::default()
    };
    assert!(m.holds(&mtls("team-a", "x")));
    assert!(!m.holds(&mtls("other", "x")));
    // ztunnel matches "" for plaintext, so an Exact("") holds (twin of rbac.rs).
    assert!(ns_is("").holds(&plaintext()));
}

#[test]
fn service_accounts_ignore_the_trust_domain() {
    let m = Match {
        service_accounts: vec![ServiceAccountMatch {
            namespace: "foo".into(),
            service_account: "bar".into(),
        }],
        ..Match::default()
    };
    assert!(m.holds(&mtls("foo", "bar")));
    let other_td = Conn {
        src_identity: Some(SpiffeId::new("example.org", "foo", "bar")),
        ..mtls("foo", "bar")
    };
    assert!(m.holds(&other_td));
    assert!(!m.holds(&mtls("foo", "baz")));
    assert!(!m.holds(&mtls("fo", "bar")));
}

// --- IP and port fields -------------------------------------------------

#[test]
fn cidrs_keep_host_bits_and_match_the_network() {
    let m = Match {
        source_ips: vec![net("127.0.0.1/24")],
        ..Match::default()
    };
    assert!(m.src_ip_holds(ip("127.0.0.4")));
    assert!(!m.src_ip_holds(ip("127.0.1.4")));
}

#[test]
fn ipv4_mapped_addresses_are_canonicalised() {
    let m = Match {
        source_ips: vec![net("10.1.0.0/16")],
        destination_ips: vec![net("10.2.0.5/32")],
        ..Match::default()
    };
    assert!(m.src_ip_holds(ip("::ffff:10.1.2.3")));
    assert!(m.dst_ip_holds(ip("::ffff:10.2.0.5")));
    assert!(!m.dst_ip_holds(ip("::ffff:10.2.0.6")));
    let v6 = Match {
        source_ips: vec![net("::ffff:0:0/96")],
        ..Match::default()
    };
    // Canonicalised to v4, the peer no longer falls in a v6 CIDR.
    assert!(!v6.src_ip_holds(ip("::ffff:10.1.2.3")));
}

#[test]
fn address_families_never_mix() {
    let v4 = Match {
        source_ips: vec![net("0.0.0.0/0")],
        ..Match::default()
    };
    assert!(!v4.src_ip_holds(ip("2001:db8::1")));
    let v6 = Match {
        source_ips: vec![net("::/0")],
        ..Match::default()
    };
    assert!(!v6.src_ip_holds(ip("10.0.0.1")));
    let not_v4 = Match {
        not_source_ips: vec![net("0.0.0.0/0")],
        ..Match::default()
    };
    assert!(not_v4.src_ip_holds(ip("2001:db8::1")));
}

#[test]
fn negative_fields_exclude() {
    let m = Match {
        destination_ports: vec![80, 81],
        not_destination_ports: vec![81],
        not_destination_ips: vec![net("10.0.0.0/8")],
        ..Match::default()
    };
    assert!(m.port_holds(80));
    assert!(!m.port_holds(81));
    assert!(!m.port_holds(82));
    assert!(!m.dst_ip_holds(ip("10.9.9.9")));
    assert!(m.dst_ip_holds(ip("11.0.0.1")));
}

// --- assert_rbac order --------------------------------------------------

#[test]
fn default_allow_without_allow_policies() {
    let deny = policy("deny", Action::Deny, vec![vec![vec![port(81)]]]);
    let e = evaluate(&[&deny], &plaintext());
    assert_eq!(e.verdict, Verdict::Allow(Reason::DefaultAllow));
    assert_eq!(
        evaluate(&[], &plaintext()).verdict,
        Verdict::Allow(Reason::DefaultAllow)
    );
}

#[test]
fn allow_nothing_denies_everything() {
    let p = allow(vec![]);
    let e = evaluate(&[&p], &mtls("a", "b"));
    assert_eq!(e.verdict, Verdict::Deny(Reason::NoAllowMatched));
    assert_eq!(
        e.verdict.to_string(),
        "DENY allow policies exist, but none allowed"
    );
}

#[test]
fn deny_is_evaluated_before_allow() {
    let all = allow(vec![vec![]]);
    let deny = policy("deny", Action::Deny, vec![vec![vec![port(80)]]]);
    let e = evaluate(&[&all, &deny], &plaintext());
    assert_eq!(
        e.verdict,
        Verdict::Deny(Reason::ExplicitDeny(deny.key.clone()))
    );
    assert_eq!(
        e.verdict.reason().to_string(),
        "explicitly denied by: ns/deny"
    );
    let e = evaluate(&[&all, &deny], &on_port(&plaintext(), 81));
    assert_eq!(
        e.verdict,
        Verdict::Allow(Reason::AllowMatched(all.key.clone()))
    );
}

#[test]
fn first_matching_deny_in_order_is_reported() {
    let a = policy("a", Action::Deny, vec![vec![]]);
    let b = policy("b", Action::Deny, vec![vec![]]);
    let e = evaluate(&[&b, &a], &plaintext());
    assert_eq!(e.verdict.reason().policy(), Some(&b.key));
}

#[test]
fn peer_authentication_denies_say_strict_mtls() {
    let strict = Authorization {
        key: PolicyKey::new("istio-system", "istio_converted_static_strict"),
        origin: Origin::PeerAuthentication,
        ..policy(
            "x",
            Action::Deny,
            vec![vec![vec![Match {
                not_principals: vec![StringMatch::Presence],
                ..Match::default()
            }]]],
        )
    };
    let e = evaluate(&[&strict], &plaintext());
    assert_eq!(
        e.verdict.reason().to_string(),
        "explicitly denied by: istio-system/istio_converted_static_strict (STRICT mTLS: plaintext rejected)"
    );
    assert!(evaluate(&[&strict], &mtls("a", "b")).is_allow());
}

#[test]
fn dry_run_policies_are_only_noted() {
    let mut dry_deny = policy("dry-deny", Action::Deny, vec![vec![]]);
    dry_deny.dry_run = true;
    let mut dry_allow = policy("dry-allow", Action::Allow, vec![vec![vec![port(81)]]]);
    dry_allow.dry_run = true;

    let e = evaluate(&[&dry_deny, &dry_allow], &plaintext());
    assert_eq!(e.verdict, Verdict::Allow(Reason::DefaultAllow));
    assert_eq!(
        e.dry_run,
        vec![
            DryRunNote::DenyMatched(dry_deny.key.clone()),
            DryRunNote::NoAllowMatched
        ]
    );

    let e = evaluate(&[&dry_allow], &on_port(&plaintext(), 81));
    assert_eq!(
        e.dry_run,
        vec![DryRunNote::AllowMatched(dry_allow.key.clone())]
    );

    // "would deny" is only noted when no enforced ALLOW exists.
    let enforced = allow(vec![vec![]]);
    let e = evaluate(&[&dry_allow, &enforced], &plaintext());
    assert_eq!(
        e.verdict,
        Verdict::Allow(Reason::AllowMatched(enforced.key.clone()))
    );
    assert!(e.dry_run.is_empty());
}

#[test]
fn enforced_deny_stops_before_dry_run_allows() {
    let mut dry_allow = allow(vec![vec![]]);
    dry_allow.dry_run = true;
    let deny = policy("deny", Action::Deny, vec![vec![]]);
    let e = evaluate(&[&dry_allow, &deny], &plaintext());
    assert!(!e.is_allow());
    assert!(e.dry_run.is_empty());
}

// --- properties ---------------------------------------------------------

fn arb_match() -> impl Strategy<Value = Match> {
    let nets = prop::collection::vec((any::<u32>(), 0u8..=32), 0..2).prop_map(|v| {
        v.into_iter()
            .filter_map(|(a, l)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), l).ok())
            .collect::<Vec<_>>()
    });
    let ports = prop::collection::vec(79u16..83, 0..2);
    let names = prop::collection::vec(
        prop_oneof![Just(exact("a")), Just(StringMatch::Presence)],
        0..2,
    );
    (
        nets.clone(),
        nets,
        ports.clone(),
        ports,
        names.clone(),
        names,
    )
        .prop_map(
            |(
                source_ips,
                not_destination_ips,
                destination_ports,
                not_destination_ports,
                namespaces,
                not_principals,
            )| {
                Match {
                    source_ips,
                    not_destination_ips,
                    destination_ports,
                    not_destination_ports,
                    namespaces,
                    not_principals,
                    ..Match::default()
                }
            },
        )
}

proptest! {
    #[test]
    fn match_is_the_conjunction_of_its_field_groups(
        m in arb_match(),
        src in any::<u32>(),
        dst in any::<u32>(),
        dst_port in 79u16..83,
        tls in any::<bool>(),
    ) {
        let conn = Conn {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            dst_port,
            src_identity: tls.then(|| id("a", "b")),
        };
        let parts = !m.is_empty()
            && m.identity_holds(conn.src_identity.as_ref())
            && m.src_ip_holds(conn.src)
            && m.dst_ip_holds(conn.dst)
            && m.port_holds(conn.dst_port);
        prop_assert_eq!(m.holds(&conn), parts);
    }

    #[test]
    fn ipv4_mapped_peers_match_like_ipv4(m in arb_match(), addr in any::<u32>()) {
        let v4 = Ipv4Addr::from(addr);
        let mapped: Ipv6Addr = v4.to_ipv6_mapped();
        prop_assert_eq!(m.src_ip_holds(IpAddr::V4(v4)), m.src_ip_holds(IpAddr::V6(mapped)));
        prop_assert_eq!(m.dst_ip_holds(IpAddr::V4(v4)), m.dst_ip_holds(IpAddr::V6(mapped)));
    }
}
