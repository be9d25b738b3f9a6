//! Datapath benchmarks (`cargo xtask bench`, as root): connection setup rate
//! (connect + accept + close over loopback, a server that greets and closes
//! each connection on one thread, as in a `TCP_CRR`-style test) without
//! zgate (client and server each in a plain cgroup, as deep as zgate's
//! workloads) and with zgate
//! enforcing 1, 1 000 and 10 000 rules, as ratios from the same run; the
//! latency from a policy file change to the kernel's new verdict; and,
//! between two nodes joined by a veth pair, bulk throughput and
//! request/response latency through the HBONE tunnel against plain TCP
//! over the same veth, with the agents' CPU time per GiB carried.
//! `ZGATE_BIN_B` names a second agent binary for the setup rate, measured
//! with one rule in the same rounds (an A/B comparison of two builds).
//! A benchmark, not a test: it prints numbers.

#[allow(
    dead_code,
    reason = "shared with the integration tests, which use all of it"
)]
#[path = "../tests/harness.rs"]
mod harness;

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use harness::{probe_bin, Node};
use nix::{
    sched::{sched_getaffinity, sched_setaffinity, CpuSet},
    unistd::Pid,
};

const ADDR: &str = "127.0.0.1:8000";
/// Connections per batch: a few tens of milliseconds.
const BATCH: u32 = 300;
/// Batches per configuration and placement; a multiple of the four
/// configurations (five with `ZGATE_BIN_B`), so each starts as many rounds.
/// A median ratio of 400 rounds moved by about 0.01 from run to run with
/// the scheduler placing client and server (its batches' ratios spread
/// 0.86–1.02), as much as the target's margin; 1 600 halve that.
/// `ZGATE_BENCH_ROUNDS` asks for another number (rounded up to a multiple
/// of 20): the noise falls with its square root.
const ROUNDS: usize = 1_600;

/// [`ROUNDS`], or what `ZGATE_BENCH_ROUNDS` asks for.
fn rounds() -> usize {
    let Some(asked) = std::env::var_os("ZGATE_BENCH_ROUNDS") else {
        return ROUNDS;
    };
    let n: usize = asked
        .to_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ZGATE_BENCH_ROUNDS: not a number of rounds: {asked:?}"));
    n.max(1).next_multiple_of(20)
}

fn main() {
    // `cargo bench --bench datapath -- tunnel` runs one section.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if run("setup") {
        setup_rate();
    }
    if run("update") {
        update_latency();
    }
    if run("storm") {
        deny_storm();
    }
    if run("tunnel") {
        tunnel();
    }
}

