//! Builds the eBPF programs (`ebpf/progs`) for `bpfel-unknown-none` and puts
//! the object in `OUT_DIR`, where `bpf::program_object` embeds it.
//!
//! The BPF crate needs `-Z build-std=core`, so it builds with the stable
//! toolchain and `RUSTC_BOOTSTRAP=1`, scoped to that one nested cargo; it
//! links with `bpf-linker`, which `cargo xtask setup` installs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("agent/ has no parent directory")?
        .to_owned();
    let progs = root.join("ebpf/progs");
    for p in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", progs.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("ebpf/common").join(p).display()
        );
    }
    println!("cargo:rerun-if-env-changed=ZGATE_CACHE_DIR");

    let linker_dir = bpf_linker_dir()?;
    let target_dir = root.join("target/bpf");
    let path = env::join_paths(
        std::iter::once(linker_dir)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&progs)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host crates, not for the BPF target.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().context("running cargo for ebpf/progs")?;
    if !status.success() {
        bail!(
            "building the eBPF programs in {} failed ({status})",
            progs.display()
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/zgate");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("zgate.bpf.o");
    std::fs::copy(&object, &out)
        .with_context(|| format!("copying {} to {}", object.display(), out.display()))?;
    Ok(())
}

/// The folder holding `bpf-linker`: `cargo xtask setup` puts it under the
/// zgate cache; one on `PATH` works too.
fn bpf_linker_dir() -> anyhow::Result<PathBuf> {
    let cache = match env::var_os("ZGATE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache/zgate"),
    };
    let cached = cache.join("bin");
    if cached.join("bpf-linker").is_file() {
        return Ok(cached);
    }
    if let Some(dir) = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .find(|d| Path::new(d).join("bpf-linker").is_file())
    {
        return Ok(dir);
    }
    bail!(
        "bpf-linker not found in {} or on PATH: run `cargo xtask setup` (it builds the eBPF toolchain once and caches it)",
        cached.display()
    )
}
