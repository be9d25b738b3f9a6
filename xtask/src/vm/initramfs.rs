//! The guest's whole root filesystem, as one initramfs: busybox for the
//! init shell, the test binaries and the host tools the harness calls, each
//! with its shared libraries, the kernel modules the tests need, and `/init`.
//!
//! Binaries keep their host paths: the test binary finds `zgate-probe` at
//! the absolute path cargo compiled into it, and the harness runs `ip` and
//! `nsenter` from `PATH`.

use std::{
    collections::BTreeMap,
    fs::File,
    io::BufWriter,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::{
    apt,
    cpio::{self, Kind},
    kernel::Kernel,
};

/// What the guest runs.
pub struct Guest {
    /// The integration test binary (`tests/tests/integration.rs`).
    pub test_binary: PathBuf,
    /// The `zgate` agent (the harness's `ZGATE_BIN`).
    pub agent: PathBuf,
    /// `zgate-probe`.
    pub probe: PathBuf,
    /// Arguments for the test binary after `--test-threads=1`.
    pub test_args: Vec<String>,
}

/// Write `kernel`'s initramfs for `guest` to `out`.
pub fn write(kernel: &Kernel, guest: &Guest, out: &Path) -> anyhow::Result<()> {
    let mut tree = Tree::default();
    let busybox = apt::ensure_program("busybox", "busybox-static")?;
    tree.binary(Path::new("/bin/busybox"), &busybox)?;
    for applet in busybox_applets(&busybox)? {
        tree.insert(
            Path::new("/bin").join(applet),
            Entry::Symlink("busybox".into()),
        );
    }
    for (program, package) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
        let host = apt::ensure_program(program, package)?;
        tree.binary(&host, &host)?;
    }
    for binary in [&guest.test_binary, &guest.agent, &guest.probe] {
        tree.binary(binary, binary)?;
    }
    let modules = kernel.modules(MODULES)?;
    let mut insmod = Vec::new();
    for module in modules {
        let path = Path::new("/lib/modules")
            .join(&kernel.release)
            .join(&module.rel_path);
        insmod.push(path.display().to_string());
        tree.insert(path, Entry::Bytes(module.data, 0o644));
    }
    tree.insert("/dev/console".into(), Entry::CharDevice(5, 1));
    tree.insert("/var/run".into(), Entry::Symlink("../run".into()));
    tree.insert(
        "/etc/passwd".into(),
        Entry::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644),
    );
    tree.insert(
        "/etc/group".into(),
        Entry::Bytes(b"root:x:0:\n".to_vec(), 0o644),
    );
    for dir in ["/proc", "/sys", "/tmp", "/run", "/root"] {
        tree.insert(dir.into(), Entry::Directory);
    }
    let init = init_script(guest, &insmod, &tree.library_dirs());
    tree.insert("/init".into(), Entry::Bytes(init.into_bytes(), 0o755));
    tree.write(out)
}

/// Modules the tests need that Debian builds as modules, loaded (with
/// their dependencies) before the tests start, as a host's `modprobe`
/// would on demand:
///
/// - `tcp_diag` (and `inet_diag`): the agent lists and destroys sockets over
///   `NETLINK_SOCK_DIAG` when a policy update revokes connections;
/// - `veth`: links between network namespaces.
///
/// Loopback, IPv6, network namespaces, cgroup v2, BPF and `sk_lookup` are
/// built into Debian's kernels (each package's `modules.builtin` is
/// checked, so a kernel that makes one of them modular only needs it named
/// here).
const MODULES: &[&str] = &["tcp_diag", "veth"];

