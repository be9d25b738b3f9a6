//! The Kubernetes wire shapes zgate reads (`metadata`, AuthorizationPolicy,
//! PeerAuthentication), parsed from `serde_yaml::Value` by hand.
//!
//! Walking the `Value` ourselves, rather than deriving `Deserialize`, keeps
//! the field path of every value (`spec.rules[0].to[0].operation.ports[1]`)
//! so that an error can name it, and lets us ignore what zgate does not read
//! (`status`, `managedFields`) while rejecting unknown fields inside the
//! security specs: a misspelt `notPrincipal` silently dropped from a DENY
//! would fail open. This module only checks shapes; what the values mean is
//! decided in `authz`, `peer_auth` and `workload_entry`.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::{peer_auth::Mode, Invalid, PolicyAction};

mod timestamp;

pub(super) use timestamp::Timestamp;

/// A position in a document: a value and the field path that leads to it.
#[derive(Clone, Debug)]
pub(super) struct Node<'a> {
    value: &'a Value,
    path: String,
}

/// A scalar together with its field path, for errors raised after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Located<T> {
    pub path: String,
    pub value: T,
}

/// A field that could not be read: where, and why.
#[derive(Debug)]
pub(super) struct FieldError {
    pub path: String,
    pub reason: Invalid,
}

#[derive(Clone, Debug)]
pub(super) struct Metadata {
    pub name: String,
    /// `default` when not set, as `kubectl apply` does.
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
    pub creation_timestamp: Option<Timestamp>,
}

#[derive(Debug)]
pub(super) struct AuthorizationPolicy {
    pub metadata: Metadata,
    /// `None`: no selector. `Some(empty)`: `selector: {}`, selects nothing.
    pub selector: Option<BTreeMap<String, String>>,
    pub action: PolicyAction,
    pub rules: Vec<Rule>,
    /// `targetRef` or a non-empty `targetRefs`: meant for a waypoint/gateway.
    pub has_target_refs: bool,
}

#[derive(Debug)]
pub(super) struct Rule {
    /// `from[i].source`, field name → values; absent fields are absent.
    pub from: Vec<StringLists>,
    /// `to[i].operation`, field name → values.
    pub to: Vec<StringLists>,
    pub when: Vec<Condition>,
}

