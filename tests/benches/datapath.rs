//! Datapath benchmarks (`cargo xtask bench`, as root): connection setup rate
//! (connect + accept + close over loopback) without zgate and with zgate
//! enforcing 1, 1 000 and 10 000 rules, as ratios from the same run; and
//! the latency from a policy file change to the kernel's new verdict.
//! A benchmark, not a test: it prints numbers.

#[allow(
    dead_code,
    reason = "shared with the integration tests, which use all of it"
)]
#[path = "../tests/harness.rs"]
mod harness;

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use harness::{probe_bin, Node};

const ADDR: &str = "127.0.0.1:8000";
const ROUNDS: &str = "3000";
const RUNS: usize = 5;

fn main() {
    println!("connection setup rate over loopback: connect+accept+close, median of {RUNS} runs of {ROUNDS}");
    let baseline = {
        let node = Node::bare("bench-baseline");
        let _server = serve(&node);
        rate(|| {
            let mut c = node.command(probe_bin());
            c.args(["bench", ADDR, ROUNDS]);
            c
        })
    };
    println!("{:>26} {:>12} {:>8}", "", "conn/s", "ratio");
    println!("{:>26} {baseline:>12.0} {:>8.3}", "no zgate", 1.0);
    for rules in [1usize, 1_000, 10_000] {
        let node = Node::start("bench-rules", &[("policy.yaml", &config(rules))]);
        let _server = node.server("bench", "server", &["app=server"], ADDR);
        let r = rate(|| {
            let mut c = node.workload("bench", "client", &[]);
            c.arg(probe_bin()).args(["bench", ADDR, ROUNDS]);
            c
        });
        let label = format!("zgate, {rules} rules");
        println!("{label:>26} {r:>12.0} {:>8.3}", r / baseline);
    }
    update_latency();
}

/// Time from writing (or removing) a policy file to the first connection
/// the kernel decides differently, seen by a client connecting in a loop.
fn update_latency() {
    let node = Node::start("bench-update", &[]);
    let _server = node.server("ambient-demo", "httpbin", &["app=httpbin"], ADDR);
    let mut samples = Vec::new();
    for i in 0..10 {
        let mut child = node
            .workload("ambient-demo", "other", &[])
            .arg(probe_bin())
            .args(["flip", ADDR, "10"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the probe: {e}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("no probe stdout")
        };
        let mut lines = BufReader::new(stdout).lines();
        let _start = lines.next();
        let written = now_ns();
        if i % 2 == 0 {
            node.write_config("demo.yaml", zgate::config::DEMO_CONFIG);
        } else if let Err(e) = std::fs::remove_file(node.config_dir.join("demo.yaml")) {
            panic!("removing the policy: {e}");
        }
        let flip = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = child.wait();
        if let Some(at) = flip
            .split_whitespace()
            .nth(2)
            .and_then(|t| t.parse::<u128>().ok())
        {
            samples.push(Duration::from_nanos((at.saturating_sub(written)) as u64));
        } else {
            println!("update latency: no flip seen ({flip})");
        }
    }
    samples.sort();
    let mut line = String::new();
    for s in &samples {
        let _ = write!(line, " {:.2}", s.as_secs_f64() * 1e3);
    }
    if let (Some(min), Some(max)) = (samples.first(), samples.last()) {
        println!(
            "policy file change → kernel verdict: median {:.2} ms, min {:.2}, max {:.2} (ms:{line})",
            samples[samples.len() / 2].as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
        );
    }
}

/// 1 rule: `allow-client`. More: the server's own policy grows to 200
/// rules (each another principal), and the rest are policies for other
/// workloads of the mesh.
fn config(rules: usize) -> String {
    let own = (rules - 1).min(200);
    let mut y = String::from(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: bench}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/bench/sa/client]}\n",
    );
    for i in 0..own {
        let _ = writeln!(
            y,
            "  - from:\n    - source: {{principals: [cluster.local/ns/other/sa/s{i}]}}\n    to:\n    - operation: {{ports: [\"{}\"]}}",
            9000 + i
        );
    }
    for i in 0..rules.saturating_sub(1 + own) {
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ns{}}}\nspec:\n  selector: {{matchLabels: {{app: a{i}}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/x/sa/s{i}]}}\n",
            i % 50
        );
    }
    y
}

fn serve(node: &Node) -> harness::Server {
    let mut child = node
        .command(probe_bin())
        .args(["serve", ADDR])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the server: {e}"));
    if let Some(out) = child.stdout.take() {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
    }
    harness::Server(child)
}

fn rate(mut command: impl FnMut() -> Command) -> f64 {
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let out = command()
                .output()
                .unwrap_or_else(|e| panic!("running the probe: {e}"));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.strip_prefix("rate ")
                .and_then(|r| r.trim().parse().ok())
                .unwrap_or_else(|| panic!("the probe failed: {text}"))
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[RUNS / 2]
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
