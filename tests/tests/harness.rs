//! The harness of zgate's privileged integration tests.
//!
//! Each `Node` is a real agent in a network namespace of its own, with its
//! own cgroup subtree, bpffs pin directory, admin socket and config
//! directory, so tests run in parallel without seeing each other. Every
//! resource is removed on drop; the agent's log is printed if the test
//! failed.
#![expect(
    clippy::expect_used,
    reason = "a test harness: a failed set-up step is a test failure"
)]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What a client saw (the probe's one-line report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    /// `ECONNREFUSED`: the accept-side verdict (RST at SYN time).
    Refused,
    /// `EPERM`: the connect-side verdict, before any packet was sent.
    NotPermitted,
    /// `ECONNRESET`: the connection was accepted, then reset (an HBONE
    /// CONNECT the destination refused).
    Reset,
    Other(String),
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    /// Extra `zgate agent` flags.
    pub agent_args: Vec<String>,
    /// The `zgate` binary this node runs (`zgate_bin()` unless started with
    /// `start_using`).
    bin: PathBuf,
    agent: Option<Child>,
}

/// A running server workload (`zgate run` and the server it started, in a
/// process group of their own); the whole group is killed on drop.
pub struct Server(pub Child);

/// Another host: a network namespace joined to a node by a veth pair.
pub struct PeerHost {
    pub netns: String,
}

impl PeerHost {
    /// Connect from this host, from `source` (one of its addresses).
    pub fn connect_from(&self, source: &str, addr: &str) -> Outcome {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(probe_bin())
            .args(["connect", addr])
            .env("PROBE_SOURCE", source);
        outcome(&run_ok(&mut c))
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// A connection held open by a client workload.
pub struct Held {
    _group: Server,
    lines: BufReader<std::process::ChildStdout>,
}

impl Held {
    /// How the connection ended (`closed`, `reset`), or `held` if it
    /// survived its hold time; and how long after the call that was known.
    pub fn end(&mut self) -> (String, Duration) {
        let started = Instant::now();
        let line = self.next_line();
        (line, started.elapsed())
    }

    /// The next line the process printed, trimmed.
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.lines.read_line(&mut line);
        line.trim().to_owned()
    }
}

impl Server {
    /// Run `probe` (a command that starts the probe) as a server in `mode`
    /// (`serve`, `greet`) on `addr`, in a process group of its own; the
    /// line it printed instead of `listening` if it did not start.
    pub fn start(mut probe: Command, mode: &str, addr: &str) -> Result<Self, String> {
        let mut child = probe
            .args([mode, addr])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the server: {e}"))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let server = Self(child);
        match line.trim() {
            "listening" => Ok(server),
            other => Err(other.to_owned()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Fail, loudly, unless the tests can really run here.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests load BPF programs and manage cgroups and network namespaces: run them as root (cargo xtask test)"
    );
}

pub fn zgate_bin() -> PathBuf {
    match std::env::var_os("ZGATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/zgate"),
    }
}

pub fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zgate-probe"))
}

impl Node {
    /// Start an agent in a fresh network namespace on `files` (name, YAML).
    pub fn start(test: &str, files: &[(&str, &str)]) -> Self {
        Self::start_with(test, files, &[])
    }

    /// `start`, with extra `zgate agent` flags.
    pub fn start_with(test: &str, files: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_using(zgate_bin(), test, files, args)
    }

    /// `start_with`, running the agent of another `zgate` binary.
    pub fn start_using(bin: PathBuf, test: &str, files: &[(&str, &str)], args: &[&str]) -> Self {
        let mut node = Self::bare(test);
        node.bin = bin;
        node.agent_args = args.iter().map(|a| a.to_string()).collect();
        for (file, yaml) in files {
            node.write_config(file, yaml);
        }
        node.spawn_agent();
        node
    }

    /// A fresh network namespace (loopback up) and directories, no agent.
    pub fn bare(test: &str) -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("zgt-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let config_dir = dir.join("config");
        fs::create_dir_all(&config_dir).expect("creating the test directory");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self {
            name: format!("{test}/{name}"),
            netns: name,
            dir,
            config_dir,
            agent_args: Vec::new(),
            bin: zgate_bin(),
            agent: None,
        }
    }

