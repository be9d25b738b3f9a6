//! Two nodes, each a network namespace with its own agent, joined by a veth
//! pair: workloads reach workloads on the other node over HBONE (mTLS),
//! captured at `connect()` with no iptables, and the destination node's
//! kernel decides each tunneled connection with the mTLS identity.
//!
//! Node A (`10.99.9.1`) runs `sleep` (`10.99.9.10`); node B (`10.99.9.2`)
//! runs `httpbin` (`10.99.9.20`). Both agents get the same WorkloadEntries
//! and policies, and one root CA.

use crate::harness::{self, Node, Outcome};

const NET: &str = "10.99.9";
const HTTPBIN: &str = "10.99.9.20:8000";
const LABELS: [&str; 1] = ["app=httpbin"];

/// The inventory: `sleep` on node A, `httpbin` on node B.
const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: ambient-demo}
spec: {address: 10.99.9.10, serviceAccount: sleep, labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin, namespace: ambient-demo}
spec: {address: 10.99.9.20, serviceAccount: httpbin, labels: {app: httpbin}}
"#;

const ALLOW_SLEEP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep-to-httpbin, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}
"#;

fn mesh(test: &str, files: &[(&str, &str)], args: &[&str]) -> (Node, Node) {
    let mut all = vec![("workloads.yaml", WORKLOADS)];
    all.extend_from_slice(files);
    Node::pair(test, NET, (&[10], &[20]), &all, args)
}

/// Istio's L4 policy example across nodes: `sleep` on A reaches `httpbin`
/// on B through HBONE, with real certificates; another service account is
/// refused by B's policy (401, so A resets the client's connection); the
/// wire between the nodes carries only mTLS on port 15008.
#[test]
fn hbone_carries_allowed_and_resets_denied() {
    let (a, b) = mesh("hbone_allow", &[("policy.yaml", ALLOW_SLEEP)], &[]);
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let (ports, plaintext) = b.sniff("mesh0", "hello", || {
        assert_eq!(
            a.connect_as("ambient-demo", "sleep", HTTPBIN),
            Outcome::Connected,
            "A:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
    });
    assert!(ports.get(&15008).is_some_and(|n| *n > 0), "{ports:?}");
    assert_eq!(ports.get(&8000), None, "plaintext on the wire: {ports:?}");
    assert_eq!(plaintext, 0, "the greeting crossed the wire in clear");

    assert_eq!(
        a.connect_as("ambient-demo", "notsleep", HTTPBIN),
        Outcome::Reset,
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // The denial's own line (B's "new peer identity" line, logged before
    // the connection was even tried, names the identity too).
    let denied = "src.identity=spiffe://cluster.local/ns/ambient-demo/sa/notsleep";
    b.wait_log(denied, 0);
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains(denied) && l.contains("hook=\"accept\"")),
        "{log}"
    );
    a.wait_log("refused by the destination's policy", 0);
    // Plaintext from outside the mesh, straight to the workload's address.
    assert_eq!(a.connect_plaintext(HTTPBIN), Outcome::Refused);
    // Certificates are issued only for workloads enrolled on the node.
    let issued = |id: &str| {
        format!("issued a certificate identity=spiffe://cluster.local/ns/ambient-demo/sa/{id}")
    };
    assert!(a.log().contains(&issued("sleep")), "{}", a.log());
    assert!(!a.log().contains(&issued("httpbin")), "{}", a.log());
    assert!(b.log().contains(&issued("httpbin")), "{}", b.log());
    assert!(!b.log().contains(&issued("sleep")), "{}", b.log());
}

