//! `cargo xtask build` and `cargo xtask run`.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};

#[derive(clap::Args)]
pub struct Options {
    /// Build with optimisations.
    #[arg(long)]
    pub release: bool,
}

#[derive(clap::Args)]
pub struct RunOptions {
    #[command(flatten)]
    pub build: Options,
    /// Arguments for `zgate` (default: `agent`, on the embedded demo config).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn build(opts: &Options) -> anyhow::Result<()> {
    crate::setup::run()?;
    cmd("cargo", |c| {
        c.args(["build", "--locked", "--package", "zgate", "--bin", "zgate"]);
        if opts.release {
            c.arg("--release");
        }
        c
    })
}

pub fn run(opts: &RunOptions) -> anyhow::Result<ExitCode> {
    build(&opts.build)?;
    require_root("run the agent (it loads BPF programs and manages cgroups)")?;
    let binary = binary_path(opts.build.release)?;
    let args = if opts.args.is_empty() {
        vec!["agent".to_owned()]
    } else {
        opts.args.clone()
    };
    let status = Command::new(&binary)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

/// `target/<profile>/zgate` of this workspace.
pub fn binary_path(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("zgate"))
}

pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .map(PathBuf::from)
        .context("xtask/ has no parent directory")
}

/// Fail with one clear line unless running as root.
pub fn require_root(why: &str) -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        bail!("root is required to {why}: run it as root (e.g. with sudo -E)");
    }
    Ok(())
}

/// Run a program from the workspace root; fail if it fails.
pub fn cmd(program: &str, f: impl FnOnce(&mut Command) -> &mut Command) -> anyhow::Result<()> {
    let mut c = Command::new(program);
    c.current_dir(workspace_root()?);
    f(&mut c);
    let status = c.status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{:?} failed ({status})", c);
    }
    Ok(())
}
