//! Faults: each fails closed with a clear error and recovers when its
//! cause is gone.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::harness::{probe_bin, run_ok, Node, Outcome, Server};

const DEMO: &str = zgate::config::DEMO_CONFIG;
const HTTPBIN: [&str; 1] = ["app=httpbin"];
const ADDR: &str = "127.0.0.1:8000";

/// An agent killed while it applies a large update: the kernel keeps
/// deciding with one whole generation (never a mix), and the restarted
/// agent applies the new one.
#[test]
fn killed_mid_update_keeps_a_whole_generation() {
    let mut node = Node::start("killed_mid_update", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    // Clients enrolled now, connecting after the agent is gone.
    let trigger = node.dir.join("go");
    let waiting = |sa: &str| {
        let mut c = node.workload("ambient-demo", sa, &[]);
        c.arg(probe_bin())
            .arg("on")
            .arg(ADDR)
            .arg(&trigger)
            .process_group(0)
            .stdout(Stdio::piped());
        let mut child = c.spawn().expect("starting a client");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert_eq!(
            lines.next().and_then(Result::ok).as_deref(),
            Some("waiting")
        );
        (Server(child), lines)
    };
    let (_s, mut sleep_out) = waiting("sleep");
    let (_o, mut other_out) = waiting("other");
    // The new policy lets `other` in instead of `sleep`, among thousands of
    // policies for other workloads, so applying it takes a while.
    let mut big = DEMO.replace("sa/sleep", "sa/other");
    for i in 0..3_000 {
        let _ = write!(
            big,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ambient-demo}}\nspec:\n  selector: {{matchLabels: {{app: a{i}}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/x/sa/s{i}]}}\n"
        );
    }
    node.write_config("demo.yaml", &big);
    std::thread::sleep(Duration::from_millis(40));
    node.stop_agent(Signal::SIGKILL);
    std::fs::write(&trigger, "").expect("pulling the trigger");
    let outcome = |lines: &mut std::io::Lines<_>| -> String {
        lines.next().and_then(Result::ok).unwrap_or_default()
    };
    let (sleep, other) = (outcome(&mut sleep_out), outcome(&mut other_out));
    assert!(
        matches!(
            (sleep.as_str(), other.as_str()),
            ("connected", "not-permitted") | ("not-permitted", "connected")
        ),
        "a mix of generations: sleep {sleep:?}, other {other:?}\n{}",
        node.log()
    );
    node.spawn_agent();
    assert_eq!(
        node.connect_as("ambient-demo", "other", ADDR),
        Outcome::Connected
    );
    assert_eq!(
        node.connect_as("ambient-demo", "sleep", ADDR),
        Outcome::NotPermitted
    );
}

/// No room to write the node CA: the agent refuses to start, naming the
/// file and the reason, and starts once there is room.
#[test]
fn disk_full_for_certificates_refuses_to_start_then_recovers() {
    let mut node = Node::bare("disk_full");
    node.write_config("demo.yaml", DEMO);
    let ca = node.dir.join("ca");
    std::fs::create_dir_all(&ca).expect("creating the CA directory");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
            .arg(&ca),
    );
    // Fill it.
    let _ = std::fs::write(ca.join("filler"), vec![0u8; 64 * 1024]);
    node.agent_args = vec!["--ca-dir".into(), ca.display().to_string()];
    let out = node.agent_command().output().expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = Command::new("umount").arg(&ca).status();
    assert!(
        !out.status.success(),
        "started without room for its CA: {stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains(&ca.display().to_string()), "{stderr}");
    assert!(!node.bpffs_dir().exists() || node.log().is_empty());

    // Room again: it starts and enforces.
    node.spawn_agent();
    let _httpbin = node.server("ambient-demo", "httpbin", &HTTPBIN, ADDR);
    assert_eq!(node.connect_plaintext(ADDR), Outcome::Refused);
}