/// PeerAuthentication across nodes: STRICT refuses a plaintext client
/// connecting straight to the workload's address while mTLS (HBONE) gets
/// through; PERMISSIVE lets plaintext in; a port-level PERMISSIVE opens
/// that port only; DISABLE behaves as PERMISSIVE.
#[test]
fn peer_authentication_across_nodes() {
    let pa = |spec: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: mtls, namespace: ambient-demo}}\nspec:\n{spec}"
        )
    };
    let strict = pa("  mtls: {mode: STRICT}\n");
    let (a, b) = mesh("peer_auth", &[("pa.yaml", &strict)], &[]);
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let _other_port = b.server("ambient-demo", "httpbin", &LABELS, "10.99.9.20:8001");
    assert_eq!(a.connect_plaintext(HTTPBIN), Outcome::Refused);
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", HTTPBIN),
        Outcome::Connected,
        "B:\n{}",
        b.log()
    );

    let apply = |yaml: &str| {
        let before = b.log().matches("policy applied").count();
        b.write_config("pa.yaml", yaml);
        b.wait_log("policy applied", before);
    };
    apply(&pa("  mtls: {mode: PERMISSIVE}\n"));
    assert_eq!(a.connect_plaintext(HTTPBIN), Outcome::Connected);

    apply(&pa(
        "  selector: {matchLabels: {app: httpbin}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8001: {mode: PERMISSIVE}\n",
    ));
    assert_eq!(a.connect_plaintext(HTTPBIN), Outcome::Refused);
    assert_eq!(a.connect_plaintext("10.99.9.20:8001"), Outcome::Connected);

    apply(&pa("  mtls: {mode: DISABLE}\n"));
    assert_eq!(a.connect_plaintext(HTTPBIN), Outcome::Connected);
}

/// Certificates rotate (here every second or so: `--svid-ttl 62s` renews
/// half-way through a lifetime that starts a minute back) without
/// dropping a long-lived tunneled connection; new connections keep
/// working with the new certificates.
#[test]
fn rotation_keeps_tunneled_connections() {
    let (a, b) = mesh(
        "rotation",
        &[("policy.yaml", ALLOW_SLEEP)],
        &["--svid-ttl", "62s"],
    );
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let mut held = a.hold_as("ambient-demo", "sleep", HTTPBIN, 6);
    let (end, _) = held.end();
    assert_eq!(end, "held", "A:\n{}\nB:\n{}", a.log(), b.log());
    for node in [&a, &b] {
        let rotations = node.log().matches("rotated the certificate").count();
        assert!(rotations >= 3, "{rotations} rotations:\n{}", node.log());
    }
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", HTTPBIN),
        Outcome::Connected
    );
}

