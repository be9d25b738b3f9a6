//! Loading (files, documents, kinds, errors) and policy attachment.

use std::{
    fs,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::{
    identity::SpiffeId,
    policy::{evaluate, Conn, Origin, Reason, Verdict},
};

// --- helpers ------------------------------------------------------------

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("zgate-config-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn load(yaml: &str) -> MeshConfig {
    MeshConfig::from_str(yaml, "test.yaml", &Options::default()).unwrap()
}

fn error(yaml: &str) -> String {
    MeshConfig::from_str(yaml, "policies/a.yaml", &Options::default())
        .unwrap_err()
        .to_string()
}

fn ap(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn names(policies: &[Arc<Authorization>]) -> Vec<String> {
    policies.iter().map(|p| p.key.to_string()).collect()
}

const WORKLOAD: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: app}
spec:
  address: 10.0.0.5
  labels: {app: web}
  serviceAccount: web-sa
";

// --- documents, files and kinds -----------------------------------------

#[test]
fn multi_document_lists_and_other_kinds() {
    let yaml = format!(
        "{}---\n# comment-only document\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- {}\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: s}}\n",
        WORKLOAD,
        "{apiVersion: security.istio.io/v1beta1, kind: AuthorizationPolicy, metadata: {name: listed, namespace: app}, spec: {}}"
    );
    let mesh = load(&yaml);
    assert_eq!(mesh.workloads().len(), 1);
    assert_eq!(names(mesh.authorizations()), vec!["app/listed"]);
}

#[test]
fn workload_entries() {
    let yaml = format!(
        "{WORKLOAD}---\napiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\nmetadata: {{name: bare}}\nspec: {{address: \"::ffff:10.0.0.9\"}}\n"
    );
    let mesh = load(&yaml);
    let web = mesh.workload("app", "web").unwrap();
    assert_eq!(web.address, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(web.labels, labels(&[("app", "web")]));
    assert_eq!(web.identity("td"), SpiffeId::new("td", "app", "web-sa"));
    // No namespace: `default`; no serviceAccount: `default`; mapped v4: v4.
    let bare = mesh.workload("default", "bare").unwrap();
    assert_eq!(bare.service_account, "default");
    assert_eq!(bare.address, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(mesh.workloads()[0].name, "web");
}

#[test]
fn load_dir_is_recursive_and_skips_hidden_and_other_files() {
    let dir = TempDir::new();
    dir.write("a.yaml", &ap("app", "a", "{}"));
    dir.write("nested/deeper/b.yml", &ap("app", "b", "{}"));
    dir.write("notes.txt", "not: [yaml");
    // A mounted ConfigMap repeats its files under `..data/`.
    dir.write("..data/a.yaml", &ap("app", "a", "{}"));
    dir.write(".git/c.yaml", "not: [yaml");
    let mesh = MeshConfig::load_dir(&dir.0, &Options::default()).unwrap();
    assert_eq!(names(mesh.authorizations()), vec!["app/a", "app/b"]);
}

#[test]
fn load_dir_is_all_or_nothing() {
    let dir = TempDir::new();
    dir.write("a-good.yaml", &ap("app", "a", "{}"));
    dir.write("policies/z-bad.yaml", &ap("app", "z", "{action: MAYBE}"));
    let err = MeshConfig::load_dir(&dir.0, &Options::default()).unwrap_err();
    let file = dir.0.join("policies/z-bad.yaml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: document 1: spec.action: unknown value \"MAYBE\"; expected one of: ALLOW, DENY, AUDIT, CUSTOM",
            file.display()
        )
    );
    let missing = MeshConfig::load_dir(&dir.0.join("nope"), &Options::default()).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
}

// --- errors name file, document and field -------------------------------

#[test]
fn bad_port_names_file_document_and_field() {
    let yaml = format!(
        "{}{}",
        ap("app", "ok", "{}"),
        ap(
            "app",
            "bad",
            "{rules: [{to: [{operation: {ports: [\"80\", \"80x\"]}}]}]}"
        )
    );
    assert_eq!(
        error(&yaml),
        "policies/a.yaml: document 2: spec.rules[0].to[0].operation.ports[1]: \"80x\" is not a port number"
    );
    let too_big = ap(
        "app",
        "p",
        "{rules: [{when: [{key: destination.port, values: [\"65536\"]}]}]}",
    );
    assert!(error(&too_big)
        .ends_with("spec.rules[0].when[0].values[0]: \"65536\" is not a port number"));
    let signed = ap(
        "app",
        "p",
        "{rules: [{to: [{operation: {notPorts: [\"+80\"]}}]}]}",
    );
    assert!(error(&signed).contains("notPorts[0]"));
}

#[test]
fn other_bad_values_are_errors() {
    let cases = [
        (
            ap("app", "p", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}"),
            "document 1: spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
        ),
        (
            ap("app", "p", "{rules: [{when: [{key: source.ip, notValues: [nope]}]}]}"),
            "spec.rules[0].when[0].notValues[0]: \"nope\" is not an IP address or CIDR",
        ),
        (ap("app", "p", "{rules: x}"), "spec.rules: expected a list, found a string"),
        (
            ap("app", "p", "{rules: [{from: [{source: {principal: [x]}}]}]}"),
            "spec.rules[0].from[0].source.principal: unknown field; expected one of: principals,",
        ),
        (ap("app", "p", "{rules: [{when: [{values: [x]}]}]}"), "spec.rules[0].when[0].key: is required"),
        (ap("App", "p", "{}"), "metadata.namespace: \"App\" is not a valid Kubernetes name"),
        (ap("app", "a_b", "{}"), "metadata.name: \"a_b\" is not a valid Kubernetes name"),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: ON}}\n"
                .to_owned(),
            "spec.mtls.mode: unknown value \"ON\"; expected one of: UNSET, DISABLE, PERMISSIVE, STRICT",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {selector: {matchLabels: {a: b}}, portLevelMtls: {http: {mode: STRICT}}}\n".to_owned(),
            "spec.portLevelMtls.http: \"http\" is not a port number",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {serviceAccount: a/b}\n".to_owned(),
            "spec.serviceAccount: \"a/b\" is not a valid Kubernetes name",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, creationTimestamp: yesterday}\n".to_owned(),
            "metadata.creationTimestamp: \"yesterday\" is not an RFC 3339 timestamp",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: db.example.com}\n".to_owned(),
            "spec.address: \"db.example.com\" is not an IP address",
        ),
        ("kind: List\nitems:\n- {kind: AuthorizationPolicy}\n".to_owned(), "items[0].apiVersion: is required"),
        ("apiVersion: v1\nmetadata: {}\n".to_owned(), "document 1: kind: is required"),
        ("- just\n- a list\n".to_owned(), "document 1: expected a mapping, found a list"),
    ];
    for (yaml, expected) in cases {
        let e = error(&yaml);
        assert!(e.starts_with("policies/a.yaml: document "), "{e}");
        assert!(e.contains(expected), "{e}\n  does not contain\n{expected}");
    }
}

