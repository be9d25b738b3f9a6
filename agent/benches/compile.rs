//! Policy compilation scaling (`cargo xtask bench`): YAML parse and compile
//! time, map entries and bytes, for 100, 1 000 and 10 000 policies over
//! 1 000 workloads; and `zgate check` latency. A benchmark, not a test:
//! it prints numbers and asserts nothing.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    hint::black_box,
    mem::size_of,
    net::IpAddr,
    time::{Duration, Instant},
};

use zgate::{
    check::{self, Query},
    compile::{compile, Compiled, Identities, PolicyIds, WorkloadPolicies},
    config::{MeshConfig, Options},
    identity::SpiffeId,
    policy::Conn,
};
use zgate_common::policy::{
    IdentityBitsKey, IpBitsKey, PolicySet, PolicySetKey, PortBitsKey, TermBits, TermInfo, TermKey,
    WorkloadPolicyKey,
};

const WORKLOADS: usize = 1_000;
const NAMESPACES: usize = 50;

fn main() {
    println!(
        "policy compilation over {WORKLOADS} workloads in {NAMESPACES} namespaces (median of 5)"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "policies",
        "parse ms",
        "compile ms",
        "sets",
        "entries",
        "map KiB",
        "B/policy",
        "check µs",
        "peak MiB"
    );
    for policies in [100, 1_000, 10_000] {
        row(policies);
    }
}

fn row(policies: usize) {
    let yaml = config(policies);
    let opts = Options::default();
    let (parse, mesh) = median(5, || MeshConfig::from_str(&yaml, "bench.yaml", &opts));
    let mesh = match mesh {
        Ok(m) => m,
        Err(e) => panic!("the generated config does not load: {e}"),
    };
    let mut identities = Identities::default();
    for w in mesh.workloads() {
        identities.intern(&SpiffeId::new(
            "cluster.local",
            &w.namespace,
            &w.service_account,
        ));
    }
    let (compile_time, compiled) = median(5, || {
        let workloads: Vec<WorkloadPolicies> = mesh
            .workloads()
            .iter()
            .enumerate()
            .map(|(i, w)| WorkloadPolicies {
                id: i as u32 + 1,
                name: format!("{}/{}", w.namespace, w.name),
                policies: mesh.policies_for(&w.namespace, &w.labels),
            })
            .collect();
        compile(&workloads, &identities, &mut PolicyIds::default())
    });
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => panic!("the generated config does not compile: {e}"),
    };
    let (entries, bytes) = footprint(&compiled);
    let (check_time, _) = median(101, || check::check(&mesh, &query()));
    println!(
        "{policies:>8} {:>10.1} {:>10.1} {:>8} {entries:>10} {:>10} {:>10} {:>10.1} {:>10.1}",
        ms(parse),
        ms(compile_time),
        compiled.sets.len(),
        bytes / 1024,
        bytes / policies,
        check_time.as_secs_f64() * 1e6,
        peak_rss_mib(),
    );
}

/// Map entries and their key+value bytes, as the kernel stores them.
fn footprint(c: &Compiled) -> (usize, usize) {
    let mut entries = c.workload_sets.len();
    let mut bytes = entries * (size_of::<WorkloadPolicyKey>() + 4);
    for set in &c.sets {
        let ids = set.identity_bits.len();
        let ports = set.port_bits.len();
        let ips = set.ip_bits.len();
        let terms = set.terms.len();
        entries += 1 + ids + ports + ips + terms;
        bytes += size_of::<PolicySetKey>() + size_of::<PolicySet>();
        bytes += ids * (size_of::<IdentityBitsKey>() + size_of::<TermBits>());
        bytes += ports * (size_of::<PortBitsKey>() + size_of::<TermBits>());
        bytes += ips * (4 + size_of::<IpBitsKey>() + size_of::<TermBits>());
        bytes += terms * (size_of::<TermKey>() + size_of::<TermInfo>());
    }
    (entries, bytes)
}

fn query() -> Query {
    let ip: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    Query {
        dest_namespace: "ns7".into(),
        dest_labels: BTreeMap::from([("app".into(), "app140".into())]),
        dest_workload: None,
        conn: Conn {
            src: ip,
            dst: ip,
            dst_port: 8080,
            src_identity: Some(SpiffeId::new("cluster.local", "ns3", "sa3")),
        },
        src_ip_defaulted: false,
        dst_ip_defaulted: false,
    }
}

/// A mesh of `WORKLOADS` WorkloadEntries and `n` policies: mostly
/// per-workload selector policies naming principals and ports, some
/// namespace-wide DENYs by namespace, some ipBlocks, a few L7 rules.
fn config(n: usize) -> String {
    let mut y = String::new();
    for w in 0..WORKLOADS {
        let ns = w % NAMESPACES;
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{w}, namespace: ns{ns}}}\nspec: {{address: 10.{}.{}.{}, serviceAccount: sa{}, labels: {{app: app{w}}}}}\n---\n",
            w / 65536,
            (w / 256) % 256,
            w % 256,
            w % 20,
        );
    }
    for p in 0..n {
        let ns = p % NAMESPACES;
        // A workload in the policy's own namespace (w % NAMESPACES == ns).
        let app = ns + NAMESPACES * ((p / NAMESPACES) % (WORKLOADS / NAMESPACES));
        let src_ns = (p * 3) % NAMESPACES;
        let body = match p % 10 {
            0 => format!(
                "action: DENY\n  rules:\n  - from:\n    - source: {{namespaces: [ns{src_ns}]}}\n    to:\n    - operation: {{ports: [\"9{:03}\"]}}",
                p % 1000
            ),
            1 => format!(
                "selector: {{matchLabels: {{app: app{app}}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{ipBlocks: [10.{}.0.0/16, 192.168.{}.0/24]}}",
                p % 256,
                p % 256
            ),
            2 => format!(
                "selector: {{matchLabels: {{app: app{app}}}}}\n  action: ALLOW\n  rules:\n  - to:\n    - operation: {{methods: [GET], ports: [\"80\"]}}"
            ),
            _ => format!(
                "selector: {{matchLabels: {{app: app{app}}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/ns{src_ns}/sa/sa{}]}}\n    to:\n    - operation: {{ports: [\"{}\"]}}",
                p % 20,
                8000 + p % 100
            ),
        };
        let _ = write!(
            y,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{p}, namespace: ns{ns}}}\nspec:\n  {body}\n---\n"
        );
    }
    y
}

fn median<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let out = black_box(f());
        times.push(started.elapsed());
        last = Some(out);
    }
    times.sort();
    match last {
        Some(out) => (times[runs / 2], out),
        None => panic!("median of zero runs"),
    }
}

/// The process's peak resident set so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
