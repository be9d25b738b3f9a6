//! The effective-mode table of spec §3.2/§3.3, expressed as verdicts for
//! plaintext and mTLS connections, and the API-correct answers to Q1–Q3.

use super::*;
use crate::{
    config::{MeshConfig, Options},
    identity::SpiffeId,
    policy::{evaluate, Conn, Reason, Verdict},
};

// --- helpers ------------------------------------------------------------

/// A PeerAuthentication. `selector`: `None` for none, else `app: web`.
fn pa(namespace: &str, name: &str, mode: &str, selector: bool, ports: &[(u16, &str)]) -> String {
    let mut spec = String::new();
    if selector {
        spec.push_str("  selector: {matchLabels: {app: web}}\n");
    }
    if !mode.is_empty() {
        spec.push_str(&format!("  mtls: {{mode: {mode}}}\n"));
    }
    if !ports.is_empty() {
        spec.push_str("  portLevelMtls:\n");
        for (port, mode) in ports {
            spec.push_str(&format!("    {port}: {{mode: {mode}}}\n"));
        }
    }
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}---\n"
    )
}

fn mesh_pa(mode: &str) -> String {
    pa("istio-system", "mesh", mode, false, &[])
}

fn ns_pa(mode: &str) -> String {
    pa("app", "ns", mode, false, &[])
}

fn wl_pa(mode: &str, ports: &[(u16, &str)]) -> String {
    pa("app", "wl", mode, true, ports)
}

fn mesh(parts: &[String]) -> MeshConfig {
    let yaml = format!(
        "{}apiVersion: v1\nkind: Namespace\nmetadata: {{name: app}}\n",
        parts.concat()
    );
    MeshConfig::from_str(&yaml, "test.yaml", &Options::default()).unwrap()
}

fn web() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), "web".to_owned())])
}

fn conn(port: u16, tls: bool) -> Conn {
    Conn {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        dst_port: port,
        src_identity: tls.then(|| SpiffeId::new("cluster.local", "other", "client")),
    }
}

/// The ports, among `probe`, on which plaintext to `app/web` is denied.
/// Also checks that mTLS is allowed everywhere.
fn plaintext_denied(m: &MeshConfig) -> Vec<u16> {
    let policies = m.policies_for("app", &web());
    let refs: Vec<&Authorization> = policies.iter().map(AsRef::as_ref).collect();
    let probe = [80, 8080, 9090];
    for port in probe {
        assert!(
            evaluate(&refs, &conn(port, true)).is_allow(),
            "mTLS to {port} denied"
        );
    }
    probe
        .into_iter()
        .filter(|&port| !evaluate(&refs, &conn(port, false)).is_allow())
        .collect()
}

fn synthetic(m: &MeshConfig) -> Option<Authorization> {
    m.peer_authentication_for("app", &web())
        .authorization("istio-system", &web())
}

const ALL: [u16; 3] = [80, 8080, 9090];

// --- no policy, mesh and namespace level --------------------------------

#[test]
fn no_peer_authentication_accepts_plaintext() {
    let m = mesh(&[]);
    assert_eq!(plaintext_denied(&m), Vec::<u16>::new());
    assert_eq!(synthetic(&m), None);
}

#[test]
fn mesh_strict_uses_the_static_policy() {
    let m = mesh(&[mesh_pa("STRICT")]);
    assert_eq!(plaintext_denied(&m), ALL);
    let a = synthetic(&m).unwrap();
    assert_eq!(a.key, PolicyKey::new("istio-system", STATIC_STRICT_NAME));
    assert_eq!(
        a.rules,
        vec![vec![vec![Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }]]]
    );
    let e = evaluate(&[&a], &conn(80, false));
    assert_eq!(
        e.verdict.reason().to_string(),
        "explicitly denied by: istio-system/istio_converted_static_strict (STRICT mTLS: plaintext rejected)"
    );
}

#[test]
fn levels_override_and_unset_inherits() {
    let cases: [(&[String], &[u16]); 9] = [
        (&[mesh_pa("PERMISSIVE")], &[]),
        (&[mesh_pa("UNSET")], &[]),
        (&[mesh_pa("STRICT"), ns_pa("UNSET")], &ALL),
        (&[mesh_pa("STRICT"), ns_pa("PERMISSIVE")], &[]),
        // DISABLE cannot turn mTLS off; it only accepts plaintext like PERMISSIVE.
        (&[mesh_pa("STRICT"), ns_pa("DISABLE")], &[]),
        (&[mesh_pa("PERMISSIVE"), ns_pa("STRICT")], &ALL),
        (&[ns_pa("STRICT"), wl_pa("PERMISSIVE", &[])], &[]),
        (&[ns_pa("STRICT"), wl_pa("", &[])], &ALL),
        (&[mesh_pa("PERMISSIVE"), wl_pa("STRICT", &[])], &ALL),
    ];
    for (parts, denied) in cases {
        assert_eq!(plaintext_denied(&mesh(parts)), denied, "{}", parts.concat());
    }
}

