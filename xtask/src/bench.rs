//! `cargo xtask bench`: every benchmark, optimised, printing its figures;
//! with `--report DIR`, also a Markdown report with SVG plots.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::build::{binary_path, build, cmd, require_root, workspace_root, Options};

mod report;

#[derive(clap::Args)]
pub struct BenchOptions {
    /// Also write `DIR/report.md` and its SVG plots.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

pub fn run(opts: &BenchOptions) -> anyhow::Result<()> {
    build(&Options { release: true })?;
    let compile = capture(&["-p", "zgate", "--bench", "compile"], None)?;
    require_root("run the datapath benchmarks (they load BPF programs into the kernel)")?;
    let agent = binary_path(true)?;
    let datapath = capture(&["-p", "zgate-tests", "--bench", "datapath"], Some(&agent))?;
    if let Some(dir) = &opts.report {
        report::write(dir, &compile, &datapath)?;
    }
    Ok(())
}

/// Run one `cargo bench` target, echoing and returning its stdout.
fn capture(args: &[&str], agent: Option<&Path>) -> anyhow::Result<String> {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root()?)
        .args(["bench", "--locked"])
        .args(args)
        .stdout(Stdio::piped());
    if let Some(agent) = agent {
        c.env("ZGATE_BIN", agent);
    }
    let mut child = c.spawn().context("running cargo bench")?;
    let stdout = child.stdout.take().context("cargo bench's stdout")?;
    let mut out = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo bench {} failed ({status})", args.join(" "));
    }
    Ok(out)
}

/// `cargo xtask soak --duration 10m`: the churn soak (as root).
#[derive(clap::Args)]
pub struct SoakOptions {
    /// How long: `90s`, `10m`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: u64,
}

pub fn soak(opts: &SoakOptions) -> anyhow::Result<()> {
    build(&Options { release: true })?;
    require_root("run the soak (it loads BPF programs into the kernel)")?;
    let agent = binary_path(true)?;
    cmd("cargo", |c| {
        c.args(["bench", "--locked", "-p", "zgate-tests", "--bench", "soak"])
            .env("ZGATE_BIN", &agent)
            .env("ZGATE_SOAK_SECS", opts.duration.to_string())
    })
}

/// Seconds from `90s`, `10m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.trim_end_matches(['s', 'm', 'h']).len());
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m or 1h"))?;
    Ok(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration like 90s, 10m or 1h")),
    })
}
