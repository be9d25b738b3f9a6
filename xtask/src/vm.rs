//! `cargo xtask integration-test [--vm] [--kernel NAME]...`: the privileged
//! integration tests, on the host or in a qemu VM per kernel.
//!
//! In a VM the same test binary runs against the kernel under test: the
//! guest is an initramfs (see [`initramfs`]) holding the test binary, the
//! agent, `zgate-probe`, the host's `ip` and `nsenter` with their shared
//! libraries, busybox, and the modules the tests need; its init mounts
//! what the harness expects, runs the tests, prints
//! `ZGATE-VM-RESULT: <exit code>` and powers off. Kernels are Debian's
//! `linux-image-*` packages, fetched with apt once and cached under
//! `$ZGATE_CACHE_DIR/kernels/`.

use std::{
    path::PathBuf,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    build::{binary_path, build, require_root, workspace_root, Options as BuildOptions},
    setup::cache_dir,
    test::{cargo_test, finish, Tally},
};

mod apt;
mod cpio;
mod initramfs;
pub mod kernel;
mod qemu;

#[derive(clap::Args)]
pub struct Options {
    /// Run the tests in a qemu VM per kernel instead of on the host.
    #[arg(long)]
    pub vm: bool,
    /// A kernel to boot (repeatable; with --vm): `6.1` (the default),
    /// `6.12`, or an exact Debian package name `linux-image-<version>-amd64`.
    #[arg(long = "kernel", value_name = "NAME", requires = "vm")]
    pub kernels: Vec<String>,
    /// Give up on a kernel's VM after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Arguments for the test binary (a name filter, `--exact`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The result of the VM runs: counts over all kernels, and whether every
/// kernel's run succeeded.
pub struct Matrix {
    pub tally: Tally,
    pub ok: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<ExitCode> {
    build(&BuildOptions { release: false })?;
    if !opts.vm {
        require_root("run the integration tests (they load BPF programs into the kernel)")?;
        let (tally, status) = cargo_test(&["--package", "zgate-tests"], &opts.args)?;
        return Ok(finish(tally, status.success()));
    }
    let kernels = if opts.kernels.is_empty() {
        vec![kernel::DEFAULT.to_owned()]
    } else {
        opts.kernels.clone()
    };
    let matrix = run_matrix(&kernels, Duration::from_secs(opts.timeout), &opts.args)?;
    Ok(finish(matrix.tally, matrix.ok))
}

/// Run the integration test binary in a VM on each of `kernels`; each
/// kernel's result is printed as it ends. Fails only if the guest cannot be
/// built; a kernel that does not boot or report counts as a failure.
pub fn run_matrix(
    kernels: &[String],
    timeout: Duration,
    args: &[String],
) -> anyhow::Result<Matrix> {
    let (test_binary, probe) = test_binaries()?;
    let guest = initramfs::Guest {
        test_binary,
        agent: binary_path(false)?,
        probe,
        test_args: args.to_vec(),
    };
    let target = binary_path(false)?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("vm"))
        .context("the target directory")?;
    let cache = cache_dir();
    let mut matrix = Matrix {
        tally: Tally::default(),
        ok: true,
    };
    for name in kernels {
        let start = Instant::now();
        match run_kernel(name, &guest, &target, &cache, timeout) {
            Ok((release, report)) => {
                println!(
                    "vm tests on {release}: {} passed, {} failed ({} s)",
                    report.passed,
                    report.failed,
                    start.elapsed().as_secs()
                );
                matrix.tally.passed += report.passed;
                matrix.tally.failed += report.failed;
                if report.exit_code != 0 {
                    matrix.ok = false;
                    if report.failed == 0 {
                        // Failed without a failing test (no test ran, or the
                        // binary crashed): count the run itself.
                        matrix.tally.failed += 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("xtask: error: VM run on kernel {name}: {e:#}");
                println!(
                    "vm tests on {name}: no result ({} s)",
                    start.elapsed().as_secs()
                );
                matrix.tally.failed += 1;
                matrix.ok = false;
            }
        }
    }
    Ok(matrix)
}

/// One kernel: fetch it, build its initramfs, boot, report.
fn run_kernel(
    name: &str,
    guest: &initramfs::Guest,
    target: &std::path::Path,
    cache: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<(String, qemu::Report)> {
    let kernel = kernel::Kernel::fetch(name, &cache.join("kernels"))?;
    let dir = target.join(&kernel.package);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initramfs = dir.join("initramfs.cpio");
    initramfs::write(&kernel, guest, &initramfs)?;
    let report = qemu::Boot {
        label: &kernel.release,
        vmlinuz: &kernel.vmlinuz,
        initramfs: &initramfs,
        console_log: &dir.join("console.log"),
        timeout,
    }
    .run(cache)?;
    Ok((kernel.release, report))
}

/// Build the integration tests without running them; returns the paths of
/// the test binary and of `zgate-probe` (as cargo compiled it into the
/// test binary).
fn test_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = std::process::Command::new("cargo")
        .current_dir(workspace_root()?)
        .args([
            "test",
            "--locked",
            "--package",
            "zgate-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed ({})", out.status);
    }
    let (mut test, mut probe) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        match (
            message["target"]["name"].as_str(),
            message["profile"]["test"].as_bool(),
        ) {
            (Some("integration"), Some(true)) => test = Some(PathBuf::from(executable)),
            (Some("zgate-probe"), Some(false)) => probe = Some(PathBuf::from(executable)),
            _ => {}
        }
    }
    Ok((
        test.context("cargo built no `integration` test binary")?,
        probe.context("cargo built no zgate-probe")?,
    ))
}

/// 20 minutes: the full suite under TCG takes a fraction of it.
const DEFAULT_TIMEOUT_SECS: u64 = 20 * 60;
