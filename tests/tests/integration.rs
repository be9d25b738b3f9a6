//! Privileged integration tests: the real agent loads the real programs into
//! the running kernel; workloads are real processes in real cgroups, talking
//! over real sockets. Run by `cargo xtask test` (as root).

mod faults;
mod harness;
mod multinode;
mod node_security;
mod soak;

use harness::{probe_bin, run_ok, spawn_lines, Node, Outcome, Server};
use nix::sys::signal::Signal;
use std::net::SocketAddr;

use zgate_common::{
    conn::{conn_slot, ConnKey, CONN_SLOTS},
    event::{HOOK_ACCEPT, HOOK_CONNECT},
    policy::{REASON_ALLOW_MATCHED, REASON_NO_ALLOW_MATCHED},
};

const DEMO: &str = zgate::config::DEMO_CONFIG;
const HTTPBIN: [&str; 1] = ["app=httpbin"];
const ADDR: &str = "127.0.0.1:8000";

/// `allow-sleep-to-httpbin` holds for `httpbin` on `addr`: `sleep` reaches
/// it, another service account is refused at `connect()`, plaintext at
/// SYN time.
fn assert_demo_enforced(node: &Node, addr: &str) {
    assert_eq!(node.connect_plaintext(addr), Outcome::Refused);
    assert_eq!(
        node.connect_as("ambient-demo", "other", addr),
        Outcome::NotPermitted
    );
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", addr),
        Outcome::Connected
    );
}

/// Istio's L4 policy page: with `allow-sleep-to-httpbin`, `sleep` reaches
/// `httpbin`; another service account is refused at `connect()`; plaintext
/// from outside the mesh is refused at SYN time.
#[test]
fn allow_sleep_to_httpbin() {
    let node = Node::start("allow_sleep_to_httpbin", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    node.wait_log("allow policies exist, but none allowed", 1);
    let log = node.log();
    assert!(log.contains("dst.workload=ambient-demo/httpbin"), "{log}");
    assert!(
        log.contains("src.identity=spiffe://cluster.local/ns/ambient-demo/sa/notsleep"),
        "{log}"
    );
    // The kernel counted each verdict once, at the hook that took it: the
    // accept side honoured the allow `connect()` took between workloads on
    // this node, and decided the plaintext connection itself.
    let counts = node.verdict_counts();
    let count = |reason: u8, hook: u8| node.verdicts(reason, hook);
    assert_eq!(count(REASON_ALLOW_MATCHED, HOOK_CONNECT), 1, "{counts:?}");
    assert_eq!(count(REASON_ALLOW_MATCHED, HOOK_ACCEPT), 0, "{counts:?}");
    assert_eq!(
        count(REASON_NO_ALLOW_MATCHED, HOOK_CONNECT),
        1,
        "{counts:?}"
    );
    assert_eq!(count(REASON_NO_ALLOW_MATCHED, HOOK_ACCEPT), 1, "{counts:?}");
}

/// `sk_lookup` runs for any segment that finds no socket, not only for
/// SYNs. A connection's trailing segment arriving after both its sockets
/// are gone is not reported as a plaintext connection (its 5-tuple is
/// noted as closed: `zgate_common::conn`); the same segment on a 5-tuple
/// no connection had is judged and reported, as plaintext.
#[test]
fn trailing_segments_of_a_closed_connection_are_not_reported() {
    let node = Node::start("trailing_segments", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let mut reset = node.workload("ambient-demo", "sleep", &[]);
    reset.arg(probe_bin()).args(["reset", ADDR]);
    let out = String::from_utf8_lossy(&run_ok(&mut reset).stdout).into_owned();
    let port: u16 = out
        .trim()
        .strip_prefix("reset ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("reset: {out}\n{}", node.log()));
    node.send_segment(ADDR, port);
    let unused = if port == 40_000 { 40_001 } else { 40_000 };
    node.send_segment(ADDR, unused);
    // Events arrive in order: once the second is logged, the first would be.
    node.wait_log(&format!("src.addr=127.0.0.1:{unused} "), 0);
    let log = node.log();
    assert!(
        !log.contains(&format!("src.addr=127.0.0.1:{port} ")),
        "{log}"
    );
    let counts = node.verdict_counts();
    assert_eq!(
        node.verdicts(REASON_ALLOW_MATCHED, HOOK_CONNECT),
        1,
        "{counts:?}"
    );
    assert_eq!(
        node.verdicts(REASON_NO_ALLOW_MATCHED, HOOK_ACCEPT),
        1,
        "{counts:?}"
    );
}

/// The same over IPv6.
#[test]
fn allow_sleep_to_httpbin_ipv6() {
    let node = Node::start("allow_sleep_to_httpbin_ipv6", &[("demo.yaml", DEMO)]);
    let addr = "[::1]:8000";
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, addr);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", addr),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", addr),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(addr), Outcome::Refused);
}

