//! Boots a kernel and initramfs under qemu, streams the guest's console,
//! and reads the test results from it; a deadline kills the VM, so a run
//! never hangs.
//!
//! KVM is used where it boots a kernel; where it does not (nested
//! virtualisation that lacks what qemu asks of it, as on this project's
//! machines), the first run finds out in a few seconds, falls back to TCG
//! (`-accel tcg`, multi-threaded) and records that in the cache.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::apt;

/// One guest boot.
pub struct Boot<'a> {
    /// Printed before each guest line, e.g. `6.1.0-56-amd64`.
    pub label: &'a str,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// The whole console goes here too.
    pub console_log: &'a Path,
    pub timeout: Duration,
}

/// What the guest reported.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: u64,
    pub failed: u64,
    /// The test binary's exit code (`ZGATE-VM-RESULT:`).
    pub exit_code: i32,
}

/// How qemu runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Kvm,
    Tcg,
}

/// Why a boot gave no report.
enum Failure {
    /// KVM did not get the kernel to print its banner: use TCG.
    KvmUnusable(String),
    Other(anyhow::Error),
}

// === impl Failure ===

impl Failure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Self::KvmUnusable(why) => anyhow::anyhow!("the guest did not boot: {why}"),
            Self::Other(e) => e,
        }
    }
}

// === impl Boot ===

