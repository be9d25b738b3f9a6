//! `cargo xtask fuzz [--seconds N] [TARGET]...`: build the cargo-fuzz
//! targets in `agent/fuzz` and run each for a bounded time, printing its
//! executions and any crash. A soak command, not part of `cargo xtask test`.
//!
//! - `cargo-fuzz` is installed once, pinned, under `$ZGATE_CACHE_DIR`.
//! - The build uses the workspace's stable toolchain with
//!   `RUSTC_BOOTSTRAP=1`, scoped to this one cargo, for `-Zsanitizer=address`.
//!   Not nightly: `agent/build.rs` builds the eBPF object into the shared
//!   `target/bpf` with the outer build's `rustc`, and a nightly build there
//!   would make every other build on the machine rebuild it.
//! - Each run starts from the committed seeds (`agent/fuzz/corpus/<target>`,
//!   read only) plus what earlier runs found (`agent/fuzz/target/corpus`),
//!   with `agent/fuzz/dict/<target>.dict` when there is one; crashes are
//!   written to `agent/fuzz/artifacts/<target>/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};

use crate::{build::workspace_root, setup::cache_dir};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Targets to run (default: every one in agent/fuzz/fuzz_targets).
    pub targets: Vec<String>,
}

/// What one target's run did.
struct Outcome {
    target: String,
    execs: Option<u64>,
    execs_per_sec: Option<u64>,
    crash: Option<String>,
    failed: bool,
    log: PathBuf,
}

pub fn run(opts: &Options) -> anyhow::Result<ExitCode> {
    let root = workspace_root()?;
    let fuzz_dir = root.join("agent/fuzz");
    let all = targets(&fuzz_dir)?;
    let selected = if opts.targets.is_empty() {
        all
    } else {
        for t in &opts.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        opts.targets.clone()
    };
    let bin = cargo_fuzz()?;
    cargo_fuzz_cmd(&root, &bin, &["build"])?;
    let mut outcomes = Vec::new();
    for target in &selected {
        outcomes.push(run_target(&root, &fuzz_dir, &bin, target, opts.seconds)?);
    }
    eprintln!("\nxtask: fuzz summary ({} s per target)", opts.seconds);
    let mut crashed = false;
    for o in &outcomes {
        let num = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        eprintln!(
            "  {:<22} {:>12} execs {:>8} execs/s  {}",
            o.target,
            num(o.execs),
            num(o.execs_per_sec),
            match (&o.crash, o.failed) {
                (Some(path), _) => format!("CRASH {path}"),
                (None, true) => format!("FAILED, see {}", o.log.display()),
                (None, false) => "ok".to_owned(),
            }
        );
        crashed |= o.failed;
    }
    if crashed {
        eprintln!(
            "xtask: replay a crash with: RUSTC_BOOTSTRAP=1 {} fuzz run --fuzz-dir agent/fuzz -O -a TARGET PATH",
            bin.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The file stems of `fuzz_targets/*.rs`, sorted.
fn targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                out.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The pinned `cargo-fuzz`, installed under the cache on first use.
fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    let root = cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin/cargo-fuzz");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (once)",
        root.display()
    );
    crate::build::cmd("cargo", |c| {
        c.args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&root)
    })?;
    Ok(bin)
}

/// `cargo fuzz SUBCOMMAND --fuzz-dir agent/fuzz -O -a ARGS`: release with
/// debug assertions, as fuzzing wants both speed and overflow checks.
fn fuzz_command(root: &Path, bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(root)
        .arg("fuzz")
        .args(args.iter().take(1))
        .args(["--fuzz-dir", "agent/fuzz", "-O", "-a"])
        .args(args.iter().skip(1))
        .env("RUSTC_BOOTSTRAP", "1");
    c
}

fn cargo_fuzz_cmd(root: &Path, bin: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut c = fuzz_command(root, bin, args);
    let status = c.status().context("running cargo-fuzz")?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

fn run_target(
    root: &Path,
    fuzz_dir: &Path,
    bin: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let work = fuzz_dir.join("target/corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let logs = fuzz_dir.join("target/logs");
    for dir in [&work, &seeds, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log.display()
    );
    let max_time = format!("-max_total_time={seconds}");
    let work_arg = work.to_string_lossy().into_owned();
    let seeds_arg = seeds.to_string_lossy().into_owned();
    let mut args = vec![
        "run",
        target,
        &work_arg,
        &seeds_arg,
        "--",
        &max_time,
        "-print_final_stats=1",
        "-timeout=20",
        "-rss_limit_mb=4096",
    ];
    // The words a target's parser looks for, when it has a dictionary.
    let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
    let dict_arg = format!("-dict={}", dict.display());
    if dict.is_file() {
        args.push(&dict_arg);
    }
    let mut c = fuzz_command(root, bin, &args);
    let status = c
        .stderr(log_file)
        .status()
        .with_context(|| format!("running {c:?}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let crash = text
        .lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .map(|p| root.join(p).to_string_lossy().into_owned());
    if !status.success() {
        // The libFuzzer report: the panic message and the reproducer.
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  | {line}");
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        execs: stat("stat::number_of_executed_units:"),
        execs_per_sec: stat("stat::average_exec_per_sec:"),
        crash,
        failed: !status.success(),
        log,
    })
}