    pub fn write_config(&self, file: &str, yaml: &str) {
        let path = self.config_dir.join(file);
        // Write then rename, as a config management tool would.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml).expect("writing config");
        fs::rename(&tmp, &path).expect("renaming config");
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn cgroup_root(&self) -> PathBuf {
        zgate::agent::cgroup2_mount()
            .expect("a cgroup v2 mount")
            .join(&self.netns)
    }

    pub fn bpffs_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.netns)
    }

    /// The kernel's verdict counters: (policy id, reason, hook) → count.
    pub fn verdict_counts(&self) -> Vec<(zgate_common::stats::VerdictKey, u64)> {
        let paths = zgate::bpf::Paths::new(Path::new("/sys/fs/bpf"), &self.netns);
        zgate::bpf::pinned_verdict_counts(&paths).expect("reading ZG_VERDICTS")
    }

    /// The kernel's count of verdicts for `reason` taken at `hook`, over
    /// every policy.
    pub fn verdicts(&self, reason: u8, hook: u8) -> u64 {
        self.verdict_counts()
            .iter()
            .filter(|(k, _)| k.reason == reason && k.hook == hook)
            .map(|(_, n)| n)
            .sum()
    }

    /// Entries in this node's (`ZG_ORIG_DST`, open `ZG_CONN_PEER`).
    pub fn connection_entries(&self) -> (u64, u64) {
        let paths = zgate::bpf::Paths::new(Path::new("/sys/fs/bpf"), &self.netns);
        zgate::bpf::ConnTable::open(&paths)
            .expect("opening the connection maps")
            .entries()
            .expect("counting the connection maps' entries")
    }

    /// The 5-tuples in this node's `ZG_CONN_PEER` (not its slots).
    pub fn conn_peer_keys(&self) -> Vec<zgate_common::conn::ConnKey> {
        let paths = zgate::bpf::Paths::new(Path::new("/sys/fs/bpf"), &self.netns);
        let pin = paths.maps().join(zgate_common::conn::MAP);
        let map = aya::maps::MapData::from_pin(&pin).expect("opening ZG_CONN_PEER");
        let peers: aya::maps::HashMap<
            _,
            zgate_common::conn::ConnKey,
            zgate_common::conn::ConnPeer,
        > = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("a hash");
        peers.keys().filter_map(Result::ok).collect()
    }

    fn node_args(&self) -> Vec<String> {
        vec![
            "--cgroup-root".into(),
            self.cgroup_root().display().to_string(),
            "--instance".into(),
            self.netns.clone(),
            "--admin-socket".into(),
            self.admin_socket().display().to_string(),
            "--state-dir".into(),
            self.dir.display().to_string(),
        ]
    }

