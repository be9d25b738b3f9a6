//! `cargo xtask test`: everything CI runs, in order — formatting, clippy
//! (warnings are errors), the unit tests, then the privileged integration
//! tests that load the real programs into the running kernel. Nothing is
//! skipped silently: a test that cannot run fails and says why.

use crate::build::{binary_path, build, cmd, require_root, Options as BuildOptions};

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
    let binary = binary_path(false)?;
    cmd("cargo", |c| {
        c.args(["test", "--locked", "--workspace", "--no-fail-fast", "--"])
            .args(&opts.args)
            .env("ZGATE_BIN", &binary)
    })
}
