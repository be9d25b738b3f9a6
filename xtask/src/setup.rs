//! The eBPF toolchain, installed once and cached under `$ZGATE_CACHE_DIR`
//! (default `~/.cache/zgate`):
//!
//! - `rust-src` for the active toolchain (`-Z build-std=core`);
//! - `bpf-linker`, built from crates.io against the Rust toolchain's own
//!   libLLVM (no system LLVM needed), with an rpath to it, and linked as
//!   `$ZGATE_CACHE_DIR/bin/bpf-linker`, where `agent/build.rs` looks.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    let sysroot = sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)?;
    Ok(())
}

pub fn cache_dir() -> PathBuf {
    match env::var_os("ZGATE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache/zgate"),
    }
}

fn sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed: is a Rust toolchain installed (rustup)?");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn rust_src(sysroot: &Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing the rust-src component (needed for -Z build-std=core)");
    crate::build::cmd("rustup", |c| c.args(["component", "add", "rust-src"]))
}

/// The toolchain's own libLLVM shared object (`libLLVM.so.<major>.<minor>-rust-…`),
/// not the `libLLVM-<major>-rust-….so` linker script beside it.
fn toolchain_llvm(sysroot: &Path) -> anyhow::Result<(PathBuf, String)> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            let major = version.split('.').next().unwrap_or_default().to_owned();
            if major.chars().all(|c| c.is_ascii_digit()) && !major.is_empty() {
                return Ok((lib.join(&name), major));
            }
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this Rust toolchain does not ship its LLVM as a shared library",
        lib.display()
    )
}

fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let (libllvm, major) = toolchain_llvm(sysroot)?;
    let toolchain = libllvm
        .file_name()
        .map(|n| n.to_string_lossy().replace("libLLVM.so.", ""))
        .unwrap_or_default();
    let cache = cache_dir();
    let root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{toolchain}"));
    let binary = root.join("bin/bpf-linker");
    let works = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against the toolchain's LLVM {major} (once, about a minute)"
        );
        let prefix = cache.join(format!("llvm-prefix-{toolchain}"));
        fs::create_dir_all(prefix.join("lib"))?;
        let link = prefix.join("lib/libLLVM.so");
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
        let rpath = format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display());
        crate::build::cmd("cargo", |c| {
            c.args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", &rpath)
        })?;
    }
    let bin = cache.join("bin");
    fs::create_dir_all(&bin)?;
    let link = bin.join("bpf-linker");
    if fs::read_link(&link).ok().as_deref() != Some(binary.as_path()) {
        let _ = fs::remove_file(&link);
        symlink(&binary, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}