    /// A command that runs inside this node's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program);
        c
    }

    /// `zgate agent` for this node, not started.
    pub fn agent_command(&self) -> Command {
        let mut c = self.command(&self.bin);
        c.arg("agent")
            .arg("--config")
            .arg(&self.config_dir)
            .args(self.node_args())
            .args(&self.agent_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        c
    }

    pub fn spawn_agent(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("opening the agent log");
        let _ = fs::remove_file(self.admin_socket());
        let ready = self.log().matches("zgate agent ready").count();
        let child = self
            .agent_command()
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting zgate agent");
        self.agent = Some(child);
        // A hang guard, not a startup-time target: under the VM stage's
        // emulated CPU the verifier alone takes ~12 s, and a restart on a
        // large config more.
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.log().matches("zgate agent ready").count() == ready {
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|a| a.try_wait().ok().flatten())
            {
                panic!("the agent exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    pub fn signal_agent(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.agent_pid() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(pid, signal).expect("signalling the agent");
        }
    }

    /// Stop the agent with a signal and wait for it.
    pub fn stop_agent(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.agent.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Wait until the agent's log has `needle` more than `count` times.
    pub fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() <= count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `zgate run` a command as a workload of this node.
    pub fn workload(&self, ns: &str, sa: &str, labels: &[&str]) -> Command {
        let mut c = self.command(&self.bin);
        c.args([
            "run",
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--name",
            sa,
        ])
        .arg("--admin-socket")
        .arg(self.admin_socket());
        for l in labels {
            c.args(["--label", l]);
        }
        c.arg("--");
        c
    }

    /// Start a server workload on `addr`; returns once it listens.
    pub fn server(&self, ns: &str, sa: &str, labels: &[&str], addr: &str) -> Server {
        let mut probe = self.workload(ns, sa, labels);
        probe.arg(probe_bin());
        Server::start(probe, "serve", addr)
            .unwrap_or_else(|line| panic!("server on {addr}: {line}\n{}", self.log()))
    }

    /// Open a connection from a workload and keep it open for `secs`;
    /// returns once it is established.
    pub fn hold_as(&self, ns: &str, sa: &str, addr: &str, secs: u32) -> Held {
        self.hold(self.workload(ns, sa, &[]), addr, secs)
    }

    /// As [`Node::hold_as`], from the source address `source` (`IP:PORT`).
    pub fn hold_from(&self, ns: &str, sa: &str, source: &str, addr: &str, secs: u32) -> Held {
        let mut c = self.workload(ns, sa, &[]);
        c.env("PROBE_SOURCE", source);
        self.hold(c, addr, secs)
    }

    fn hold(&self, mut workload: Command, addr: &str, secs: u32) -> Held {
        workload
            .arg(probe_bin())
            .args(["connect", addr, &secs.to_string()]);
        let what = format!("{workload:?}");
        let mut held = spawn_lines(workload);
        let line = held.next_line();
        assert_eq!(line, "connected", "{what}:\n{}", self.log());
        held
    }

    /// Connect from a workload with this identity.
    pub fn connect_as(&self, ns: &str, sa: &str, addr: &str) -> Outcome {
        let mut c = self.workload(ns, sa, &[]);
        c.arg(probe_bin()).args(["connect", addr]);
        outcome(&run_ok(&mut c))
    }

    /// Entries in the kernel map `map` as `zgate status --json` reports it.
    pub fn map_entries(&self, map: &str) -> u64 {
        let text = self.zgate(&["status", "--json"]);
        let status: zgate::agent::status::Status = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("zgate status --json: {e}\n{text}"));
        status
            .maps
            .iter()
            .find(|m| m.map == map)
            .unwrap_or_else(|| panic!("no map {map} in the status:\n{text}"))
            .entries
    }

    /// Wait up to `secs` for `done` to hold (map counts the kernel drains
    /// as sockets go); panic with the agent's status if it does not.
    pub fn wait_for(&self, secs: u64, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !done(self) {
            assert!(Instant::now() < deadline, "{}", self.zgate(&["status"]));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A second host on a /24: the node gets `<net>.1`, the peer host
    /// `<net>.2` and `<net>.3`.
    pub fn peer_host(&self, net: &str) -> PeerHost {
        let peer = format!("{}p", self.netns);
        let (a, b) = (format!("{}a", self.netns), format!("{}b", self.netns));
        run_ok(Command::new("ip").args(["netns", "add", &peer]));
        let host = PeerHost {
            netns: peer.clone(),
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&[
            "-n",
            &self.netns,
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &peer,
        ]);
        ip(&[
            "-n",
            &self.netns,
            "addr",
            "add",
            &format!("{net}.1/24"),
            "dev",
            &a,
        ]);
        ip(&[
            "-n",
            &peer,
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            &b,
        ]);
        ip(&[
            "-n",
            &peer,
            "addr",
            "add",
            &format!("{net}.3/24"),
            "dev",
            &b,
        ]);
        for (ns, dev) in [(&self.netns, &a), (&peer, &b)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        host
    }

    /// Two nodes of one mesh, joined by a veth pair (`mesh0` on both
    /// sides) on `<net>.0/24`: node A gets `<net>.1` plus `a_addrs`, node
    /// B `<net>.2` plus `b_addrs` (workload addresses, last octets). Both
    /// agents run on the same `files` and the same root CA, with `args`.
    pub fn pair(
        test: &str,
        net: &str,
        (a_addrs, b_addrs): (&[u8], &[u8]),
        files: &[(&str, &str)],
        args: &[&str],
    ) -> (Node, Node) {
        let mut a = Node::bare(test);
        let mut b = Node::bare(test);
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&[
            "-n", &a.netns, "link", "add", "mesh0", "type", "veth", "peer", "name", "mesh0",
            "netns", &b.netns,
        ]);
        for (node, own, extra) in [(&a, 1u8, a_addrs), (&b, 2u8, b_addrs)] {
            for last in std::iter::once(&own).chain(extra) {
                let addr = format!("{net}.{last}/24");
                ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "mesh0"]);
            }
            ip(&["-n", &node.netns, "link", "set", "mesh0", "up"]);
        }
        let ca = a.dir.join("mesh-ca");
        zgate::ca::CertificateAuthority::load_or_generate(&ca).expect("generating the mesh root");
        for node in [&mut a, &mut b] {
            node.agent_args = ["--ca-dir", &ca.display().to_string()]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect();
            for (file, yaml) in files {
                node.write_config(file, yaml);
            }
            node.spawn_agent();
        }
        (a, b)
    }

    /// Capture on this node's `iface` while `traffic` runs: (TCP packets
    /// by port, packets whose payload holds `needle`).
    pub fn sniff(
        &self,
        iface: &str,
        needle: &str,
        traffic: impl FnOnce(),
    ) -> (std::collections::BTreeMap<u16, u64>, u64) {
        let mut child = self
            .command(probe_bin())
            .args(["sniff", iface, needle, "4"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the sniffer");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, "sniffing", "the sniffer failed");
        traffic();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = child.wait();
        let mut ports = std::collections::BTreeMap::new();
        let mut found = u64::MAX;
        for line in &rest {
            if let Some(list) = line.strip_prefix("tcp ") {
                for pair in list.split_whitespace() {
                    if let Some((p, n)) = pair.split_once(':') {
                        ports.insert(p.parse().expect("port"), n.parse().expect("count"));
                    }
                }
            } else if let Some(n) = line.strip_prefix("needle ") {
                found = n.parse().expect("count");
            }
        }
        assert_ne!(found, u64::MAX, "the sniffer said: {rest:?}");
        (ports, found)
    }

    /// Run a `zgate` subcommand that talks to this node's agent.
    pub fn zgate(&self, args: &[&str]) -> String {
        let mut c = self.command(&self.bin);
        c.arg(args[0])
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(&args[1..]);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    }

    /// GET `path` from the agent's metrics or readiness server.
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        let mut c = self.command(probe_bin());
        c.args(["get", addr, path]);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    }

    /// Connect from a plain process (not enrolled: plaintext, no identity).
    /// One bare ACK segment from `port` on `addr`'s address to `addr`, as
    /// a connection's trailing segment would arrive (`zgate-probe segment`).
    pub fn send_segment(&self, addr: &str, port: u16) {
        let mut c = self.command(probe_bin());
        c.args(["segment", addr, &port.to_string()]);
        let out = run_ok(&mut c);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent");
    }

    pub fn connect_plaintext(&self, addr: &str) -> Outcome {
        let mut c = self.command(probe_bin());
        c.args(["connect", addr]);
        outcome(&run_ok(&mut c))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log of {} ---\n{}", self.name, self.log());
        }
        self.stop_agent(nix::sys::signal::Signal::SIGINT);
        // Whatever the agent left (a killed agent leaves its pins): clean up.
        let _ = Command::new(&self.bin)
            .arg("uninstall")
            .args(self.node_args())
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn outcome(out: &Output) -> Outcome {
    match String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
    {
        "connected" => Outcome::Connected,
        "refused" => Outcome::Refused,
        "not-permitted" => Outcome::NotPermitted,
        "reset" => Outcome::Reset,
        other => Outcome::Other(format!(
            "{other} (stderr: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Start a command in its own process group (killed when the value is
/// dropped), to read its output line by line.
pub fn spawn_lines(mut c: Command) -> Held {
    let mut child = c
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {c:?}: {e}"));
    let lines = BufReader::new(child.stdout.take().expect("piped stdout"));
    Held {
        _group: Server(child),
        lines,
    }
}

/// Run a command to completion; panic with its output if it fails to start.
pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{c:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}