#[test]
fn invalid_yaml_and_duplicates() {
    let e = error(&format!("{}rules: [unclosed\n", ap("app", "a", "{}")));
    assert!(
        e.starts_with("policies/a.yaml: document 2: invalid YAML: "),
        "{e}"
    );
    let e = error(&format!(
        "{}{}",
        ap("app", "a", "{}"),
        ap("app", "a", "{action: DENY}")
    ));
    assert_eq!(
        e,
        "policies/a.yaml: document 2: AuthorizationPolicy app/a is defined twice (first in policies/a.yaml: document 1); remove one of them"
    );
    // The same name in another namespace, or of another kind, is fine.
    load(&format!(
        "{}{}apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a, namespace: app}}\n",
        ap("app", "a", "{}"),
        ap("other", "a", "{}")
    ));
}

// --- which policies apply to a workload ---------------------------------

#[test]
fn policies_for_gathers_namespace_global_and_selected() {
    let yaml = [
        ap("app", "ns-wide", "{}"),
        ap("other", "other-ns-wide", "{}"),
        ap("istio-system", "global", "{}"),
        ap("app", "sel-web", "{selector: {matchLabels: {app: web}}}"),
        ap("app", "sel-db", "{selector: {matchLabels: {app: db}}}"),
        ap(
            "app",
            "sel-two",
            "{selector: {matchLabels: {app: web, tier: front}}}",
        ),
        ap(
            "istio-system",
            "root-sel-web",
            "{selector: {matchLabels: {app: web}}}",
        ),
        ap(
            "other",
            "other-sel-web",
            "{selector: {matchLabels: {app: web}}}",
        ),
        ap("app", "sel-nothing", "{selector: {}}"),
        ap(
            "app",
            "waypoint",
            "{targetRefs: [{kind: Service, name: web}]}",
        ),
    ]
    .concat();
    let mesh = load(&yaml);
    let got = names(&mesh.policies_for("app", &labels(&[("app", "web")])));
    assert_eq!(
        got,
        vec![
            "app/ns-wide",
            "istio-system/global",
            "app/sel-web",
            "istio-system/root-sel-web"
        ]
    );
    // A root-namespace selector reaches every namespace.
    let got = names(&mesh.policies_for("third", &labels(&[("app", "web")])));
    assert_eq!(
        got,
        vec!["istio-system/global", "istio-system/root-sel-web"]
    );
    let got = names(&mesh.policies_for("app", &labels(&[("app", "web"), ("tier", "front")])));
    assert!(got.contains(&"app/sel-two".to_owned()), "{got:?}");
    // Global policies also apply in the root namespace itself.
    assert_eq!(
        names(&mesh.policies_for("istio-system", &BTreeMap::new())),
        vec!["istio-system/global"]
    );
    // Statuses cover skipped policies too.
    assert_eq!(mesh.policy_status().len(), 10);
    assert_eq!(mesh.authorizations().len(), 9);
}