/// The string-list fields of one `source` or `operation`, by API field name;
/// fields that are absent or empty are not stored.
#[derive(Debug, Default)]
pub(super) struct StringLists(BTreeMap<&'static str, Vec<Located<String>>>);

#[derive(Debug)]
pub(super) struct Condition {
    pub key: String,
    pub values: Vec<Located<String>>,
    pub not_values: Vec<Located<String>>,
}

#[derive(Debug)]
pub(super) struct PeerAuthentication {
    pub metadata: Metadata,
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: Mode,
    pub port_level: BTreeMap<u16, Mode>,
}

// === impl Node ===

impl<'a> Node<'a> {
    /// The root of a document (`path` empty) or of a `List` item (`items[3]`).
    pub fn root(value: &'a Value, path: String) -> Self {
        Self { value, path }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn error(&self, reason: Invalid) -> FieldError {
        FieldError {
            path: self.path.clone(),
            reason,
        }
    }

    fn child(&self, segment: &str) -> String {
        let quoted = segment.contains(['.', '/', '[', ']', ' ']);
        match (self.path.is_empty(), quoted) {
            (_, true) => format!("{}[{segment:?}]", self.path),
            (true, false) => segment.to_owned(),
            (false, false) => format!("{}.{segment}", self.path),
        }
    }

    fn index(&self, i: usize) -> String {
        format!("{}[{i}]", self.path)
    }

    pub fn mapping(&self) -> Result<&'a Mapping, FieldError> {
        self.value
            .as_mapping()
            .ok_or_else(|| self.wrong_type("a mapping"))
    }

    /// A field of this mapping; `None` when absent or `null`.
    pub fn field(&self, key: &str) -> Result<Option<Node<'a>>, FieldError> {
        Ok(self
            .mapping()?
            .get(key)
            .filter(|v| !v.is_null())
            .map(|value| Node {
                value,
                path: self.child(key),
            }))
    }

    /// A required field.
    pub fn require(&self, key: &str) -> Result<Node<'a>, FieldError> {
        self.field(key)?.ok_or_else(|| FieldError {
            path: self.child(key),
            reason: Invalid::Missing,
        })
    }

    /// Rejects keys outside `allowed` (the API's field names).
    pub fn only_fields(&self, allowed: &'static [&'static str]) -> Result<(), FieldError> {
        for key in self.mapping()?.keys() {
            let name = key.as_str().unwrap_or_default();
            if !allowed.contains(&name) {
                let path = self.child(&scalar_text(key).unwrap_or_else(|| "?".to_owned()));
                return Err(FieldError {
                    path,
                    reason: Invalid::UnknownField { expected: allowed },
                });
            }
        }
        Ok(())
    }

    pub fn str(&self) -> Result<&'a str, FieldError> {
        self.value
            .as_str()
            .ok_or_else(|| self.wrong_type("a string"))
    }

    /// A string, or an integer taken as its decimal text (`ports: [80]`).
    pub fn text(&self) -> Result<Located<String>, FieldError> {
        match (self.value, scalar_text(self.value)) {
            (Value::String(_) | Value::Number(_), Some(value)) => Ok(Located {
                path: self.path.clone(),
                value,
            }),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// The elements of a list; `null` reads as empty.
    pub fn items(&self) -> Result<Vec<Node<'a>>, FieldError> {
        match self.value {
            Value::Null => Ok(Vec::new()),
            Value::Sequence(seq) => Ok(seq
                .iter()
                .enumerate()
                .map(|(i, value)| Node {
                    value,
                    path: self.index(i),
                })
                .collect()),
            _ => Err(self.wrong_type("a list")),
        }
    }

    pub fn texts(&self) -> Result<Vec<Located<String>>, FieldError> {
        self.items()?.iter().map(Node::text).collect()
    }

    /// The entries of a mapping, keys as text (`9090:` and `"9090":` alike).
    pub fn entries(&self) -> Result<Vec<(Located<String>, Node<'a>)>, FieldError> {
        self.mapping()?
            .iter()
            .map(|(k, value)| {
                let key =
                    scalar_text(k).ok_or_else(|| self.wrong_type("a mapping with string keys"))?;
                let path = self.child(&key);
                let located = Located {
                    path: path.clone(),
                    value: key,
                };
                Ok((located, Node { value, path }))
            })
            .collect()
    }

    /// A `map[string]string` such as `labels`.
    pub fn string_map(&self) -> Result<BTreeMap<String, String>, FieldError> {
        self.entries()?
            .into_iter()
            .map(|(k, v)| Ok((k.value, v.str()?.to_owned())))
            .collect()
    }

    fn wrong_type(&self, expected: &'static str) -> FieldError {
        self.error(Invalid::WrongType {
            expected,
            found: kind_of(self.value),
        })
    }
}

// === impl StringLists ===

impl StringLists {
    /// The values of one field; empty when the field is absent.
    pub fn get(&self, field: &str) -> &[Located<String>] {
        self.0.get(field).map_or(&[], Vec::as_slice)
    }