/// With no policy, everything is allowed.
#[test]
fn no_policy_allows_everything() {
    let node = Node::start("no_policy_allows_everything", &[]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Connected);
}

/// Adding `methods: ["GET"]` makes the rule L7: ztunnel drops the rule, and
/// the remaining ALLOW policy allows nothing, so `sleep` is refused too.
#[test]
fn l7_rule_is_dropped_and_the_workload_denies() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep-to-httpbin, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}
    to:
    - operation: {methods: [GET]}
"#;
    let node = Node::start("l7_rule", &[("policy.yaml", policy)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
}

/// DENY is evaluated before ALLOW; `namespaces` matches the source's
/// namespace; plaintext has no namespace.
#[test]
fn deny_beats_allow_and_namespaces_match() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-namespace, namespace: ambient-demo}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [ambient-demo]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: ambient-demo}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/bad]}
"#;
    let node = Node::start("deny_beats_allow", &[("policy.yaml", policy)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "good", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "bad", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(
        node.connect_as("elsewhere", "good", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    node.wait_log("explicitly denied by: ambient-demo/deny-bad", 0);
}

/// `notPrincipals` is true for plaintext; `ports` scopes the rule to one
/// port, and policy applies to whatever the workload listens on.
#[test]
fn not_principals_and_ports() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep-on-8001, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: [cluster.local/ns/ambient-demo/sa/sleep]}
    to:
    - operation: {ports: ["8001"]}
"#;
    let node = Node::start("not_principals_and_ports", &[("policy.yaml", policy)]);
    let _a = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let _b = node.server("ambient-demo", "httpbin", &HTTPBIN, "127.0.0.1:8001");
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::Connected
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Connected);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", "127.0.0.1:8001"),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "other", "127.0.0.1:8001"),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext("127.0.0.1:8001"), Outcome::Refused);
}

/// `notPorts`: an ALLOW for every port but one.
#[test]
fn not_ports() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all-but-8001, namespace: ambient-demo}
spec:
  action: ALLOW
  rules:
  - to:
    - operation: {notPorts: ["8001"]}
"#;
    let node = Node::start("not_ports", &[("policy.yaml", policy)]);
    let _a = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let _b = node.server("ambient-demo", "httpbin", &HTTPBIN, "127.0.0.1:8001");
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Connected);
    assert_eq!(node.connect_as("x", "y", ADDR), Outcome::Connected);
    assert_eq!(
        node.connect_as("x", "y", "127.0.0.1:8001"),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext("127.0.0.1:8001"), Outcome::Refused);
}

/// A policy in the root namespace without a selector applies mesh-wide.
#[test]
fn root_namespace_policy_is_global() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-quarantine, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: [quarantine]}
"#;
    let node = Node::start("root_namespace_policy", &[("policy.yaml", policy)]);
    let _a = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let _b = node.server("other", "web", &["app=web"], "127.0.0.1:9000");
    for addr in [ADDR, "127.0.0.1:9000"] {
        assert_eq!(
            node.connect_as("quarantine", "x", addr),
            Outcome::NotPermitted
        );
        assert_eq!(
            node.connect_as("ambient-demo", "x", addr),
            Outcome::Connected
        );
    }
    node.wait_log("explicitly denied by: istio-system/deny-quarantine", 0);
}

/// `istio.io/dry-run`: evaluated and logged, never enforced.
#[test]
fn dry_run_is_logged_not_enforced() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-sleep
  namespace: ambient-demo
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}
"#;
    let node = Node::start("dry_run", &[("policy.yaml", policy)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );
    node.wait_log("dry-run: deny policy match", 0);
    assert!(
        node.log().contains("policy=ambient-demo/would-deny-sleep"),
        "{}",
        node.log()
    );
}

/// The config directory is watched: a new policy applies without a
/// restart; a bad file leaves the last good policy enforced; fixing it
/// applies it.
#[test]
fn config_changes_apply_and_bad_files_keep_the_last_good_policy() {
    let node = Node::start("config_changes", &[]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::Connected
    );

    let applied = node.log().matches("policy applied").count();
    node.write_config("demo.yaml", DEMO);
    node.wait_log("policy applied", applied);
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::NotPermitted
    );

    node.write_config(
        "broken.yaml",
        "kind: AuthorizationPolicy\nspec: [not, a, map\n",
    );
    node.wait_log("config not applied", 0);
    assert!(node.log().contains("broken.yaml"), "{}", node.log());
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );

    let applied = node.log().matches("policy applied").count();
    std::fs::remove_file(node.config_dir.join("broken.yaml")).expect("removing the bad file");
    node.wait_log("policy applied", applied);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );

    // SIGHUP reloads too.
    let applied = node.log().matches("policy applied").count();
    node.signal_agent(Signal::SIGHUP);
    node.wait_log("policy applied", applied);
}

