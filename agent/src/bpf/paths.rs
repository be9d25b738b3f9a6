//! The bpffs layout, owned by this one module:
//! `<bpffs>/zgate/v<ABI>/{maps,links}/<name>`. The ABI version segment
//! changes whenever `zgate-common` changes a layout, so a new agent never
//! misreads maps pinned by an old one.

use std::path::{Path, PathBuf};

use zgate_common::ABI_VERSION;

#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// `<bpffs>/<instance>/v<ABI>`; `instance` is `zgate` for the node
    /// daemon, and unique per test.
    pub fn new(bpffs: &Path, instance: &str) -> Self {
        Self {
            root: bpffs.join(instance).join(format!("v{ABI_VERSION}")),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// The pin directories of this instance, this version's and any other
    /// (`v<N>`) an agent of another version left.
    pub fn all_versions(&self) -> Vec<PathBuf> {
        let Some(instance) = self.root.parent() else {
            return vec![self.root.clone()];
        };
        let mut roots: Vec<PathBuf> = std::fs::read_dir(instance)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix('v'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        if !roots.contains(&self.root) {
            roots.push(self.root.clone());
        }
        roots.sort();
        roots
    }
}
