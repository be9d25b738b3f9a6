//! Checks, before anything is loaded, that this host can run zgate, each
//! failing with one line that says what is missing and what to do.

use std::{ffi::CString, fs, path::Path};

use super::Error;

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Root, BTF, a cgroup v2 hierarchy at `cgroup_root`'s mount and a bpffs at
/// `bpffs` (mounted here if nothing is mounted there yet).
pub fn preflight(cgroup_root: &Path, bpffs: &Path) -> Result<(), Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Preflight(
            "zgate must run as root (it loads BPF programs and manages cgroups): run it with sudo"
                .into(),
        ));
    }
    if let Some((major, minor)) = kernel_version() {
        if (major, minor) < MIN_KERNEL {
            return Err(Error::Preflight(format!(
                "kernel {major}.{minor} is too old: zgate's programs need {}.{} (sk_lookup, socket cookies in cgroup programs); 6.1 or newer is tested",
                MIN_KERNEL.0, MIN_KERNEL.1
            )));
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Error::Preflight(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): zgate needs a kernel built with CONFIG_DEBUG_INFO_BTF=y".into(),
        ));
    }
    let mount = cgroup_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if fs_type(mount) != Some(CGROUP2_MAGIC) {
        return Err(Error::Preflight(format!(
            "{} is not on a cgroup v2 hierarchy: pass --cgroup-root under your cgroup2 mount (see `mount -t cgroup2`)",
            cgroup_root.display()
        )));
    }
    if fs_type(bpffs) != Some(BPF_FS_MAGIC) {
        fs::create_dir_all(bpffs).map_err(|source| Error::Io {
            op: "creating",
            path: bpffs.to_owned(),
            source,
        })?;
        nix::mount::mount(
            Some("bpf"),
            bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            Error::Preflight(format!(
                "no bpffs at {} and mounting one failed ({e}): mount it with `mount -t bpf bpf {}`",
                bpffs.display(),
                bpffs.display()
            ))
        })?;
    }
    Ok(())
}

/// The oldest kernel whose features the programs use (5.10: socket cookies
/// in cgroup socket programs; 5.9: `sk_lookup`, `sock_release`).
const MIN_KERNEL: (u32, u32) = (5, 10);

/// `major.minor` of the running kernel.
fn kernel_version() -> Option<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn fs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    nix::sys::statfs::statfs(c.as_c_str())
        .ok()
        .map(|s| s.filesystem_type().0)
}