/// The guest's `/init`, run by busybox `sh` as PID 1. It prints
/// `ZGATE-VM-INIT:` when it starts and `ZGATE-VM-RESULT: <exit code>` at the
/// end, which the host reads from the console, then powers off.
fn init_script(guest: &Guest, modules: &[String], library_dirs: &[String]) -> String {
    let mut args = vec!["--test-threads=1".to_owned()];
    args.extend(guest.test_args.iter().cloned());
    let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    let modules: Vec<String> = modules.iter().map(|m| quote(m)).collect();
    format!(
        r#"#!/bin/sh
# zgate's VM test init, written by `cargo xtask integration-test --vm`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LD_LIBRARY_PATH={library_path}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp stays on the initramfs's own tmpfs: binaries from a host /tmp are
# there (a worktree or CARGO_TARGET_DIR under /tmp).
chmod 1777 /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# Kernel warnings and worse still reach the console; boot chatter does not.
dmesg -n 5
echo "ZGATE-VM-INIT: $(uname -r)"
for m in {modules}; do
    insmod "$m" || echo "ZGATE-VM: insmod $m failed"
done
ip link set lo up
cd /tmp
CI=true RUST_BACKTRACE=1 ZGATE_BIN={agent} {test} {args}
echo "ZGATE-VM-RESULT: $?"
sync
poweroff -f
echo o > /proc/sysrq-trigger
"#,
        library_path = quote(&library_dirs.join(":")),
        modules = modules.join(" "),
        agent = quote(&guest.agent.display().to_string()),
        test = quote(&guest.test_binary.display().to_string()),
        args = args.join(" "),
    )
}

/// `s` as one shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One file in the guest.
enum Entry {
    Directory,
    HostFile(PathBuf, u32),
    Bytes(Vec<u8>, u32),
    Symlink(String),
    CharDevice(u32, u32),
}

/// The guest's files by absolute path; parents are added as directories.
#[derive(Default)]
struct Tree(BTreeMap<PathBuf, Entry>);

// === impl Tree ===

impl Tree {
    fn insert(&mut self, path: PathBuf, entry: Entry) {
        for parent in path.ancestors().skip(1) {
            if parent != Path::new("/") && parent != Path::new("") {
                self.0.entry(parent.to_owned()).or_insert(Entry::Directory);
            }
        }
        self.0.insert(path, entry);
    }

    /// `host` at `guest`, and every shared library it loads at the path
    /// the host's loader finds it (per `ldd`).
    fn binary(&mut self, guest: &Path, host: &Path) -> anyhow::Result<()> {
        self.insert(guest.to_owned(), Entry::HostFile(host.to_owned(), 0o755));
        for library in shared_libraries(host)? {
            self.insert(library.clone(), Entry::HostFile(library, 0o755));
        }
        Ok(())
    }

    /// The directories holding shared libraries, for `LD_LIBRARY_PATH` (the
    /// guest has no `ld.so.cache`).
    fn library_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = self
            .0
            .keys()
            .filter(|p| p.to_string_lossy().contains(".so"))
            .filter_map(|p| p.parent())
            .map(|p| p.display().to_string())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut cpio = cpio::Writer::new(BufWriter::new(file));
        for (path, entry) in &self.0 {
            let name = archive_name(path)?;
            match entry {
                Entry::Directory => cpio.add(&name, Kind::Directory, 0o755)?,
                Entry::HostFile(host, perm) => cpio.add(&name, Kind::FileFrom(host), *perm)?,
                Entry::Bytes(data, perm) => cpio.add(&name, Kind::File(data), *perm)?,
                Entry::Symlink(target) => cpio.add(&name, Kind::Symlink(target), 0o777)?,
                Entry::CharDevice(major, minor) => {
                    cpio.add(&name, Kind::CharDevice(*major, *minor), 0o600)?
                }
            }
        }
        cpio.finish()?;
        Ok(())
    }
}

/// `/usr/bin/x` as `usr/bin/x`, refusing `..` and other oddities.
fn archive_name(path: &Path) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => bail!("{}: not a plain absolute path", path.display()),
        }
    }
    Ok(parts.join("/"))
}

/// The shared libraries `binary` loads (and its loader), from `ldd`.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // `ldd` fails on a static binary: it has nothing to copy.
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
        // `libc.so.6 => /lib/…/libc.so.6 (0x…)` or `/lib64/ld-linux….so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest,
            None => line,
        };
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// The applets of this busybox (`busybox --list`), each linked in `/bin`.
fn busybox_applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", busybox.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
