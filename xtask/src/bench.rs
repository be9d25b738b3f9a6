//! `cargo xtask bench`: every benchmark, optimised, printing its figures.

use crate::build::{binary_path, build, cmd, require_root, Options};

pub fn run() -> anyhow::Result<()> {
    build(&Options { release: true })?;
    cmd("cargo", |c| {
        c.args(["bench", "--locked", "-p", "zgate", "--bench", "compile"])
    })?;
    require_root("run the datapath benchmarks (they load BPF programs into the kernel)")?;
    let agent = binary_path(true)?;
    cmd("cargo", |c| {
        c.args([
            "bench",
            "--locked",
            "-p",
            "zgate-tests",
            "--bench",
            "datapath",
        ])
        .env("ZGATE_BIN", &agent)
    })
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