#[test]
fn custom_root_namespace() {
    let opts = Options {
        root_namespace: "mesh-root".to_owned(),
        ..Options::default()
    };
    let yaml = [
        ap("mesh-root", "global", "{}"),
        ap("istio-system", "plain", "{}"),
    ]
    .concat();
    let mesh = MeshConfig::from_str(&yaml, "x", &opts).unwrap();
    let got = names(&mesh.policies_for("app", &BTreeMap::new()));
    assert_eq!(got, vec!["mesh-root/global"]);
}

#[test]
fn peer_authentication_policy_comes_last_and_denies_first() {
    let yaml = [
        ap("app", "allow-ips", "{rules: [{from: [{source: {ipBlocks: [0.0.0.0/0]}}]}]}"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n".to_owned(),
    ]
    .concat();
    let mesh = load(&yaml);
    let policies = mesh.policies_for("app", &BTreeMap::new());
    assert_eq!(
        names(&policies),
        vec![
            "app/allow-ips",
            "istio-system/istio_converted_static_strict"
        ]
    );
    assert_eq!(policies[1].origin, Origin::PeerAuthentication);
    // An ALLOW on IP blocks cannot re-admit plaintext under STRICT.
    let refs: Vec<&Authorization> = policies.iter().map(AsRef::as_ref).collect();
    let plaintext = Conn {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        dst_port: 80,
        src_identity: None,
    };
    let e = evaluate(&refs, &plaintext);
    assert_eq!(
        e.verdict,
        Verdict::Deny(Reason::ExplicitDeny(policies[1].key.clone()))
    );
}

#[test]
fn demo_config_loads() {
    let mesh = MeshConfig::demo(&Options::default()).unwrap();
    assert_eq!(mesh.workloads().len(), 2);
    assert_eq!(
        names(mesh.authorizations()),
        vec!["ambient-demo/allow-sleep-to-httpbin"]
    );
    assert!(DEMO_CONFIG.contains("cluster.local/ns/ambient-demo/sa/sleep"));
}
