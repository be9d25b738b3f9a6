//! `cargo xtask`: the one entry point for everything that is not plain cargo.
//!
//! - `setup`: install the eBPF toolchain (idempotent, cached).
//! - `build`: build the eBPF object and the agent that embeds it.
//! - `run -- ARGS`: build, then run `zgate ARGS` as the node daemon.
//! - `test`: lint, unit tests, the privileged integration tests, and those
//!   again in a VM on Debian 12's 6.1 kernel.
//! - `integration-test [--vm] [--kernel NAME]...`: the privileged integration
//!   tests alone, on the host or in a qemu VM per kernel.
//! - `bench`: every benchmark, optimised.
//! - `fuzz [--seconds N] [TARGET]...`: the cargo-fuzz targets, each for a
//!   bounded time.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod fuzz;
mod setup;
mod test;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test zgate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain (rust-src, bpf-linker); cached and idempotent.
    Setup,
    /// Build the eBPF programs and the agent.
    Build(build::Options),
    /// Build, then run the agent as root: `cargo xtask run -- agent --config DIR`.
    /// With no arguments it runs `zgate agent` on the embedded demo config.
    Run(build::RunOptions),
    /// Lint, run the unit tests and the privileged integration tests, on the
    /// host and in a VM on Debian 12's 6.1 kernel.
    Test(test::Options),
    /// Run the integration tests on the host, or with `--vm` in a qemu VM on
    /// each `--kernel` (default: Debian 12's 6.1).
    IntegrationTest(vm::Options),
    /// Benchmarks: policy compilation scaling, connection setup rate with
    /// and without zgate, policy update latency, the HBONE tunnel (as root).
    Bench(bench::BenchOptions),
    /// Fuzz the parsers and the policy compiler (agent/fuzz), each target
    /// for `--seconds` (default 30); non-zero exit on a crash.
    Fuzz(fuzz::Options),
    /// The churn soak: connections checked against the reference evaluator
    /// while policies flip (as root).
    Soak(bench::SoakOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|_| ExitCode::SUCCESS),
        Command::Build(opts) => build::build(&opts).map(|_| ExitCode::SUCCESS),
        Command::Run(opts) => build::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::IntegrationTest(opts) => vm::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Bench(opts) => bench::run(&opts).map(|_| ExitCode::SUCCESS),
        Command::Soak(opts) => bench::soak(&opts).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