/// Churn: hundreds of tunneled connections (allowed and denied) leave no
/// entry behind in either node's connection maps.
#[test]
fn tunneled_connections_leave_no_entries() {
    let (a, b) = mesh("churn", &[("policy.yaml", ALLOW_SLEEP)], &[]);
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let bench = |sa: &str| {
        let mut c = a.workload("ambient-demo", sa, &[]);
        c.arg(harness::probe_bin()).args(["bench", HTTPBIN, "300"]);
        let out = harness::run_ok(&mut c);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(bench("sleep").starts_with("rate "), "A:\n{}", a.log());
    // Each of these is refused by B (401) and reset by A.
    bench("notsleep");
    // The deny log is rate-limited; the kernel's counters are not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // B's accept side takes these verdicts: the agent delivers them.
    while b.verdicts(
        zgate_common::policy::REASON_NO_ALLOW_MATCHED,
        zgate_common::event::HOOK_ACCEPT,
    ) < 300
    {
        assert!(std::time::Instant::now() < deadline, "B:\n{}", b.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (a.connection_entries(), b.connection_entries());
        if on_a == (0, 0) && on_b == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: A {on_a:?}, B {on_b:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A killed agent's relayed connections die with it; the next agent
/// forgets their peer entries, so no later connection reusing a 5-tuple
/// inherits an authenticated identity, and tunnels work again.
#[test]
fn restarted_agent_forgets_relayed_peers() {
    let (a, mut b) = mesh("restart", &[("policy.yaml", ALLOW_SLEEP)], &[]);
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let held = a.hold_as("ambient-demo", "sleep", HTTPBIN, 10);
    assert_eq!(b.connection_entries().1, 1, "the relayed connection's peer");
    b.stop_agent(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(b.connection_entries().1, 1, "left by the killed agent");
    drop(held);
    b.spawn_agent();
    assert_eq!(b.connection_entries(), (0, 0));
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", HTTPBIN),
        Outcome::Connected,
        "B:\n{}",
        b.log()
    );
}

/// A policy update on the destination's node closes the tunneled
/// connections it no longer allows, as it does for local ones.
#[test]
fn policy_update_closes_denied_tunneled_connections() {
    let (a, b) = mesh("revoke", &[("policy.yaml", ALLOW_SLEEP)], &[]);
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, HTTPBIN);
    let mut held = a.hold_as("ambient-demo", "sleep", HTTPBIN, 10);
    let before = b.log().matches("policy applied").count();
    b.write_config("policy.yaml", &ALLOW_SLEEP.replace("sa/sleep", "sa/other"));
    b.wait_log("policy applied", before);
    let (end, after) = held.end();
    assert!(end == "reset" || end == "closed", "{end}:\n{}", b.log());
    assert!(after < std::time::Duration::from_secs(5), "{after:?}");
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", HTTPBIN),
        Outcome::Reset
    );
}

/// The same over IPv6: `connect6` captures (to the v4 outbound listener,
/// by its v4-mapped address), HBONE runs over IPv6 between the nodes.
#[test]
fn hbone_over_ipv6() {
    let workloads = WORKLOADS
        .replace("10.99.9.10", "\"fd00:99::10\"")
        .replace("10.99.9.20", "\"fd00:99::20\"");
    let (a, b) = Node::pair(
        "hbone_v6",
        NET,
        (&[], &[]),
        &[("workloads.yaml", &workloads), ("policy.yaml", ALLOW_SLEEP)],
        &["--hbone-addr", "[::]:15008"],
    );
    for (node, addrs) in [
        (&a, ["fd00:99::1", "fd00:99::10"]),
        (&b, ["fd00:99::2", "fd00:99::20"]),
    ] {
        for addr in addrs {
            harness::run_ok(std::process::Command::new("ip").args([
                "-n",
                &node.netns,
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "mesh0",
                "nodad",
            ]));
        }
    }
    let httpbin = "[fd00:99::20]:8000";
    let _httpbin = b.server("ambient-demo", "httpbin", &LABELS, httpbin);
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", httpbin),
        Outcome::Connected,
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(
        a.connect_as("ambient-demo", "notsleep", httpbin),
        Outcome::Reset
    );
    assert_eq!(a.connect_plaintext(httpbin), Outcome::Refused);
}

/// `zgate run --address` names a workload's address when no WorkloadEntry
/// of its name has one: the node serves HBONE for it with its identity.
#[test]
fn run_address_names_the_workload_address() {
    use std::{
        io::{BufRead as _, BufReader},
        os::unix::process::CommandExt as _,
        process::Stdio,
    };
    let (a, b) = mesh("run_address", &[("policy.yaml", ALLOW_SLEEP)], &[]);
    let mut c = b.command(harness::zgate_bin());
    c.args([
        "run",
        "--namespace",
        "ambient-demo",
        "--service-account",
        "httpbin",
    ])
    .args([
        "--name",
        "web",
        "--label",
        "app=httpbin",
        "--address",
        "10.99.9.20",
    ])
    .arg("--admin-socket")
    .arg(b.admin_socket())
    .arg("--")
    .arg(harness::probe_bin())
    .args(["serve", HTTPBIN])
    .process_group(0)
    .stdout(Stdio::piped());
    let mut child = c.spawn().expect("starting the server workload");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let _web = harness::Server(child);
    assert_eq!(line.trim(), "listening", "{}", b.log());
    assert_eq!(
        a.connect_as("ambient-demo", "sleep", HTTPBIN),
        Outcome::Connected,
        "B:\n{}",
        b.log()
    );
}