#[test]
fn selector_must_match_and_root_selectors_are_ignored() {
    let other = pa("app", "other", "STRICT", false, &[])
        .replace("mtls", "selector: {matchLabels: {app: db}}\n  mtls");
    assert_eq!(plaintext_denied(&mesh(&[other])), Vec::<u16>::new());
    let root_selector = pa("istio-system", "root-sel", "STRICT", true, &[]);
    assert_eq!(plaintext_denied(&mesh(&[root_selector])), Vec::<u16>::new());
    // `selector: {}` is namespace-wide.
    let empty = pa("app", "empty", "STRICT", false, &[]).replace("mtls", "selector: {}\n  mtls");
    assert_eq!(plaintext_denied(&mesh(&[empty])), ALL);
    // Other namespaces' namespace-wide policies do not apply.
    assert_eq!(
        plaintext_denied(&mesh(&[pa("other", "ns", "STRICT", false, &[])])),
        Vec::<u16>::new()
    );
}

#[test]
fn oldest_wins_within_a_level() {
    let with_ts = |name: &str, mode: &str, ts: Option<&str>| {
        let doc = pa("app", name, mode, false, &[]);
        match ts {
            Some(ts) => doc.replace(
                "namespace: app}",
                &format!("namespace: app, creationTimestamp: \"{ts}\"}}"),
            ),
            None => doc,
        }
    };
    let m = mesh(&[
        with_ts("b-newer", "PERMISSIVE", Some("2024-05-01T00:00:00Z")),
        with_ts("c-older", "STRICT", Some("2024-01-01T00:00:00Z")),
        with_ts("a-no-time", "PERMISSIVE", None),
    ]);
    assert_eq!(plaintext_denied(&m), ALL);
    let eff = m.peer_authentication_for("app", &web());
    assert_eq!(eff.namespace, Some(PolicyKey::new("app", "c-older")));
    // Without timestamps, the name decides.
    let m = mesh(&[
        with_ts("b", "PERMISSIVE", None),
        with_ts("a", "STRICT", None),
    ]);
    assert_eq!(plaintext_denied(&m), ALL);
}

// --- portLevelMtls: istiod's goldens (spec §3.3) ------------------------

#[test]
fn workload_strict_with_permissive_port() {
    for port_mode in ["PERMISSIVE", "DISABLE"] {
        let m = mesh(&[wl_pa("STRICT", &[(9090, port_mode)])]);
        assert_eq!(plaintext_denied(&m), [80, 8080]);
        let a = synthetic(&m).unwrap();
        assert_eq!(
            a.key,
            PolicyKey::new("app", "converted_peer_authentication_wl")
        );
        let np = Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        };
        let not_port = Match {
            not_destination_ports: vec![9090],
            ..Match::default()
        };
        assert_eq!(a.rules, vec![vec![vec![np], vec![not_port]]]);
    }
}