    /// The names of the fields that have values.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

// === parsers ===

/// `metadata`: name (required, a Kubernetes name), namespace (a Kubernetes
/// namespace name, default `default`), annotations and creationTimestamp.
/// Other metadata fields are ignored, `labels` included: zgate serves one
/// revision, so the `istio.io/rev` label is not looked at.
pub(super) fn metadata(object: &Node<'_>) -> Result<Metadata, FieldError> {
    let meta = object.require("metadata")?;
    let name_node = meta.require("name")?;
    let name = name_node.str()?.to_owned();
    if !is_dns1123_subdomain(&name) {
        return Err(name_node.error(Invalid::NotAName { value: name }));
    }
    let namespace = match meta.field("namespace")? {
        None => "default".to_owned(),
        Some(n) => {
            let ns = n.str()?.to_owned();
            if !is_dns1123_label(&ns) {
                return Err(n.error(Invalid::NotAName { value: ns }));
            }
            ns
        }
    };
    let map = |key| -> Result<BTreeMap<String, String>, FieldError> {
        meta.field(key)?
            .map_or_else(|| Ok(BTreeMap::new()), |n| n.string_map())
    };
    let creation_timestamp = match meta.field("creationTimestamp")? {
        None => None,
        Some(n) => {
            let text = n.str()?;
            let ts = Timestamp::parse(text).ok_or_else(|| {
                n.error(Invalid::NotATimestamp {
                    value: text.to_owned(),
                })
            })?;
            Some(ts)
        }
    };
    Ok(Metadata {
        name,
        namespace,
        annotations: map("annotations")?,
        creation_timestamp,
    })
}

/// `spec.selector` (a `WorkloadSelector`: only `matchLabels`).
fn selector(spec: &Node<'_>) -> Result<Option<BTreeMap<String, String>>, FieldError> {
    let Some(sel) = spec.field("selector")? else {
        return Ok(None);
    };
    sel.only_fields(&["matchLabels"])?;
    let labels = sel
        .field("matchLabels")?
        .map(|m| m.string_map())
        .transpose()?;
    Ok(Some(labels.unwrap_or_default()))
}

/// An `security.istio.io` AuthorizationPolicy.
pub(super) fn authorization_policy(object: &Node<'_>) -> Result<AuthorizationPolicy, FieldError> {
    let metadata = metadata(object)?;
    let spec = object.field("spec")?;
    let Some(spec) = spec else {
        // No spec at all is `spec: {}`: an ALLOW that allows nothing.
        return Ok(AuthorizationPolicy {
            metadata,
            selector: None,
            action: PolicyAction::Allow,
            rules: Vec::new(),
            has_target_refs: false,
        });
    };
    spec.only_fields(AUTHZ_SPEC_FIELDS)?;
    let action = match spec.field("action")? {
        None => PolicyAction::Allow,
        Some(n) => match n.str()? {
            "" | "ALLOW" => PolicyAction::Allow,
            "DENY" => PolicyAction::Deny,
            "AUDIT" => PolicyAction::Audit,
            "CUSTOM" => PolicyAction::Custom,
            other => return Err(n.error(unknown(other, "ALLOW, DENY, AUDIT, CUSTOM"))),
        },
    };
    let target_ref = spec.field("targetRef")?.is_some();
    let target_refs = match spec.field("targetRefs")? {
        Some(n) => !n.items()?.is_empty(),
        None => false,
    };
    let rules = match spec.field("rules")? {
        Some(n) => n.items()?.iter().map(rule).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(AuthorizationPolicy {
        metadata,
        selector: selector(&spec)?,
        action,
        rules,
        has_target_refs: target_ref || target_refs,
    })
}

fn rule(node: &Node<'_>) -> Result<Rule, FieldError> {
    node.only_fields(&["from", "to", "when"])?;
    let list = |key: &str, wrapper: &'static [&'static str], fields: &'static [&'static str]| {
        let Some(n) = node.field(key)? else {
            return Ok(Vec::new());
        };
        n.items()?
            .iter()
            .map(|item| {
                item.only_fields(wrapper)?;
                match item.field(wrapper[0])? {
                    Some(body) => string_lists(&body, fields),
                    None => Ok(StringLists::default()),
                }
            })
            .collect::<Result<Vec<_>, FieldError>>()
    };
    let from = list("from", &["source"], SOURCE_FIELDS)?;
    let to = list("to", &["operation"], OPERATION_FIELDS)?;
    let when = match node.field("when")? {
        Some(n) => n.items()?.iter().map(condition).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Rule { from, to, when })
}