/// Fail-static: an agent killed with SIGKILL leaves the last policy
/// enforced by the kernel; a restarted agent adopts the pinned programs and
/// the enrolled workloads instead of attaching twice.
#[test]
fn killed_agent_keeps_enforcing_and_restart_adopts() {
    let mut node = Node::start("killed_agent", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);

    node.stop_agent(Signal::SIGKILL);
    assert_eq!(
        node.connect_plaintext(ADDR),
        Outcome::Refused,
        "enforcement survives the agent"
    );

    let before = node.log().len();
    node.spawn_agent();
    let log = node.log();
    let restarted = &log[before..];
    assert_eq!(restarted.matches("adopted program").count(), 7, "{log}");
    assert!(!restarted.contains("attached program"), "{log}");
    assert!(restarted.contains("adopted workload"), "{log}");
    let links = std::fs::read_dir(
        node.bpffs_dir()
            .join(format!("v{}/links", zgate_common::ABI_VERSION)),
    )
    .expect("pinned links");
    assert_eq!(links.count(), 7);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
}

/// An agent of another version left its programs pinned (an upgrade): the
/// new agent detaches them and removes their maps, so they cannot go on
/// vetoing connections with the policy frozen in their maps.
#[test]
fn restart_retires_the_pins_of_another_version() {
    let mut node = Node::start("other_version", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    node.stop_agent(Signal::SIGKILL);
    // What an agent of another ABI version leaves: its links and maps,
    // pinned under its own version directory, still enforcing.
    let ours = node
        .bpffs_dir()
        .join(format!("v{}", zgate_common::ABI_VERSION));
    let theirs = node
        .bpffs_dir()
        .join(format!("v{}", zgate_common::ABI_VERSION + 1));
    std::fs::rename(&ours, &theirs).expect("moving the pins");
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    node.write_config(
        "demo.yaml",
        &DEMO.replace(
            "        - cluster.local/ns/ambient-demo/sa/sleep",
            "        - cluster.local/ns/ambient-demo/sa/sleep\n        - cluster.local/ns/ambient-demo/sa/notsleep",
        ),
    );
    node.spawn_agent();
    assert!(!theirs.exists(), "the other version's pins are left");
    node.wait_log("an agent of another version pinned", 0);
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
}

/// Ctrl-C detaches every program and removes every pin and cgroup.
#[test]
fn interrupt_detaches_everything() {
    let mut node = Node::start("interrupt", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    node.stop_agent(Signal::SIGINT);
    assert!(!node.bpffs_dir().exists(), "pins left behind");
    assert!(!node.cgroup_root().exists(), "cgroup left behind");
    assert_eq!(
        node.connect_plaintext(ADDR),
        Outcome::Connected,
        "nothing enforces any more"
    );
}

/// A policy update re-decides established connections: one the new policy
/// denies is torn down at once (the client sees a reset), one it still
/// allows stays open.
#[test]
fn policy_update_closes_denied_connections_only() {
    let node = Node::start("policy_update_revokes", &[]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let mut sleep = node.hold_as("ambient-demo", "sleep", ADDR, 3);
    let mut other = node.hold_as("ambient-demo", "other", ADDR, 3);

    let applied = node.log().matches("policy applied").count();
    node.write_config("demo.yaml", DEMO);
    node.wait_log("policy applied", applied);
    let (ended, after) = other.end();
    // The server's socket is destroyed; the client sees the RST (or, if the
    // server's read noticed first and closed, the end of the stream).
    assert!(
        ended == "reset" || ended == "closed",
        "{ended}: {}",
        node.log()
    );
    eprintln!("denied connection closed {after:?} after the policy was applied");
    node.wait_log("no longer allowed after a policy update", 0);
    assert_eq!(sleep.end().0, "held", "the allowed connection stays open");
}

/// `ipBlocks` match the source address: a host on another network
/// namespace connects from an allowed and from another address.
#[test]
fn ip_blocks_match_the_source_address() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-from-host, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source: {ipBlocks: [10.99.7.2/32]}
"#;
    let node = Node::start("ip_blocks", &[("policy.yaml", policy)]);
    let host = node.peer_host("10.99.7");
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, "0.0.0.0:8000");
    assert_eq!(
        host.connect_from("10.99.7.2", "10.99.7.1:8000"),
        Outcome::Connected
    );
    assert_eq!(
        host.connect_from("10.99.7.3", "10.99.7.1:8000"),
        Outcome::Refused
    );
    // A local workload's source address is 127.0.0.1: not in the block.
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Refused
    );
}

