//! Kernels for the VM tests: Debian's `linux-image-*` packages, downloaded
//! once and unpacked under `$ZGATE_CACHE_DIR/kernels/<package>/`, and the
//! modules the tests need from each.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::apt;

/// An unpacked kernel package.
pub struct Kernel {
    /// The Debian package, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` in the unpacked package.
    pub modules: PathBuf,
}

/// A loadable module, decompressed, in load order.
pub struct Module {
    /// Its path under `lib/modules/<release>/`, without a compression suffix.
    pub rel_path: String,
    pub data: Vec<u8>,
}

// === impl Kernel ===

impl Kernel {
    /// The kernel that `name` (an alias from [`ALIASES`] or an exact
    /// `linux-image-*` package name) names, downloaded and unpacked under
    /// `cache` if it is not there yet.
    pub fn fetch(name: &str, cache: &Path) -> anyhow::Result<Self> {
        let package = resolve(name)?;
        let dir = cache.join(&package);
        if !dir.join(UNPACKED).is_file() {
            eprintln!("xtask: downloading the kernel package {package} (once)");
            unpack(&package, cache, &dir)?;
        }
        Self::open(package, &dir)
    }

    fn open(package: String, dir: &Path) -> anyhow::Result<Self> {
        let modules_root = dir.join("lib/modules");
        let release = fs::read_dir(&modules_root)
            .with_context(|| format!("reading {}", modules_root.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .with_context(|| format!("no kernel release in {}", modules_root.display()))?;
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            bail!("{package} has no {}", vmlinuz.display());
        }
        Ok(Self {
            package,
            modules: modules_root.join(&release),
            release,
            vmlinuz,
        })
    }

    /// `names` and every module they depend on, dependencies first, leaving
    /// out those built into the kernel. Compressed modules (`.ko.xz`,
    /// `.ko.zst`) are decompressed here, so the guest needs only `insmod`.
    pub fn modules(&self, names: &[&str]) -> anyhow::Result<Vec<Module>> {
        let builtin = fs::read_to_string(self.modules.join("modules.builtin"))
            .context("reading modules.builtin")?;
        let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
        let mut index = Vec::new();
        index_modules(&self.modules.join("kernel"), &self.modules, &mut index)?;
        let mut loaded = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.add_module(name, &builtin, &index, &mut seen, &mut loaded)?;
        }
        Ok(loaded)
    }

    fn add_module(
        &self,
        name: &str,
        builtin: &BTreeSet<String>,
        index: &[String],
        seen: &mut BTreeSet<String>,
        loaded: &mut Vec<Module>,
    ) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if builtin.contains(&name) || !seen.insert(name.clone()) {
            return Ok(());
        }
        let rel = index
            .iter()
            .find(|p| module_name(p) == name)
            .with_context(|| format!("{}: no module {name}, built in or loadable", self.package))?;
        let data = decompress(&self.modules.join(rel))?;
        for dep in depends(&data) {
            self.add_module(&dep, builtin, index, seen, loaded)?;
        }
        let rel_path = strip_compression(rel).to_owned();
        loaded.push(Module { rel_path, data });
        Ok(())
    }
}

/// The kernel `cargo xtask integration-test --vm` boots when no `--kernel`
/// is given: Debian 12's 6.1 LTS.
pub const DEFAULT: &str = "6.1";

/// Short names for the kernels the matrix is tested with. Exact package
/// names work too; `apt-cache search linux-image` lists what apt offers.
pub const ALIASES: &[(&str, &str)] = &[
    // Debian 12 (bookworm)'s own kernel, from bookworm-security.
    ("6.1", "linux-image-6.1.0-56-amd64"),
    // The newest kernel the machine's apt sources offer: the 6.12 LTS that
    // bookworm-security carries for Debian 13's kernel on Debian 12.
    ("6.12", "linux-image-6.12.117+deb12-amd64"),
];

/// The package `name` stands for.
fn resolve(name: &str) -> anyhow::Result<String> {
    if let Some((_, package)) = ALIASES.iter().find(|(alias, _)| *alias == name) {
        return Ok((*package).to_owned());
    }
    if name.starts_with("linux-image-") && !name.contains(['*', '?', '[', ' ']) {
        return Ok(name.to_owned());
    }
    let aliases: Vec<_> = ALIASES.iter().map(|(a, p)| format!("{a} ({p})")).collect();
    bail!(
        "unknown kernel {name:?}: use one of {} or an exact Debian package name linux-image-<version>-amd64",
        aliases.join(", ")
    )
}

/// Download `package` and unpack it into `dir` (through a temporary
/// directory, so an interrupted unpack is never taken for a finished one).
fn unpack(package: &str, cache: &Path, dir: &Path) -> anyhow::Result<()> {
    // Per-process scratch names: two runs may fetch the same kernel at once.
    let pid = std::process::id();
    let download = cache.join(format!(".download-{pid}"));
    let _ = fs::remove_dir_all(&download);
    let deb = apt::download(package, &download)?;
    let staging = cache.join(format!(".{package}.unpacking-{pid}"));
    let _ = fs::remove_dir_all(&staging);
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&staging)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    fs::write(staging.join(UNPACKED), format!("{package}\n"))?;
    fs::remove_dir_all(&download)?;
    if dir.join(UNPACKED).is_file() {
        // Another run finished first.
        return Ok(fs::remove_dir_all(&staging)?);
    }
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staging, dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    Ok(())
}

/// Every `*.ko*` under `dir`, relative to `root`.
fn index_modules(dir: &Path, root: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, root, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().into_owned();
            if strip_compression(&rel).ends_with(".ko") {
                out.push(rel);
            }
        }
    }
    Ok(())
}

/// `veth` for `kernel/drivers/net/veth.ko.xz` (dashes read as underscores,
/// as the kernel does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    strip_compression(file)
        .trim_end_matches(".ko")
        .replace('-', "_")
}

fn strip_compression(path: &str) -> &str {
    path.trim_end_matches(".xz").trim_end_matches(".zst")
}

/// The module's bytes, decompressed with `xz`/`zstd` if it is compressed.
fn decompress(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} to decompress {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed ({})", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section.
fn depends(module: &[u8]) -> Vec<String> {
    let needle = b"\0depends=";
    module
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| {
            let rest = &module[at + needle.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Written last into an unpacked kernel's directory.
const UNPACKED: &str = ".unpacked";

#[cfg(test)]
mod tests {
    use super::{depends, module_name, resolve};

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/drivers/net/veth.ko.xz"), "veth");
        assert_eq!(module_name("kernel/net/ipv6/nf-nat.ko"), "nf_nat");
        assert_eq!(resolve("6.1").unwrap(), "linux-image-6.1.0-56-amd64");
        assert!(resolve("linux-image-6.1*").is_err());
    }

    #[test]
    fn modinfo_depends() {
        let modinfo = b"license=GPL\0depends=a,b_c\0vermagic=6.1\0";
        assert_eq!(depends(modinfo), ["a", "b_c"]);
        assert!(depends(b"\0depends=\0").is_empty());
    }
}
