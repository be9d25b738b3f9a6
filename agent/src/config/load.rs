//! Reading YAML into a [`MeshConfig`]: directory walking, multi-document
//! streams, `kind: List`, dispatch by kind, and duplicate detection.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize as _;
use serde_yaml::Value;

use super::{
    authz,
    k8s::{self, FieldError, Node},
    peer_auth::PeerAuthentication,
    workload_entry, Error, MeshConfig, Options, PolicyStatus, WorkloadEntry,
};
use crate::policy::{Authorization, PolicyKey};

/// Accumulates objects from any number of YAML streams.
pub(super) struct Builder {
    options: Options,
    /// `(kind, namespace/name)` → where it was first defined.
    seen: HashMap<(&'static str, PolicyKey), String>,
    authorizations: Vec<Authorization>,
    statuses: Vec<PolicyStatus>,
    peer_authentications: Vec<PeerAuthentication>,
    workloads: Vec<WorkloadEntry>,
}

/// Where an object is: for error messages.
struct Position<'a> {
    file: &'a str,
    document: usize,
}

/// Every `*.yaml`/`*.yml` file under `dir`, recursively, sorted by path.
/// Hidden entries (`.git`, a ConfigMap's `..data`) are skipped, and each
/// directory is visited once even through symlinks.
pub(super) fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    let mut visited = BTreeSet::new();
    walk(dir, &mut files, &mut visited)?;
    files.sort();
    Ok(files)
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut BTreeSet<PathBuf>,
) -> Result<(), Error> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |error| Error::Io { op, path, error }
    };
    let canonical = fs::canonicalize(dir).map_err(io("open directory", dir))?;
    if !visited.insert(canonical) {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io("read directory", dir))? {
        let path = entry.map_err(io("read directory", dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        // `metadata` follows symlinks, so a linked file or directory counts.
        let meta = fs::metadata(&path).map_err(io("stat", &path))?;
        if meta.is_dir() {
            walk(&path, files, visited)?;
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            files.push(path);
        }
    }
    Ok(())
}

// === impl Builder ===

impl Builder {
    pub fn new(options: &Options) -> Self {
        Self {
            options: options.clone(),
            seen: HashMap::new(),
            authorizations: Vec::new(),
            statuses: Vec::new(),
            peer_authentications: Vec::new(),
            workloads: Vec::new(),
        }
    }

    /// Adds every document of a YAML stream; `file` names it in errors.
    pub fn add_text(&mut self, text: &str, file: &str) -> Result<(), Error> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = Position {
                file,
                document: i + 1,
            };
            let yaml = |error| Error::Yaml {
                file: file.to_owned(),
                document: at.document,
                error,
            };
            let mut value = Value::deserialize(doc).map_err(yaml)?;
            value.apply_merge().map_err(yaml)?;
            self.add_document(&value, &at)?;
        }
        Ok(())
    }

    /// Sorts everything into its final, deterministic order.
    pub fn finish(self) -> MeshConfig {
        let Self {
            options,
            seen: _,
            mut authorizations,
            mut statuses,
            peer_authentications,
            mut workloads,
        } = self;
        authorizations.sort_by(|a, b| a.key.cmp(&b.key));
        statuses.sort_by(|a, b| a.key.cmp(&b.key));
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        MeshConfig {
            options,
            workloads,
            authorizations: authorizations.into_iter().map(Arc::new).collect(),
            statuses,
            peer_authentications,
        }
    }

    fn add_document(&mut self, value: &Value, at: &Position<'_>) -> Result<(), Error> {
        // An empty document (a stray `---`, a comment-only file) holds nothing.
        if value.is_null() {
            return Ok(());
        }
        let root = Node::root(value, String::new());
        let kind = root
            .require("kind")
            .and_then(|k| k.str())
            .map_err(|e| at.field(e))?;
        if kind != "List" {
            return self.add_object(&root, at);
        }
        // `kubectl get -o yaml` prints several objects as one `kind: List`.
        let items = match root.field("items").map_err(|e| at.field(e))? {
            Some(items) => items.items().map_err(|e| at.field(e))?,
            None => Vec::new(),
        };
        items.iter().try_for_each(|item| self.add_object(item, at))
    }

    fn add_object(&mut self, node: &Node<'_>, at: &Position<'_>) -> Result<(), Error> {
        let text = |key| {
            node.require(key)
                .and_then(|n| n.str())
                .map_err(|e| at.field(e))
        };
        let (api_version, kind) = (text("apiVersion")?, text("kind")?);
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let version = api_version.rsplit_once('/').map_or(api_version, |(_, v)| v);
        let known_version = matches!(version, "v1" | "v1beta1");
        match (group, kind) {
            ("security.istio.io", "AuthorizationPolicy") if known_version => {
                let wire = k8s::authorization_policy(node).map_err(|e| at.field(e))?;
                self.claim("AuthorizationPolicy", key_of(&wire.metadata), at)?;
                let source = format!("{}: document {}", at.file, at.document);
                let converted = authz::convert(wire, &self.options.root_namespace, source)
                    .map_err(|e| at.field(e))?;
                self.authorizations.extend(converted.authorization);
                self.statuses.push(converted.status);
            }
            ("security.istio.io", "PeerAuthentication") if known_version => {
                let wire = k8s::peer_authentication(node).map_err(|e| at.field(e))?;
                self.claim("PeerAuthentication", key_of(&wire.metadata), at)?;
                let pa = PeerAuthentication::new(wire, &self.options.root_namespace);
                self.peer_authentications.push(pa);
            }
            ("networking.istio.io", "WorkloadEntry") if known_version => {
                let we = workload_entry::parse(node).map_err(|e| at.field(e))?;
                self.claim("WorkloadEntry", we.key(), at)?;
                self.workloads.push(we);
            }
            _ => tracing::warn!(
                file = at.file,
                document = at.document,
                path = node.path(),
                api_version,
                kind,
                "skipping a kind zgate does not read"
            ),
        }
        Ok(())
    }

    /// Records `kind namespace/name`, or fails if it was already defined.
    fn claim(
        &mut self,
        kind: &'static str,
        key: PolicyKey,
        at: &Position<'_>,
    ) -> Result<(), Error> {
        let here = format!("{}: document {}", at.file, at.document);
        if let Some(first) = self.seen.get(&(kind, key.clone())) {
            return Err(Error::Duplicate {
                file: at.file.to_owned(),
                document: at.document,
                kind,
                key,
                first: first.clone(),
            });
        }
        self.seen.insert((kind, key), here);
        Ok(())
    }
}

fn key_of(meta: &k8s::Metadata) -> PolicyKey {
    PolicyKey::new(meta.namespace.clone(), meta.name.clone())
}

// === impl Position ===

impl Position<'_> {
    fn field(&self, e: FieldError) -> Error {
        Error::Field {
            file: self.file.to_owned(),
            document: self.document,
            field: e.path,
            reason: e.reason,
        }
    }
}