/// A server's `SO_REUSEPORT` listeners share one address: closing one (a
/// worker restarting) leaves the address enforced for the others, where
/// the entry once went with the first to close and the port was open to
/// anyone.
#[test]
fn an_address_stays_enforced_while_any_of_its_reuseport_listeners_is_open() {
    let node = Node::start("reuseport", &[("demo.yaml", DEMO)]);
    let mut probe = node.workload("ambient-demo", "httpbin", &HTTPBIN);
    probe.arg(probe_bin());
    let httpbin = Server::start(probe, "reuse", ADDR)
        .unwrap_or_else(|line| panic!("server on {ADDR}: {line}\n{}", node.log()));
    assert_demo_enforced(&node, ADDR);
    assert_eq!(node.map_entries("listeners"), 1);
    // The last one closed, the address goes.
    drop(httpbin);
    node.wait_for(10, |n| n.map_entries("listeners") == 0);
}

/// A socket that listens without binding first gets a port `listen()`
/// picks, which no `post_bind` saw: the kernel enters it for an owner the
/// agent then names from the socket's cgroup, and the workload's policy
/// applies to it, where the port was once open to anyone. With no agent
/// to name it, connections to it are refused; a restarted agent names it.
#[test]
fn a_port_listen_picked_is_enforced_as_its_workloads() {
    const NAMED: &str = "named the workload listening on a port listen() picked";
    let mut node = Node::start("listen_unbound", &[("demo.yaml", DEMO)]);
    // Enrolled and started (its first line), then it listens once `go`
    // exists.
    let unbound = |node: &Node, go: &std::path::Path| {
        let mut probe = node.workload("ambient-demo", "httpbin", &HTTPBIN);
        probe.args([
            "sh",
            "-c",
            &format!(
                "echo started; while [ ! -e {} ]; do sleep 0.01; done; exec {} unbound",
                go.display(),
                probe_bin().display()
            ),
        ]);
        let mut server = spawn_lines(probe);
        assert_eq!(server.next_line(), "started", "{}", node.log());
        server
    };
    let listening = |node: &Node, server: &mut harness::Held| {
        let line = server.next_line();
        let port = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the server: {line}\n{}", node.log()))
            .to_owned();
        format!("127.0.0.1:{port}")
    };
    let go = node.dir.join("go");
    std::fs::write(&go, "").expect("writing go");
    let mut first = unbound(&node, &go);
    let addr = listening(&node, &mut first);
    node.wait_log(NAMED, 0);
    assert_demo_enforced(&node, &addr);
    // A policy update re-decides its connections as the kernel does: with
    // the named workload's policy, which still allows this one.
    let mut sleep = node.hold_as("ambient-demo", "sleep", &addr, 3);
    let applied = node.log().matches("policy applied").count();
    node.write_config("demo.yaml", DEMO);
    node.wait_log("policy applied", applied);
    assert_eq!(sleep.end().0, "held", "{}", node.log());
    drop(first);
    node.wait_for(10, |n| n.map_entries("listeners") == 0);

    let go = node.dir.join("go-again");
    let mut second = unbound(&node, &go);
    node.stop_agent(Signal::SIGKILL);
    std::fs::write(&go, "").expect("writing go");
    let addr = listening(&node, &mut second);
    assert_eq!(
        node.connect_plaintext(&addr),
        Outcome::Refused,
        "no owner named, no policy: fail closed"
    );
    node.spawn_agent();
    node.wait_log(NAMED, 0);
    assert_demo_enforced(&node, &addr);
}

/// A listening socket that outlives its workload (held by a process that
/// left the workload's cgroup) keeps its entry, which names a workload with
/// no policy: connections to it are refused, where the agent once removed
/// the entry at deregistration and opened the port to anyone.
#[test]
fn a_listener_outliving_its_workload_stays_refused() {
    let node = Node::start("listener_outlives", &[("demo.yaml", DEMO)]);
    let out = node.dir.join("escaped.out");
    let mut workload = node.workload("ambient-demo", "httpbin", &HTTPBIN);
    workload.args([
        "sh",
        "-c",
        &format!(
            "setsid {} serve {ADDR} > {} & echo $!; wait",
            probe_bin().display(),
            out.display()
        ),
    ]);
    let mut workload = spawn_lines(workload);
    let pid = workload.next_line();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    // The server leaves the workload's cgroup; the workload ends.
    let root = zgate::agent::cgroup2_mount().expect("a cgroup v2 mount");
    std::fs::write(root.join("cgroup.procs"), &pid).expect("moving the server out");
    drop(workload);
    node.wait_log("deregistered", 0);
    let refused = node.connect_plaintext(ADDR);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.parse().expect("the server's pid")),
        Signal::SIGKILL,
    );
    assert_eq!(refused, Outcome::Refused, "{}", node.log());
}

/// A full listener map refuses the bind (EPERM), loudly, rather than leave a
/// port the kernel cannot attribute unenforced.
#[test]
fn full_listener_map_refuses_the_bind() {
    let node = Node::start_with(
        "full_listeners",
        &[("demo.yaml", DEMO)],
        &["--max-listeners", "2"],
    );
    let _a = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let _b = node.server("ambient-demo", "httpbin", &HTTPBIN, "127.0.0.1:8001");
    let mut third = node.workload("ambient-demo", "httpbin", &HTTPBIN);
    third.arg(probe_bin()).args(["serve", "127.0.0.1:8002"]);
    let out = run_ok(&mut third);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("Operation not permitted"), "{line}");
    node.wait_log("a kernel map is full", 0);
    assert_eq!(
        node.connect_plaintext(ADDR),
        Outcome::Refused,
        "the others stay enforced"
    );
}

