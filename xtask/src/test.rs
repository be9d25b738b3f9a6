//! `cargo xtask test`: everything CI runs, in order — formatting, clippy
//! (warnings are errors), the unit tests, the privileged integration tests
//! that load the real programs into the running kernel, and then the same
//! integration tests in a VM on Debian 12's 6.1 kernel, so a regression on
//! the oldest supported kernel fails CI too. Nothing is skipped silently: a
//! test that cannot run fails and says why. The last line is one summary
//! over every test binary and the VM.

use std::{
    io::{BufRead as _, BufReader},
    ops::AddAssign,
    process::{Command, ExitCode, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    build::{binary_path, build, cmd, require_root, workspace_root, Options as BuildOptions},
    vm,
};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the VM stage (the integration tests on Debian's 6.1 kernel
    /// under qemu); CI runs it.
    #[arg(long)]
    pub no_vm: bool,
    /// Extra arguments for the test binaries (a name filter, `--nocapture`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Tests passed and failed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

pub fn run(opts: &Options) -> anyhow::Result<ExitCode> {
    build(&BuildOptions { release: false })?;
    if !opts.no_lint {
        cmd("cargo", |c| c.args(["fmt", "--all", "--", "--check"]))?;
        cmd("cargo", |c| {
            c.args([
                "clippy",
                "--locked",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        })?;
    }
    require_root("run the integration tests (they load BPF programs into the kernel)")?;
    let (mut tally, status) = cargo_test(&["--workspace"], &opts.args)?;
    let mut ok = status.success();
    if !status.success() {
        eprintln!("xtask: cargo test failed ({status})");
    }
    if !opts.no_vm {
        let start = Instant::now();
        let kernels = [vm::kernel::DEFAULT.to_owned()];
        match vm::run_matrix(&kernels, VM_TIMEOUT, &opts.args) {
            Ok(matrix) => {
                tally += matrix.tally;
                ok &= matrix.ok;
            }
            Err(e) => {
                eprintln!("xtask: error: the VM stage could not run: {e:#}");
                tally.failed += 1;
                ok = false;
            }
        }
        eprintln!("xtask: the VM stage took {} s", start.elapsed().as_secs());
    }
    Ok(finish(tally, ok))
}

/// Run `cargo test` over `scope` with `args` for the test binaries
/// (`ZGATE_BIN` set to the built agent), echoing its output; returns the
/// counts from its `test result:` lines.
pub fn cargo_test(scope: &[&str], args: &[String]) -> anyhow::Result<(Tally, ExitStatus)> {
    let mut child = Command::new("cargo")
        .current_dir(workspace_root()?)
        .args(["test", "--locked", "--no-fail-fast"])
        .args(scope)
        .arg("--")
        .args(args)
        .env("ZGATE_BIN", binary_path(false)?)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            tally.passed += count(result, " passed");
            tally.failed += count(result, " failed");
        }
    }
    Ok((tally, child.wait()?))
}

/// Print the closing summary — the run's last line — and the exit code:
/// failure if anything failed or no test ran.
pub fn finish(tally: Tally, ok: bool) -> ExitCode {
    let Tally { passed, failed } = tally;
    let success = ok && failed == 0 && passed > 0;
    if passed == 0 && failed == 0 {
        eprintln!("xtask: error: no test ran");
    } else if !success {
        eprintln!("xtask: error: tests failed");
    }
    println!("tests: {passed} passed, {failed} failed");
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The number before `label` in cargo's `test result:` line.
pub fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label.trim()))
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

// === impl Tally ===

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        let Self { passed, failed } = other;
        self.passed += passed;
        self.failed += failed;
    }
}

/// The VM stage's deadline: far above its usual time, far below CI's budget.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);