fn setup_rate() {
    let rounds = rounds();
    println!(
        "connection setup rate over loopback: connect+accept+close, median of {rounds} rounds of a {BATCH}-connection batch per configuration, interleaved; ratio (baseline time / zgate time) and µs added: each batch against the baseline's of the same round, median and interquartile range"
    );
    let baseline = Node::bare("bench-baseline");
    // Without zgate a workload still runs in a cgroup of its own (a pod
    // does): the baseline's processes sit as deep as zgate's workloads.
    let plain = PlainCgroups::new(&baseline);
    let mut nodes = Vec::new();
    for rules in RULES {
        let node = Node::start("bench-rules", &[("policy.yaml", &config(rules))]);
        nodes.push((format!("zgate, {rules} rules"), node));
    }
    // `ZGATE_BIN_B`: another agent binary, with one rule, measured in the
    // same rounds: its difference to the first's, round by round, is free
    // of the host's drift, which moves either one's ratio from run to run
    // by more than most changes to the datapath do.
    let other = std::env::var_os("ZGATE_BIN_B").map(PathBuf::from);
    if let Some(bin) = &other {
        let yaml = config(1);
        let files = [("policy.yaml", yaml.as_str())];
        let node = Node::start_using(bin.clone(), "bench-rules-b", &files, &[]);
        nodes.push(("zgate B, 1 rules".to_owned(), node));
    }
    let last_cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    // Client and server where the scheduler puts them; then both on one
    // core, where every cycle zgate adds is on the connection's path.
    for (placement, cpu, addr) in [
        ("as the scheduler places them", None, ADDR),
        (
            "client and server on one core",
            Some(last_cpu),
            "127.0.0.1:8001",
        ),
    ] {
        match cpu {
            Some(cpu) => println!("placement: {placement} (CPU {cpu})"),
            None => println!("placement: {placement}"),
        }
        // Servers and clients inherit this process's CPU set.
        let _pinned = cpu.map(Pinned::to);
        let _plain = serve(plain.command(&baseline, "server"), "greet", addr);
        let _servers: Vec<_> = nodes
            .iter()
            .map(|(_, node)| {
                let mut c = node.workload("bench", "server", &["app=server"]);
                c.arg(probe_bin());
                serve(c, "greet", addr)
            })
            .collect();
        // One long-lived client per configuration, each in its own cgroup
        // (a zgate workload, or a plain one), told to run short batches in
        // turn: the host's load drifts over seconds, so batches a few
        // milliseconds apart see the same, and each round's difference to
        // the baseline's batch cancels it. Each round starts one
        // configuration later, so none always runs right after the same
        // one (what a batch leaves behind on the core — deferred frees, RCU
        // callbacks — lands on the next).
        let mut clients = vec![BatchClient::spawn(plain.command(&baseline, "client"), addr)];
        for (_, node) in &nodes {
            let mut c = node.workload("bench", "client", &[]);
            c.arg(probe_bin());
            clients.push(BatchClient::spawn(c, addr));
        }
        let configs = clients.len();
        // Warm every path up before measuring.
        for client in &mut clients {
            client.run(BATCH);
        }
        // Seconds per connection, by configuration, round by round.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs];
        for round in 0..rounds {
            for k in 0..configs {
                let i = (round + k) % configs;
                samples[i].push(clients[i].run(BATCH) / f64::from(BATCH));
            }
        }
        drop(clients);
        // Both the ratio and the cost are paired: each batch against the
        // baseline's of the same round, then the median over rounds. (The
        // ratio of the configurations' own medians compares batches run
        // seconds apart, so the host's drift moves it by a few per cent
        // from run to run.)
        println!(
            "{:>26} {:>10} {:>7} {:>9} {:>24}",
            "", "conn/s", "ratio", "[IQR]", "µs/conn added [IQR]"
        );
        println!(
            "{:>26} {:>10.0} {:>7.3}",
            "no zgate",
            1.0 / median(&samples[0]),
            1.0
        );
        // Configuration `i`'s batches against configuration `j`'s of the
        // same rounds: quartiles of `f(i's, j's)`.
        let paired = |i: usize, j: usize, f: fn(f64, f64) -> f64| -> [f64; 3] {
            let v: Vec<f64> = samples[i]
                .iter()
                .zip(&samples[j])
                .map(|(z, b)| f(*z, *b))
                .collect();
            [0.25, 0.5, 0.75].map(|q| quantile(&v, q))
        };
        let mut ratios = Vec::new();
        for (i, (label, _)) in nodes.iter().enumerate() {
            let [r_low, ratio, r_high] = paired(i + 1, 0, |z, b| b / z);
            let [low, mid, high] = paired(i + 1, 0, |z, b| (z - b) * 1e6);
            println!(
                "{label:>26} {:>10.0} {ratio:>7.3} [{r_low:.2}..{r_high:.2}] {mid:>9.1} [{low:>5.1} .. {high:>5.1}]",
                1.0 / median(&samples[i + 1]),
            );
            ratios.push(ratio);
        }
        // B, if measured, is not one of the rule counts the target is for.
        ratios.truncate(RULES.len());
        println!("{}", target_verdict(&ratios));
        if other.is_some() {
            // B is the last configuration; the first zgate one has one rule.
            let [low, mid, high] = paired(configs - 1, 1, |b, a| (b - a) * 1e6);
            println!(
                "{:>26} {mid:>37.2} [{low:>5.1} .. {high:>5.1}]",
                "B - A, 1 rule, µs/conn"
            );
        }
    }
    // What each agent holds and has spent after its runs, and how long a
    // metrics scrape takes (the agent's command loop is busy meanwhile), as
    // a client sees it, its process start included: median of five.
    for (label, node) in &nodes {
        let (rss_kib, cpu_secs) = node.agent_pid().map_or((0, 0.0), agent_usage);
        let scrapes: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                node.http_get("127.0.0.1:15020", "/metrics");
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!(
            "agent of {label}: RSS {rss_kib} KiB, CPU {cpu_secs:.2} s, metrics scrape {:.1} ms",
            median(&scrapes)
        );
    }
}

/// The rule counts measured, fewest first.
const RULES: [usize; 3] = [1, 1_000, 10_000];