/// When the kernel can track no more connection identities, `connect()`
/// from a workload fails closed (EPERM) instead of going unrecorded; room
/// comes back when connections close. The peers that fill `ZG_CONN_PEER`
/// are those whose slot another open connection holds (a peer in its slot
/// takes none of the hash's room), so the seven held connections come from
/// sources whose connections all name one slot.
#[test]
fn full_connection_map_fails_closed() {
    // Capacity 1 030 less the agent's reserve of 1 024 leaves 6.
    let node = Node::start_with("full_connections", &[], &["--max-connections", "1030"]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let held: Vec<_> = sources_sharing_a_peer_slot(ADDR, 7)
        .iter()
        .map(|source| node.hold_from("ambient-demo", "sleep", &source.to_string(), ADDR, 30))
        .collect();
    assert_eq!(node.conn_peer_keys().len(), 6, "one peer in the slot");
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::NotPermitted
    );
    node.wait_log("a kernel map is full", 0);
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while node.connect_as("ambient-demo", "sleep", ADDR) != Outcome::Connected {
        assert!(
            std::time::Instant::now() < deadline,
            "room never came back:\n{}",
            node.log()
        );
    }
}

/// What the kernel records for a workload's socket goes with the socket,
/// not with the workload: after allowed, refused and bound-source
/// connections from a workload that is still running, only the server's
/// listener is left, no connection identity and no accepted connection's
/// counters' key.
#[test]
fn socket_records_go_with_their_sockets() {
    let node = Node::start("socket_records", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let probe = probe_bin();
    let probe = probe.display();
    // Bound first, the socket is also a learned listener until it goes.
    let script = format!(
        "{probe} connect {ADDR}; {probe} connect {ADDR}; \
         PROBE_SOURCE=127.0.0.1 {probe} connect {ADDR}; \
         PROBE_SOURCE=127.0.0.1 {probe} connect {ADDR}; \
         echo done; exec sleep 30"
    );
    let mut sleep = node.workload("ambient-demo", "sleep", &[]);
    sleep.args(["sh", "-c", &script]);
    let mut client = spawn_lines(sleep);
    for _ in 0..4 {
        assert_eq!(client.next_line(), "connected");
    }
    assert_eq!(client.next_line(), "done");
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    node.wait_for(5, |n| {
        n.map_entries("sockets") == 1 && n.map_entries("accepted connections") == 0
    });
    assert_eq!(node.map_entries("listeners"), 1);
    assert_eq!(node.map_entries("connections"), 0);
    assert_eq!(node.connection_entries(), (0, 0));
}

/// Socket records outnumbering their slots (`zgate_common::socket`,
/// "Slots"): with 70 000 bound sockets open at once, more than the 65 536
/// slots, the records whose slot an open socket held are in the hash, and
/// each is still found — every bind is attributed, every listener goes with
/// its socket — while a connection held open all along keeps its identity.
#[test]
fn socket_records_outnumbering_their_slots_are_all_kept() {
    const BINDS: u32 = 70_000;
    let listeners = (BINDS + 10).to_string();
    let node = Node::start_with(
        "socket_slots",
        &[("demo.yaml", DEMO)],
        &["--max-listeners", &listeners],
    );
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let held = node.hold_as("ambient-demo", "sleep", ADDR, 120);
    // As many workloads as the open-file limit they inherit needs (root may
    // raise the hard limit in a VM; elsewhere the soft one goes up to it).
    use nix::sys::resource::{getrlimit, setrlimit, Resource::RLIMIT_NOFILE};
    let want = u64::from(BINDS) + 100;
    if let Ok((soft, hard)) = getrlimit(RLIMIT_NOFILE) {
        let _ = setrlimit(RLIMIT_NOFILE, want.max(soft), want.max(hard))
            .or_else(|_| setrlimit(RLIMIT_NOFILE, hard, hard));
    }
    let files = getrlimit(RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let per = u32::try_from(files.saturating_sub(64))
        .unwrap_or(BINDS)
        .min(BINDS);
    let binders: Vec<_> = (0..BINDS.div_ceil(per))
        .map(|k| {
            let mut c = node.workload("ambient-demo", "sleep", &[]);
            let (first, n) = (k * per, per.min(BINDS - k * per));
            c.arg(probe_bin())
                .args(["binds", &n.to_string(), &first.to_string()]);
            let mut binder = spawn_lines(c);
            assert_eq!(binder.next_line(), format!("bound {n}"), "{}", node.log());
            binder
        })
        .collect();
    // The httpbin listener, the held connection's client and every bind.
    assert_eq!(node.map_entries("listeners"), u64::from(BINDS) + 1);
    assert_eq!(node.map_entries("sockets"), u64::from(BINDS) + 2);
    // Connections still carry their identity.
    for (sa, expected) in [
        ("sleep", Outcome::Connected),
        ("notsleep", Outcome::NotPermitted),
    ] {
        assert_eq!(node.connect_as("ambient-demo", sa, ADDR), expected, "{sa}");
    }
    drop(binders);
    node.wait_for(60, |n| {
        n.map_entries("listeners") == 1 && n.map_entries("sockets") == 2
    });
    // The held connection kept its records all along: still counted open,
    // and when it goes, so does everything it left.
    assert_eq!(node.map_entries("accepted connections"), 1);
    assert_eq!(node.connection_entries(), (0, 1));
    drop(held);
    node.wait_for(10, |n| {
        n.map_entries("sockets") == 1
            && n.map_entries("accepted connections") == 0
            && n.connection_entries() == (0, 0)
    });
}

/// Two open connections between workloads whose 5-tuples name the same
/// peer slot (`zgate_common::conn`, "Slots"): the second one's peer goes
/// to `ZG_CONN_PEER` instead, and both keep their identity at the accept
/// side (the policy admits `sleep` only, so a connection that lost its
/// peer would arrive as plaintext and be refused). Both leave nothing
/// behind.
#[test]
fn connections_sharing_a_peer_slot_both_keep_their_identity() {
    let node = Node::start("peer-slots", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let sources = sources_sharing_a_peer_slot(ADDR, 2);
    let held: Vec<_> = sources
        .iter()
        .map(|source| node.hold_from("ambient-demo", "sleep", &source.to_string(), ADDR, 30))
        .collect();
    assert_eq!(node.connection_entries(), (0, 2));
    let dst = ADDR.parse().expect("an address");
    assert_eq!(
        node.conn_peer_keys(),
        [ConnKey::tcp(sources[1], dst)],
        "only the second connection's peer in ZG_CONN_PEER"
    );
    drop(held);
    node.wait_for(10, |n| n.connection_entries() == (0, 0));
}

/// `n` sources (`127.0.0.IP:PORT`, ports clear of the agent's listeners)
/// whose connections to `dst` all name the same peer slot: a connection's
/// slot is its source port rotated right by one plus the slot of port 0
/// (`zgate_common::conn::conn_slot`).
fn sources_sharing_a_peer_slot(dst: &str, n: usize) -> Vec<SocketAddr> {
    let dst: SocketAddr = dst.parse().unwrap_or_else(|e| panic!("{dst}: {e}"));
    let source = |ip: u8, port: u16| SocketAddr::from(([127, 0, 0, ip], port));
    let slot_of = |s: SocketAddr| conn_slot(&ConnKey::tcp(s, dst));
    let port_for = |ip: u8, slot: u32| {
        let port = (slot.wrapping_sub(slot_of(source(ip, 0))) as u16).rotate_left(1);
        (20_000..60_000).contains(&port).then_some(port)
    };
    let sources = (0..CONN_SLOTS)
        .find_map(|slot| {
            let sources: Vec<_> = (1..=u8::MAX)
                .filter_map(|ip| Some(source(ip, port_for(ip, slot)?)))
                .take(n)
                .collect();
            (sources.len() == n).then_some(sources)
        })
        .unwrap_or_else(|| panic!("no {n} sources naming one slot"));
    assert!(sources.iter().all(|s| slot_of(*s) == slot_of(sources[0])));
    sources
}

/// `/metrics` has the kernel's counters with Istio's labels after allowed
/// and denied connections; `/healthz/ready` answers once the agent is up.
#[test]
fn metrics_count_allowed_and_denied_connections() {
    let node = Node::start("metrics", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    // No policy selects it: plaintext is allowed in.
    let _echo = node.server("ambient-demo", "echo", &["app=echo"], "127.0.0.1:8001");
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "notsleep", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(node.connect_plaintext("127.0.0.1:8001"), Outcome::Connected);
    // A segment the accept hook lets through (plaintext is allowed) but
    // that never becomes a connection is not counted as one opened.
    node.send_segment("127.0.0.1:8001", 40_000);
    assert!(node
        .http_get("127.0.0.1:15021", "/healthz/ready")
        .starts_with("HTTP/1.1 200"));
    let metrics = node.http_get("127.0.0.1:15020", "/metrics");
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        has(
            r#"istio_tcp_connections_opened_total{reporter="destination",source_principal="spiffe://cluster.local/ns/ambient-demo/sa/sleep",destination_workload="httpbin",destination_workload_namespace="ambient-demo",response_flags="-"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        has(
            r#"zgate_connections_denied_total{source_principal="spiffe://cluster.local/ns/ambient-demo/sa/notsleep",destination_workload="httpbin",destination_workload_namespace="ambient-demo"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        has(
            r#"zgate_verdicts_total{policy="ambient-demo/allow-sleep-to-httpbin",action="ALLOW",reason="allow policy matched",hook="connect"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("zgate_policy_apply_seconds_count"),
        "{metrics}"
    );
    // The node holds a certificate for each identity enrolled here.
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"zgate_certificate_expiry_timestamp_seconds{identity="spiffe://cluster.local/ns/ambient-demo/sa/httpbin"} "#
        )),
        "{metrics}"
    );
    // Closed connections add their bytes, as TCP counts them: the server's
    // 6-byte greeting plus one for each FIN, and the client's FIN; from a
    // workload on the node and from a plaintext client alike.
    let expected = [
        r#"istio_tcp_connections_closed_total{reporter="destination",source_principal="spiffe://cluster.local/ns/ambient-demo/sa/sleep",destination_workload="httpbin",destination_workload_namespace="ambient-demo",response_flags="-"} 2"#,
        r#"istio_tcp_sent_bytes_total{reporter="destination",source_principal="spiffe://cluster.local/ns/ambient-demo/sa/sleep",destination_workload="httpbin",destination_workload_namespace="ambient-demo",response_flags="-"} 14"#,
        r#"istio_tcp_received_bytes_total{reporter="destination",source_principal="spiffe://cluster.local/ns/ambient-demo/sa/sleep",destination_workload="httpbin",destination_workload_namespace="ambient-demo",response_flags="-"} 2"#,
        r#"istio_tcp_connections_opened_total{reporter="destination",source_principal="unknown",destination_workload="echo",destination_workload_namespace="ambient-demo",response_flags="-"} 1"#,
        r#"istio_tcp_connections_closed_total{reporter="destination",source_principal="unknown",destination_workload="echo",destination_workload_namespace="ambient-demo",response_flags="-"} 1"#,
        r#"istio_tcp_sent_bytes_total{reporter="destination",source_principal="unknown",destination_workload="echo",destination_workload_namespace="ambient-demo",response_flags="-"} 7"#,
        r#"istio_tcp_received_bytes_total{reporter="destination",source_principal="unknown",destination_workload="echo",destination_workload_namespace="ambient-demo",response_flags="-"} 1"#,
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let metrics = node.http_get("127.0.0.1:15020", "/metrics");
        if expected.iter().all(|e| metrics.lines().any(|l| l == *e)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `zgate status` lists what the agent set up; `zgate check --agent`
/// explains a denial with the deciding policy, and the kernel agrees.
#[test]
fn status_and_check_against_the_live_agent() {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/other]}
"#;
    let node = Node::start("status_and_check", &[("policy.yaml", policy)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::NotPermitted
    );

    let status = node.zgate(&["status", "--json"]);
    assert!(
        status.contains(r#""workload": "ambient-demo/httpbin""#),
        "{status}"
    );
    assert!(
        status.contains(r#""policy": "ambient-demo/deny-other""#),
        "{status}"
    );
    assert!(status.contains(r#""state": "attached""#), "{status}");

    let check = node.zgate(&[
        "check",
        "--agent",
        "--dest",
        "ambient-demo/httpbin",
        "--port",
        "8000",
        "--source-identity",
        "spiffe://cluster.local/ns/ambient-demo/sa/other",
    ]);
    assert!(
        check.starts_with("DENY explicitly denied by: ambient-demo/deny-other"),
        "{check}"
    );
    assert!(check.contains("kernel (generation"), "{check}");
    assert!(check.contains("DENY (explicitly denied)"), "{check}");
}

/// Connections like one already decided take the verdict the kernel
/// remembered (`ZG_VERDICT_CACHE`): each is still counted, and a policy
/// update is never answered with a verdict of the generation before.
#[test]
fn remembered_verdicts_are_counted_and_follow_policy_updates() {
    let node = Node::start("verdict_cache", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let tally = |sa: &str| {
        let mut c = node.workload("ambient-demo", sa, &[]);
        c.arg(probe_bin()).args(["tally", ADDR, "5"]);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    };
    let sleep = tally("sleep");
    assert!(sleep.contains(" connected=5 "), "{sleep}");
    let other = tally("other");
    assert!(other.contains(" not-permitted=5 "), "{other}");
    let counts = node.verdict_counts();
    let count = |reason: u8| node.verdicts(reason, HOOK_CONNECT);
    assert_eq!(count(REASON_ALLOW_MATCHED), 5, "{counts:?}");
    assert_eq!(count(REASON_NO_ALLOW_MATCHED), 5, "{counts:?}");
    let status = node.zgate(&["status", "--json"]);
    let cached = serde_json::from_str::<serde_json::Value>(&status)
        .ok()
        .and_then(|s| {
            s["maps"]
                .as_array()?
                .iter()
                .find(|m| m["map"] == "verdict cache")?["entries"]
                .as_u64()
        });
    assert!(cached.is_some_and(|n| n >= 2), "{status}");

    // One `sleep` process connecting in a loop, before and after an update
    // that denies it: the same connection, a new generation.
    let mut looping = node
        .workload("ambient-demo", "sleep", &[])
        .arg(probe_bin())
        .args(["flip", ADDR, "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the probe");
    let stdout = looping.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "start connected");
    let applied = node.log().matches("policy applied").count();
    node.write_config("deny.yaml", DENY_SLEEP);
    node.wait_log("policy applied", applied);
    let flip = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = looping.wait();
    // Refused at `connect()`, or — a connection `connect()` allowed just
    // before the update, whose SYN the accept side judged just after —
    // refused at SYN time: either way by the new generation.
    assert!(
        flip.starts_with("flip not-permitted ") || flip.starts_with("flip refused "),
        "{flip}"
    );
}

const DENY_SLEEP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: ambient-demo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/ambient-demo/sa/sleep]}
"#;

/// A map pinned by another build of the same ABI version (another key or
/// value size) is not adopted: the agent removes it, creates it anew and
/// attaches its programs again, and enforcement goes on.
#[test]
fn a_pinned_map_of_another_layout_is_replaced() {
    let mut node = Node::start("foreign_map", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    node.stop_agent(Signal::SIGKILL);
    let maps = node
        .bpffs_dir()
        .join(format!("v{}/maps", zgate_common::ABI_VERSION));
    // `ZG_TERMS` (12-byte keys, 8-byte values) pinned where the verdict
    // cache belongs.
    std::fs::rename(maps.join("ZG_TERMS"), maps.join("ZG_VERDICT_CACHE"))
        .expect("re-pinning a map under another name");
    restart_reattaching(&mut node, "a pinned map has another layout");
    assert_demo_enforced(&node, ADDR);
}

/// The config directory removed: the last good policy stays enforced and
/// the error is logged; the directory back (with new content): it applies.
#[test]
fn config_dir_removed_keeps_the_last_policy_and_recovers() {
    let node = Node::start("config_dir_removed", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::NotPermitted
    );

    // Removed in one step, as a config management tool swaps directories
    // (an `rm -r` passes through the partly deleted content on its way).
    let gone = node.dir.join("config.gone");
    std::fs::rename(&node.config_dir, &gone).expect("removing the config directory");
    node.wait_log("config not applied", 0);
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::NotPermitted
    );
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::Connected
    );

    let applied = node.log().matches("policy applied").count();
    std::fs::create_dir(&node.config_dir).expect("creating the config directory");
    node.write_config("other.yaml", &DEMO.replace("sa/sleep", "sa/other"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.connect_as("ambient-demo", "other", ADDR) != Outcome::Connected {
        assert!(std::time::Instant::now() < deadline, "{}", node.log());
    }
    assert!(node.log().matches("policy applied").count() > applied);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::NotPermitted
    );
}

/// bpffs pins removed by hand: link pins come back at once (enforcement
/// must keep outliving the agent); with the map pins gone too, a restarted
/// agent detaches the orphaned programs and attaches them with fresh maps.
#[test]
fn pins_removed_by_hand_are_restored() {
    let mut node = Node::start("pins_removed", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    let root = node
        .bpffs_dir()
        .join(format!("v{}", zgate_common::ABI_VERSION));
    std::fs::remove_dir_all(root.join("links")).expect("removing the link pins");
    node.wait_log("its bpffs pin was removed", 6);
    assert_eq!(
        std::fs::read_dir(root.join("links"))
            .expect("links")
            .count(),
        7
    );
    node.stop_agent(Signal::SIGKILL);
    assert_eq!(
        node.connect_plaintext(ADDR),
        Outcome::Refused,
        "still enforced"
    );

    std::fs::remove_dir_all(root.join("maps")).expect("removing the map pins");
    let restarted = restart_reattaching(&mut node, "maps are no longer pinned");
    // The listener bound before the maps were lost is enforced again.
    assert!(
        restarted.contains("re-learned a listening address"),
        "{restarted}"
    );
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
    let _web = node.server("ambient-demo", "httpbin", &HTTPBIN, "127.0.0.1:8001");
    assert_eq!(node.connect_plaintext("127.0.0.1:8001"), Outcome::Refused);
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", "127.0.0.1:8001"),
        Outcome::Connected
    );
}

/// Start the node's agent again, expecting it to say `why` and attach all
/// seven programs anew (not adopt them); its log from this start.
fn restart_reattaching(node: &mut Node, why: &str) -> String {
    let before = node.log().len();
    node.spawn_agent();
    let restarted = node.log()[before..].to_owned();
    assert!(restarted.contains(why), "{restarted}");
    assert_eq!(
        restarted.matches("attached program").count(),
        7,
        "{restarted}"
    );
    restarted
}
