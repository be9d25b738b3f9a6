//! Debian packages the VM tests need, from the machine's own apt sources:
//! host tools (installed once, if missing) and kernels (downloaded once,
//! unpacked into the cache). `apt-get update` runs only when a first try
//! fails, so a warm machine never touches the network.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The path of `program` on `PATH`, installing `package` first if it is
/// not there.
pub fn ensure_program(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = which(program) {
        return Ok(path);
    }
    eprintln!("xtask: {program} is missing: installing the Debian package {package} (once)");
    retry_after_update(|| apt_get(&["install", "-y", "--no-install-recommends", package], None))
        .with_context(|| format!("installing {package} (for {program})"))?;
    which(program).with_context(|| format!("{package} is installed but {program} is not on PATH"))
}

/// Download `package`'s `.deb` into `dir` (`apt-get download`); returns its
/// path.
pub fn download(package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    retry_after_update(|| {
        apt_get(
            // The cache may be where `_apt` cannot write; download as root
            // instead of warning about it.
            &["-o", "APT::Sandbox::User=root", "download", package],
            Some(dir),
        )
    })
    .with_context(|| {
        format!(
            "downloading {package}: is it still in the archive? `apt-cache search linux-image` lists the kernels apt offers"
        )
    })?;
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download {package} left no .deb in {}",
        dir.display()
    )
}

/// `program` on `PATH`, if it is an executable file there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Try `f`; if it fails, `apt-get update` (the package lists may be
/// missing or stale) and try once more.
fn retry_after_update(f: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    if f().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: refreshing apt's package lists (apt-get update)");
    apt_get(&["update"], None)?;
    f()
}

fn apt_get(args: &[&str], dir: Option<&Path>) -> anyhow::Result<()> {
    let mut c = Command::new("apt-get");
    c.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        c.current_dir(dir);
    }
    let status = c.status().context("running apt-get (is this Debian?)")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}