/// The target for the setup rate, judged on the median ratios of
/// one placement (`RULES`' order): at most 5 % slower than without zgate
/// with every rule count (a ratio of at least 1 / 1.05), and flat: the
/// most rules within 0.01 of the fewest.
fn target_verdict(ratios: &[f64]) -> String {
    const FLOOR: f64 = 1.0 / 1.05;
    const FLAT: f64 = 0.01;
    let slowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let drop = match (ratios.first(), ratios.last()) {
        (Some(fewest), Some(most)) => fewest - most,
        _ => 0.0,
    };
    let met = slowest >= FLOOR && drop <= FLAT;
    format!(
        "{:>26} {} (at most 5 % slower: every ratio >= {FLOOR:.3}, lowest {slowest:.3}; flat: {} rules within {FLAT} of {}: {:+.3})",
        "target",
        if met { "met" } else { "NOT met" },
        RULES[RULES.len() - 1],
        RULES[0],
        -drop,
    )
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile of `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

/// This process restricted to one CPU until dropped; processes it starts
/// meanwhile inherit the restriction.
struct Pinned(CpuSet);

impl Pinned {
    fn to(cpu: usize) -> Self {
        let all = sched_getaffinity(Pid::from_raw(0))
            .unwrap_or_else(|e| panic!("reading the CPU set: {e}"));
        let mut one = CpuSet::new();
        one.set(cpu).unwrap_or_else(|e| panic!("CPU {cpu}: {e}"));
        sched_setaffinity(Pid::from_raw(0), &one)
            .unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
        Self(all)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.0);
    }
}

/// An agent's resident memory (KiB) and CPU time so far (s).
fn agent_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime: fields 14 and 15, after the parenthesised name.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    (rss, ticks as f64 / 100.0)
}

/// HBONE (mTLS) between two nodes against plain TCP over the same veth.
fn tunnel() {
    const MIB: &str = "1024";
    const RTTS: &str = "5000";
    let inventory = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: client, namespace: bench}\nspec: {address: 10.99.8.10, serviceAccount: client}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: server, namespace: bench}\nspec: {address: 10.99.8.20, serviceAccount: server, labels: {app: server}}\n";
    let (a, b) = Node::pair(
        "bench-hbone",
        "10.99.8",
        (&[10], &[20]),
        &[("mesh.yaml", inventory), ("policy.yaml", &config(1))],
        &[],
    );
    let _mesh_server = b.server("bench", "server", &["app=server"], "10.99.8.20:8000");
    let _plain_server = serve(b.command(probe_bin()), "serve", "10.99.8.2:9000");
    let plain = |mode: &str, arg: &str| {
        let mut c = a.command(probe_bin());
        c.args([mode, "10.99.8.2:9000", arg]);
        probe(c)
    };
    let tunneled = |mode: &str, arg: &str| {
        let mut c = a.workload("bench", "client", &[]);
        c.arg(probe_bin()).args([mode, "10.99.8.20:8000", arg]);
        probe(c)
    };
    let cpu = || agent_cpu(&a) + agent_cpu(&b);
    println!("two nodes over a veth pair: {MIB} MiB each way (echo), {RTTS} one-byte round trips");
    println!(
        "{:>16} {:>10} {:>10} {:>10} {:>16}",
        "", "MiB/s", "p50 µs", "p99 µs", "agent CPU s/GiB"
    );
    for (label, run) in [
        ("plain TCP", &plain as &dyn Fn(&str, &str) -> String),
        ("HBONE (mTLS)", &tunneled),
    ] {
        let before = cpu();
        let bulk = run("bulk", MIB);
        let spent = cpu() - before;
        let rr = run("rr", RTTS);
        let mibs = bulk
            .strip_prefix("throughput ")
            .map(str::trim)
            .unwrap_or("?");
        let mut rr = rr.split_whitespace().skip(1).step_by(2);
        let (p50, p99) = (rr.next().unwrap_or("?"), rr.next().unwrap_or("?"));
        // Both directions carry MIB MiB.
        let gib = 2.0 * MIB.parse::<f64>().unwrap_or(0.0) / 1024.0;
        println!(
            "{label:>16} {mibs:>10} {p50:>10} {p99:>10} {:>16.2}",
            spent / gib
        );
    }
}

fn probe(mut c: Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("running the probe: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// User + system CPU seconds the node's agent has used so far.
fn agent_cpu(node: &Node) -> f64 {
    let Some(pid) = node.agent_pid() else {
        return 0.0;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / hz as f64
}

/// Time from writing (or removing) a policy file to the first connection
/// the kernel decides differently, seen by a client connecting in a loop.
/// Policy changes timed, half adding the demo policy (which denies the
/// prober), half removing it.
const UPDATES: usize = 40;

fn update_latency() {
    let node = Node::start("bench-update", &[]);
    let _server = node.server("ambient-demo", "httpbin", &["app=httpbin"], ADDR);
    let mut samples = Vec::new();
    for i in 0..UPDATES {
        let mut child = node
            .workload("ambient-demo", "other", &[])
            .arg(probe_bin())
            // 100 µs between attempts: back to back, the prober and the
            // server's thread per connection keep both vCPUs busy, and the
            // agent's wake-up then waits for the scheduler (up to ~10 ms
            // here), which is the prober's cost, not the update's.
            .args(["flip", ADDR, "10", "100"])
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
    let ms: Vec<f64> = samples.iter().map(|s| s.as_secs_f64() * 1e3).collect();
    if !ms.is_empty() {
        println!(
            "policy file change → kernel verdict, {} changes: median {:.2} ms, p90 {:.2}, min {:.2}, max {:.2}",
            ms.len(),
            median(&ms),
            quantile(&ms, 0.9),
            quantile(&ms, 0.0),
            quantile(&ms, 1.0),
        );
    }
}

/// A client retrying a denied connection back to back for five seconds:
/// the denials the kernel counted, and the agent CPU time they cost (their
/// events are read, rate-limited and mostly not logged).
fn deny_storm() {
    let node = Node::start("bench-storm", &[("demo.yaml", zgate::config::DEMO_CONFIG)]);
    let _server = node.server("ambient-demo", "httpbin", &["app=httpbin"], ADDR);
    let cpu_before = node.agent_pid().map_or(0.0, |pid| agent_usage(pid).1);
    let started = Instant::now();
    let outcome = node
        .workload("ambient-demo", "other", &[])
        .arg(probe_bin())
        .args(["flip", ADDR, "5"])
        .output()
        .unwrap_or_else(|e| panic!("running the prober: {e}"));
    let secs = started.elapsed().as_secs_f64();
    let cpu = node.agent_pid().map_or(0.0, |pid| agent_usage(pid).1) - cpu_before;
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    if !stdout.contains("start not-permitted") {
        println!("deny storm: the prober was not denied ({})", stdout.trim());
        return;
    }
    let metrics = node.http_get("127.0.0.1:15020", "/metrics");
    let denied: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("zgate_connections_denied_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "deny storm: {:.0} denials/s for {secs:.1} s cost the agent {cpu:.2} s of CPU ({:.2} µs a denial)",
        denied / secs,
        cpu / denied * 1e6,
    );
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

/// A server on `addr` in the probe's `mode` (`harness::Server::start`).
fn serve(probe: Command, mode: &str, addr: &str) -> harness::Server {
    harness::Server::start(probe, mode, addr)
        .unwrap_or_else(|line| panic!("the server on {addr}: {line}"))
}

/// Cgroups with no program attached, as deep below the cgroup v2 mount as
/// zgate's workloads (`<mount>/<instance>/workloads/<name>`); removed when
/// dropped, once their processes are gone.
struct PlainCgroups(PathBuf);

impl PlainCgroups {
    fn new(node: &Node) -> Self {
        let Some(mount) = zgate::agent::cgroup2_mount() else {
            panic!("no cgroup v2 mount");
        };
        let root = mount.join(format!("{}-plain", node.netns));
        for name in ["server", "client"] {
            let dir = root.join("workloads").join(name);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        Self(root)
    }

    /// The probe, run by `node` inside the plain cgroup `name`.
    fn command(&self, node: &Node, name: &str) -> Command {
        let procs = self.0.join("workloads").join(name).join("cgroup.procs");
        let mut c = node.command("sh");
        c.arg("-c")
            .arg(format!("echo $$ > {} && exec \"$@\"", procs.display()))
            .arg("sh")
            .arg(probe_bin());
        c
    }
}

impl Drop for PlainCgroups {
    fn drop(&mut self) {
        for name in ["server", "client"] {
            let _ = std::fs::remove_dir(self.0.join("workloads").join(name));
        }
        let _ = std::fs::remove_dir(self.0.join("workloads"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A probe in `batches` mode.
struct BatchClient {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl BatchClient {
    /// `probe` is the command that runs the probe.
    fn spawn(mut probe: Command, addr: &str) -> Self {
        let mut child = probe
            .args(["batches", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting a client: {e}"));
        let (stdin, Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("the client's stdout is not piped");
        };
        Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        }
    }

    /// Seconds `connections` rounds took.
    fn run(&mut self, connections: u32) -> f64 {
        let Some(stdin) = self.stdin.as_mut() else {
            panic!("the client's stdin is closed");
        };
        writeln!(stdin, "{connections}").unwrap_or_else(|e| panic!("commanding a client: {e}"));
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.strip_prefix("ns ")
            .and_then(|ns| ns.trim().parse::<f64>().ok())
            .map(|ns| ns / 1e9)
            .unwrap_or_else(|| panic!("the client failed: {line}"))
    }
}

impl Drop for BatchClient {
    /// The end of its stdin ends the probe (and a workload's `zgate run`).
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
