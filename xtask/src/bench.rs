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
