//! Churn soak: enrolled workloads open and close connections as fast as
//! they can while the policy is rewritten continuously (allow ↔ deny flips,
//! new and removed workloads every round). Every connection's outcome is
//! checked against the reference evaluator for the policy in force; the
//! run reports connections, policy versions applied and wrong verdicts —
//! which must be zero — and checks that no connection-map entry or socket
//! record leaks and the agent's memory stays flat. `cargo xtask soak --duration 10m` runs it
//! long; the integration suite runs a short one.

use std::time::{Duration, Instant};

use zgate::{
    config::{MeshConfig, Options},
    identity::SpiffeId,
    policy::{evaluate, Conn},
};

use crate::harness::{probe_bin, Node};

const ADDR: &str = "127.0.0.1:8000";
const ACCOUNTS: [&str; 4] = ["sleep", "other", "web", "batch"];

/// The policy versions the soak cycles through.
fn version(round: usize) -> String {
    let sa = ACCOUNTS[round % ACCOUNTS.len()];
    match round % 5 {
        // Only one service account may connect.
        0 | 1 => format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-one, namespace: soak}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/soak/sa/{sa}]}}\n"
        ),
        // One service account is denied, everyone else allowed.
        2 => format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-one, namespace: soak}}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {{notPrincipals: [cluster.local/ns/soak/sa/{sa}]}}\n    to:\n    - operation: {{notPorts: [\"9\"]}}\n"
        ),
        // Allow nothing.
        3 => "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: soak}\nspec: {}\n".to_owned(),
        // No policy: everything allowed.
        _ => "# no policy\n".to_owned(),
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub connections: u64,
    pub versions: u64,
    pub wrong: u64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
}

/// Run the soak on a fresh node for `duration`, and on until at least
/// `min_versions` policy versions were applied: a slow machine (a VM under
/// emulation) takes longer, it does not do less.
pub fn run(duration: Duration, min_versions: u64, per_batch: u32) -> Report {
    let node = Node::start("soak", &[]);
    let _server = node.server("soak", "server", &["app=server"], ADDR);
    let opts = Options::default();
    let mut report = Report {
        rss_start_kib: rss_kib(&node),
        ..Report::default()
    };
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < duration || report.versions < min_versions {
        let yaml = version(round);
        let applied = node.log().matches("policy applied").count();
        node.write_config("policy.yaml", &yaml);
        node.wait_log("policy applied", applied);
        report.versions += 1;
        let mesh = match MeshConfig::from_str(&yaml, "soak.yaml", &opts) {
            Ok(m) => m,
            Err(e) => panic!("the soak's own policy does not load: {e}"),
        };
        // Each batch is a fresh workload (enrolled and removed again).
        for sa in ACCOUNTS {
            let expected = expect(&mesh, sa);
            let mut c = node.workload("soak", sa, &[]);
            c.arg(probe_bin())
                .args(["tally", ADDR, &per_batch.to_string()]);
            let out = crate::harness::run_ok(&mut c);
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let count = |k: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(k))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let (ok, eperm) = (count("connected="), count("not-permitted="));
            let total = ok + eperm + count("refused=") + count("other=");
            report.connections += total;
            let right = if expected { ok } else { eperm };
            report.wrong += total - right;
            if right != total {
                eprintln!(
                    "round {round}: {sa} expected {} got {line}",
                    if expected { "allow" } else { "deny" }
                );
            }
        }
        round += 1;
    }
    // Connections closed: their identity entries, socket records and
    // accepted connections' counters' keys must be gone, all but the
    // server's listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.connection_entries() != (0, 0)
        || node.map_entries("sockets") != 1
        || node.map_entries("accepted connections") != 0
    {
        assert!(
            Instant::now() < deadline,
            "entries leaked: connection maps {:?}, socket records {}, accepted {}",
            node.connection_entries(),
            node.map_entries("sockets"),
            node.map_entries("accepted connections")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    report.rss_end_kib = rss_kib(&node);
    report
}

/// The reference evaluator's verdict for `sa` connecting to the server.
fn expect(mesh: &MeshConfig, sa: &str) -> bool {
    let labels = [("app".to_owned(), "server".to_owned())]
        .into_iter()
        .collect();
    let policies = mesh.policies_for("soak", &labels);
    let refs: Vec<_> = policies.iter().map(AsRef::as_ref).collect();
    let ip = "127.0.0.1"
        .parse()
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let conn = Conn {
        src: ip,
        dst: ip,
        dst_port: 8000,
        src_identity: Some(SpiffeId::new("cluster.local", "soak", sa)),
    };
    evaluate(&refs, &conn).is_allow()
}

fn rss_kib(node: &Node) -> u64 {
    let Some(pid) = node.agent_pid() else {
        return 0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The CI-sized soak: a few seconds (and at least 5 policy versions, 4 000
/// connections), zero wrong verdicts, no leaks.
#[test]
fn short_churn_soak_has_no_wrong_verdicts() {
    let report = run(Duration::from_secs(8), 5, 200);
    eprintln!("soak: {report:?}");
    assert!(report.versions >= 5, "{report:?}");
    assert!(report.connections >= 4_000, "{report:?}");
    assert_eq!(report.wrong, 0, "{report:?}");
    // Memory stays flat: no per-connection or per-version growth.
    assert!(
        report.rss_end_kib < report.rss_start_kib + 16 * 1024,
        "agent RSS grew: {report:?}"
    );
}