fn string_lists(
    node: &Node<'_>,
    fields: &'static [&'static str],
) -> Result<StringLists, FieldError> {
    node.only_fields(fields)?;
    let mut out = BTreeMap::new();
    for &name in fields {
        if let Some(n) = node.field(name)? {
            let values = n.texts()?;
            if !values.is_empty() {
                out.insert(name, values);
            }
        }
    }
    Ok(StringLists(out))
}

fn condition(node: &Node<'_>) -> Result<Condition, FieldError> {
    node.only_fields(&["key", "values", "notValues"])?;
    let key = node.require("key")?.str()?.to_owned();
    let texts = |k| node.field(k)?.map_or_else(|| Ok(Vec::new()), |n| n.texts());
    Ok(Condition {
        key,
        values: texts("values")?,
        not_values: texts("notValues")?,
    })
}

/// A `security.istio.io` PeerAuthentication.
pub(super) fn peer_authentication(object: &Node<'_>) -> Result<PeerAuthentication, FieldError> {
    let metadata = metadata(object)?;
    let Some(spec) = object.field("spec")? else {
        return Ok(PeerAuthentication {
            metadata,
            selector: None,
            mode: Mode::Unset,
            port_level: BTreeMap::new(),
        });
    };
    spec.only_fields(&["selector", "mtls", "portLevelMtls"])?;
    let mode = match spec.field("mtls")? {
        Some(m) => mtls(&m)?,
        None => Mode::Unset,
    };
    let mut port_level = BTreeMap::new();
    if let Some(ports) = spec.field("portLevelMtls")? {
        for (key, value) in ports.entries()? {
            let port = match key.value.parse::<u16>() {
                Ok(p) if p != 0 && key.value.bytes().all(|c| c.is_ascii_digit()) => p,
                _ => {
                    let reason = Invalid::NotAPort { value: key.value };
                    return Err(FieldError {
                        path: key.path,
                        reason,
                    });
                }
            };
            port_level.insert(port, mtls(&value)?);
        }
    }
    Ok(PeerAuthentication {
        metadata,
        selector: selector(&spec)?,
        mode,
        port_level,
    })
}

fn mtls(node: &Node<'_>) -> Result<Mode, FieldError> {
    node.only_fields(&["mode"])?;
    let Some(n) = node.field("mode")? else {
        return Ok(Mode::Unset);
    };
    match n.str()? {
        "" | "UNSET" => Ok(Mode::Unset),
        "DISABLE" => Ok(Mode::Disable),
        "PERMISSIVE" => Ok(Mode::Permissive),
        "STRICT" => Ok(Mode::Strict),
        other => Err(n.error(unknown(other, "UNSET, DISABLE, PERMISSIVE, STRICT"))),
    }
}

// === helpers ===

fn unknown(value: &str, expected: &'static str) -> Invalid {
    Invalid::UnknownValue {
        value: value.to_owned(),
        expected,
    }
}

/// The text of a string or integer scalar.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}

/// RFC 1123 subdomain: what Kubernetes accepts as an object name. Notably
/// no `_`, which is why istiod's synthetic names cannot clash.
pub(super) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

const AUTHZ_SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "action",
    "provider",
    "rules",
];

/// `Source` fields (istio/api `security/v1beta1/authorization_policy.proto`).
pub(super) const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "trustDomains",
    "notTrustDomains",
];

/// `Operation` fields.
pub(super) const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names() {
        assert!(is_dns1123_subdomain("allow-sleep.v1"));
        assert!(!is_dns1123_subdomain("istio_converted_static_strict"));
        assert!(!is_dns1123_subdomain("Upper"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label("-a"));
    }
}