#[test]
fn port_table_goldens() {
    let cases: [(&[String], &[u16]); 9] = [
        (
            &[wl_pa("STRICT", &[(9090, "STRICT"), (8080, "PERMISSIVE")])],
            &[80, 9090],
        ),
        (&[wl_pa("STRICT", &[(8080, "STRICT")])], &ALL),
        (
            &[wl_pa(
                "PERMISSIVE",
                &[(9090, "STRICT"), (8080, "PERMISSIVE")],
            )],
            &[9090],
        ),
        (&[wl_pa("DISABLE", &[(9090, "STRICT")])], &[9090]),
        (&[wl_pa("", &[(8080, "STRICT")])], &[8080]),
        (
            &[
                mesh_pa("STRICT"),
                wl_pa("", &[(9090, "PERMISSIVE"), (8080, "STRICT")]),
            ],
            &[80, 8080],
        ),
        (
            &[
                mesh_pa("PERMISSIVE"),
                ns_pa("STRICT"),
                wl_pa("", &[(9090, "PERMISSIVE")]),
            ],
            &[80, 8080],
        ),
        (
            &[
                mesh_pa("STRICT"),
                ns_pa("PERMISSIVE"),
                wl_pa("", &[(9090, "STRICT")]),
            ],
            &[9090],
        ),
        (
            &[
                mesh_pa("PERMISSIVE"),
                ns_pa("PERMISSIVE"),
                wl_pa("", &[(8080, "STRICT"), (9090, "STRICT")]),
            ],
            &[8080, 9090],
        ),
    ];
    for (parts, denied) in cases {
        assert_eq!(plaintext_denied(&mesh(parts)), denied, "{}", parts.concat());
    }
    let more: [(&[String], &[u16]); 3] = [
        (
            &[
                mesh_pa("PERMISSIVE"),
                ns_pa(""),
                wl_pa("", &[(9090, "STRICT"), (8080, "PERMISSIVE")]),
            ],
            &[9090],
        ),
        (
            &[mesh_pa("PERMISSIVE"), wl_pa("", &[(9090, "PERMISSIVE")])],
            &[],
        ),
        (&[mesh_pa("STRICT"), wl_pa("", &[(9090, "UNSET")])], &ALL),
    ];
    for (parts, denied) in more {
        assert_eq!(plaintext_denied(&mesh(parts)), denied, "{}", parts.concat());
    }
}

#[test]
fn not_strict_with_strict_ports_is_one_match() {
    let m = mesh(&[wl_pa("PERMISSIVE", &[(8080, "STRICT"), (9090, "STRICT")])]);
    let a = synthetic(&m).unwrap();
    assert_eq!(
        a.rules,
        vec![vec![vec![Match {
            not_principals: vec![StringMatch::Presence],
            destination_ports: vec![8080, 9090],
            ..Match::default()
        }]]]
    );
    assert_eq!(a.key.name, "converted_peer_authentication_wl");
}

#[test]
fn port_level_needs_a_selector() {
    let ns_with_ports = pa("app", "ns", "PERMISSIVE", false, &[(9090, "STRICT")]);
    assert_eq!(plaintext_denied(&mesh(&[ns_with_ports])), Vec::<u16>::new());
}

// --- upstream bugs (spec §3.4): zgate answers as the API says -----------

/// Q1: mesh STRICT, workload PERMISSIVE with 9090 STRICT. Upstream allows
/// plaintext to 9090; the port-level STRICT must deny it.
#[test]
fn q1_strict_port_under_permissive_workload_is_strict() {
    let m = mesh(&[mesh_pa("STRICT"), wl_pa("PERMISSIVE", &[(9090, "STRICT")])]);
    assert_eq!(plaintext_denied(&m), [9090]);
}

/// Q2: mesh STRICT, namespace PA with mode unset, workload unset with 9090
/// PERMISSIVE. Upstream allows plaintext everywhere; only 9090 should.
#[test]
fn q2_unset_namespace_keeps_mesh_strict() {
    let m = mesh(&[
        mesh_pa("STRICT"),
        ns_pa(""),
        wl_pa("", &[(9090, "PERMISSIVE")]),
    ]);
    assert_eq!(plaintext_denied(&m), [80, 8080]);
}

/// Q3: mesh STRICT, workload unset with 9090 DISABLE. Upstream keeps denying
/// 9090; DISABLE behaves like PERMISSIVE, so 9090 accepts plaintext.
#[test]
fn q3_disable_port_is_like_permissive() {
    let m = mesh(&[mesh_pa("STRICT"), wl_pa("", &[(9090, "DISABLE")])]);
    assert_eq!(plaintext_denied(&m), [80, 8080]);
    let permissive = mesh(&[mesh_pa("STRICT"), wl_pa("", &[(9090, "PERMISSIVE")])]);
    assert_eq!(plaintext_denied(&permissive), [80, 8080]);
}

#[test]
fn strict_on_matches_the_synthetic_policy() {
    let m = mesh(&[mesh_pa("STRICT"), wl_pa("", &[(9090, "PERMISSIVE")])]);
    let eff = m.peer_authentication_for("app", &web());
    assert!(eff.strict_on(80));
    assert!(!eff.strict_on(9090));
    let a = eff.authorization("istio-system", &web()).unwrap();
    let e = evaluate(&[&a], &conn(80, false));
    assert!(
        matches!(e.verdict, Verdict::Deny(Reason::ExplicitDeny(ref k)) if k.is_peer_authentication())
    );
}