impl Boot<'_> {
    /// Boot, run the tests, and return what the guest reported. Fails if the
    /// guest does not report (kernel panic, timeout, missing marker).
    pub fn run(&self, cache: &Path) -> anyhow::Result<Report> {
        let qemu = apt::ensure_program("qemu-system-x86_64", "qemu-system-x86")?;
        let record = cache.join(format!("accel-{}", host_release()));
        let accel = match std::env::var("ZGATE_VM_ACCEL").as_deref() {
            Ok("tcg") => Accel::Tcg,
            Ok("kvm") => Accel::Kvm,
            _ if !kvm_available() => Accel::Tcg,
            _ if fs::read_to_string(&record).is_ok_and(|r| r.trim() == "tcg") => Accel::Tcg,
            _ => Accel::Kvm,
        };
        match self.boot(&qemu, accel) {
            Ok(report) => Ok(report),
            Err(Failure::KvmUnusable(why)) => {
                eprintln!(
                    "xtask: KVM cannot boot the guest here ({why}); using TCG (recorded in {})",
                    record.display()
                );
                let _ = fs::write(&record, "tcg\n");
                self.boot(&qemu, Accel::Tcg).map_err(Failure::into_error)
            }
            Err(Failure::Other(e)) => Err(e),
        }
    }

    fn boot(&self, qemu: &Path, accel: Accel) -> Result<Report, Failure> {
        let mut child = self.spawn(qemu, accel).map_err(Failure::Other)?;
        let result = self.watch(&mut child, accel);
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    fn spawn(&self, qemu: &Path, accel: Accel) -> anyhow::Result<Child> {
        let mut c = Command::new(qemu);
        match accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        };
        c.args([
            "-smp",
            "2",
            "-m",
            "2048",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(self.vmlinuz)
        .arg("-initrd")
        .arg(self.initramfs)
        .args(["-append", KERNEL_CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let accel = match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        };
        eprintln!(
            "xtask: booting {} under qemu ({accel}; at most {} s)",
            self.label,
            self.timeout.as_secs()
        );
        c.spawn().context("starting qemu-system-x86_64")
    }

    /// Read the console until the guest reports and powers off, or the
    /// deadline passes.
    fn watch(&self, child: &mut Child, accel: Accel) -> Result<Report, Failure> {
        let fail = |e: anyhow::Error| Failure::Other(e);
        let rx = console_lines(child);
        let mut log = fs::File::create(self.console_log)
            .with_context(|| format!("creating {}", self.console_log.display()))
            .map_err(fail)?;
        let start = Instant::now();
        let mut deadline = start + self.timeout;
        let mut console = Console::default();
        loop {
            if accel == Accel::Kvm && !console.banner && start.elapsed() > KVM_BANNER_WAIT {
                return Err(Failure::KvmUnusable(format!(
                    "no kernel banner after {} s",
                    KVM_BANNER_WAIT.as_secs()
                )));
            }
            let wait = if accel == Accel::Kvm && !console.banner {
                Duration::from_secs(1)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let line = match rx.recv_timeout(wait) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(fail(self.gave_up(&console, "timed out")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let _ = writeln!(log, "{line}");
            if console.read(&line) {
                println!("[{}] {line}", self.label);
            }
            if console.report.is_some() {
                // Give the guest a moment to power off, but never wait long.
                deadline = deadline.min(Instant::now() + POWEROFF_WAIT);
            }
        }
        match console.report {
            Some(report) => Ok(report),
            None if accel == Accel::Kvm && !console.banner => Err(Failure::KvmUnusable(
                console
                    .tail
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "qemu exited".into()),
            )),
            None => Err(fail(
                self.gave_up(&console, "the guest stopped without reporting a result"),
            )),
        }
    }

    fn gave_up(&self, console: &Console, what: &str) -> anyhow::Error {
        let stage = if console.init {
            "while the tests ran"
        } else if console.banner {
            "before its init started"
        } else {
            "before the kernel printed anything"
        };
        anyhow::anyhow!(
            "kernel {}: {what} {stage}; the last console lines:\n{}\n(whole console: {})",
            self.label,
            console.tail.join("\n"),
            self.console_log.display()
        )
    }
}

/// What has been seen on the console so far.
#[derive(Default)]
struct Console {
    banner: bool,
    init: bool,
    report: Option<Report>,
    counts: (u64, u64),
    tail: Vec<String>,
}

// === impl Console ===

impl Console {
    /// Take in one line; true if it should be shown (everything from the
    /// guest's init on; the kernel's boot log stays in the console log).
    fn read(&mut self, line: &str) -> bool {
        self.tail.push(line.to_owned());
        if self.tail.len() > TAIL_LINES {
            self.tail.remove(0);
        }
        if line.contains("Linux version") {
            self.banner = true;
        }
        if line.starts_with("ZGATE-VM-INIT:") {
            self.init = true;
        }
        if let Some(result) = line.strip_prefix("test result: ") {
            self.counts = (
                crate::test::count(result, " passed"),
                crate::test::count(result, " failed"),
            );
        }
        if let Some(code) = line
            .split_once("ZGATE-VM-RESULT: ")
            .and_then(|(_, code)| code.trim().parse().ok())
        {
            self.report = Some(Report {
                passed: self.counts.0,
                failed: self.counts.1,
                exit_code: code,
            });
            return true;
        }
        self.init && self.report.is_none()
    }
}

/// The lines qemu prints (the guest's console on stdout, qemu's own errors
/// on stderr), as they come; the channel closes when qemu exits.
fn console_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// `/dev/kvm` opens read-write.
fn kvm_available() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The host kernel's release: whether KVM works is a property of it (and of
/// the hypervisor under it).
fn host_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// `panic=-1` with qemu's `-no-reboot`: a guest panic ends qemu at once.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init";
/// A kernel under KVM prints its banner in about a second.
const KVM_BANNER_WAIT: Duration = Duration::from_secs(20);
const POWEROFF_WAIT: Duration = Duration::from_secs(30);
const TAIL_LINES: usize = 40;

#[cfg(test)]
mod tests {
    use super::Console;

    #[test]
    fn console_reports() {
        let mut c = Console::default();
        assert!(!c.read("[    0.000000] Linux version 6.1.0-56-amd64"));
        assert!(c.banner);
        assert!(c.read("ZGATE-VM-INIT: 6.1.0-56-amd64"));
        assert!(c.read("test allow_sleep_to_httpbin ... ok"));
        c.read("test result: FAILED. 11 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s");
        assert!(c.read("ZGATE-VM-RESULT: 101"));
        let report = c.report.unwrap();
        assert_eq!(
            (report.passed, report.failed, report.exit_code),
            (11, 1, 101)
        );
    }
}
