//! `cargo xtask test`: everything CI runs, in order — formatting, clippy
//! (warnings are errors), the unit tests, then the privileged integration
//! tests that load the real programs into the running kernel. Nothing is
//! skipped silently: a test that cannot run fails and says why.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::build::{
    binary_path, build, cmd, require_root, workspace_root, Options as BuildOptions,
};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the test binaries (a name filter, `--nocapture`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
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
    let mut child = Command::new("cargo")
        .current_dir(workspace_root()?)
        .args(["test", "--locked", "--workspace", "--no-fail-fast", "--"])
        .args(&opts.args)
        .env("ZGATE_BIN", binary_path(false)?)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count(result, " passed");
            failed += count(result, " failed");
        }
    }
    let status = child.wait()?;
    // One closing line for the whole run, over every test binary.
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The number before `label` in cargo's `test result:` line.
fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim().strip_suffix(label.trim()))
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
