//! Enrolled workloads: each is a cgroup under zgate's cgroup tree, like a
//! pod in ambient mode, with a SPIFFE identity from its namespace and
//! service account.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::identity::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("no enrolled workload with id {0}")]
    Unknown(u32),
}

/// What a caller asks to enrol.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub namespace: String,
    pub service_account: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The workload's own IP (`zgate run --address`); default: the
    /// `spec.address` of the WorkloadEntry with its namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    pub id: u32,
    pub spec: Spec,
    pub identity: SpiffeId,
    pub cgroup: PathBuf,
    /// The cgroup's id as the kernel's `bpf_get_current_cgroup_id` sees it
    /// (the cgroup directory's inode number).
    pub cgroup_id: u64,
}

/// The enrolled workloads of this node and their cgroups.
#[derive(Debug)]
pub struct Registry {
    root: PathBuf,
    next_id: u32,
    workloads: BTreeMap<u32, Workload>,
}

impl Spec {
    /// Kubernetes-style names only: they become cgroup directory names.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
            ("name", &self.name),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 253
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !value.starts_with(['-', '.']);
            if !ok {
                return Err(Error::Invalid {
                    field,
                    value: value.clone(),
                    reason: "must be a DNS-1123 name (lowercase letters, digits, '-' and '.')",
                });
            }
        }
        Ok(())
    }
}

impl Registry {
    /// `root` is zgate's cgroup (the programs attach there); workloads live
    /// in `root/workloads/`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            next_id: 1,
            workloads: BTreeMap::new(),
        }
    }

    /// Adopt workloads recorded by a previous agent whose cgroups still exist.
    pub fn adopt(&mut self, workloads: Vec<Workload>) {
        for wl in workloads {
            if cgroup_id(&wl.cgroup).ok() == Some(wl.cgroup_id) {
                self.next_id = self.next_id.max(wl.id + 1);
                self.workloads.insert(wl.id, wl);
            }
        }
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn get(&self, id: u32) -> Option<&Workload> {
        self.workloads.get(&id)
    }

    /// Create the workload's cgroup and record it.
    pub fn enroll(&mut self, spec: Spec, trust_domain: &str) -> Result<Workload, Error> {
        spec.validate()?;
        let id = self.next_id;
        let dir = self
            .root
            .join("workloads")
            .join(format!("{}.{}.{id}", spec.namespace, spec.name));
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            op: "creating cgroup",
            path: dir.clone(),
            source,
        })?;
        let wl = Workload {
            id,
            identity: SpiffeId::new(trust_domain, &spec.namespace, &spec.service_account),
            spec,
            cgroup_id: cgroup_id(&dir)?,
            cgroup: dir,
        };
        self.next_id += 1;
        self.workloads.insert(id, wl.clone());
        Ok(wl)
    }

    /// Forget the workload and remove its cgroup; `leftovers` says what
    /// happens to processes still in it.
    pub fn remove(&mut self, id: u32, leftovers: Leftovers<'_>) -> Result<Workload, Error> {
        let wl = self.workloads.remove(&id).ok_or(Error::Unknown(id))?;
        remove_cgroup(&wl.cgroup, leftovers)?;
        Ok(wl)
    }
}

pub fn cgroup_id(dir: &Path) -> Result<u64, Error> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| Error::Io {
            op: "reading cgroup",
            path: dir.to_owned(),
            source,
        })
}

/// Move the calling process into the cgroup at `dir`.
pub fn join_cgroup(dir: &Path) -> Result<(), Error> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string()).map_err(|source| Error::Io {
        op: "joining cgroup",
        path: procs,
        source,
    })
}

/// The calling process's cgroup v2 directory under `mount`.
pub fn current_cgroup(mount: &Path) -> Result<PathBuf, Error> {
    let path = PathBuf::from("/proc/self/cgroup");
    let text = fs::read_to_string(&path).map_err(|source| Error::Io {
        op: "reading",
        path: path.clone(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| Error::Io {
            op: "finding the cgroup v2 entry in",
            path,
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// What happens to processes left in a cgroup being removed.
#[derive(Clone, Copy, Debug)]
pub enum Leftovers<'a> {
    /// The workload is over (its `zgate run` ended): kill what remains.
    Kill,
    /// zgate is detaching: the processes keep running, outside zgate.
    MoveTo(&'a Path),
}

/// Empty the cgroup (killing or moving its processes), wait for it to
/// empty, and remove it. Missing cgroups are fine.
pub fn remove_cgroup(dir: &Path, leftovers: Leftovers<'_>) -> Result<(), Error> {
    if !dir.exists() {
        return Ok(());
    }
    match leftovers {
        // `cgroup.kill` (5.14+) kills the whole subtree at once.
        Leftovers::Kill => {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        }
        Leftovers::MoveTo(target) => {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                // A process that exited meanwhile cannot be moved: fine.
                let _ = fs::write(target.join("cgroup.procs"), pid);
            }
        }
    }
    let mut last = None;
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(Error::Io {
        op: "removing cgroup",
        path: dir.to_owned(),
        source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::ResourceBusy)),
    })
}
