//! `zgate check` / `zgate policies`, on the embedded demo and small configs.

use clap::{CommandFactory, Parser};

use super::*;
use crate::policy::{Reason, Verdict};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    Check(Box<CheckArgs>),
    Policies(PoliciesArgs),
}

fn check_args(args: &str) -> CheckArgs {
    let argv = std::iter::once("zgate")
        .chain(["check"])
        .chain(args.split_whitespace());
    match Cli::try_parse_from(argv).unwrap().command {
        Sub::Check(a) => *a,
        Sub::Policies(_) => unreachable!(),
    }
}

fn demo(args: &str) -> CheckReport {
    run_check(&check_args(&format!("--demo {args}"))).unwrap()
}

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn demo_sleep_may_reach_httpbin() {
    let r = demo("--source ambient-demo/sleep --dest ambient-demo/httpbin --port 8000");
    let key = PolicyKey::new("ambient-demo", "allow-sleep-to-httpbin");
    assert_eq!(
        r.evaluation.verdict,
        Verdict::Allow(Reason::AllowMatched(key))
    );
    let text = r.render(false).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("ALLOW allowed by: ambient-demo/allow-sleep-to-httpbin")
    );
    assert!(
        text.contains("mTLS as spiffe://cluster.local/ns/ambient-demo/sa/sleep"),
        "{text}"
    );
}

#[test]
fn demo_other_service_account_is_denied() {
    let r = demo(
        "--dest ambient-demo/httpbin --port 8000 --source-identity spiffe://cluster.local/ns/ambient-demo/sa/other",
    );
    assert_eq!(r.evaluation.verdict, Verdict::Deny(Reason::NoAllowMatched));
    let text = r.render(false).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("DENY allow policies exist, but none allowed")
    );
    assert!(
        text.contains("ALLOW ambient-demo/allow-sleep-to-httpbin: no match"),
        "{text}"
    );
}

#[test]
fn demo_plaintext_is_denied() {
    let r = demo("--dest ambient-demo/httpbin --port 8000");
    assert_eq!(r.evaluation.verdict, Verdict::Deny(Reason::NoAllowMatched));
    assert!(r.query.conn.src_identity.is_none());
    assert!(r.render(false).unwrap().contains("plaintext"));
}

#[test]
fn demo_without_policy_is_default_allow() {
    let r = demo("--dest ambient-demo/sleep --port 8000");
    assert_eq!(r.evaluation.verdict, Verdict::Allow(Reason::DefaultAllow));
    assert!(r.considered.is_empty());
}

#[test]
fn json_output_is_one_object() {
    let r = demo("--source ambient-demo/sleep --dest-namespace ambient-demo --dest-label app=httpbin --port 8000 --json");
    let text = r.render(true).unwrap();
    assert_eq!(text.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["verdict"], "ALLOW");
    assert_eq!(
        v["reason"],
        "allowed by: ambient-demo/allow-sleep-to-httpbin"
    );
    assert_eq!(v["policy"], "ambient-demo/allow-sleep-to-httpbin");
    assert_eq!(v["considered"][0]["matched"], true);
    assert_eq!(v["considered"][0]["action"], "ALLOW");
    assert_eq!(v["destination"]["labels"]["app"], "httpbin");
    assert_eq!(v["destination"]["workload"], serde_json::Value::Null);
    assert!(v["dry_run"].as_array().unwrap().is_empty());
}

#[test]
fn ips_default_and_notes_say_when_it_matters() {
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ip, namespace: app}
spec:
  rules:
  - from:
    - source: {ipBlocks: [10.0.0.0/8]}
";
    let mesh = MeshConfig::from_str(yaml, "t.yaml", &Options::default()).unwrap();
    let args = check_args("--config unused --dest-namespace app --port 80");
    let q = query(&mesh, &args).unwrap();
    assert_eq!(q.conn.src, DEFAULT_IP);
    assert_eq!(q.conn.dst, DEFAULT_IP);
    let r = check(&mesh, &q);
    assert!(!r.evaluation.is_allow());
    assert_eq!(r.notes.len(), 1);
    assert!(
        r.notes[0].starts_with("--source-ip not given"),
        "{:?}",
        r.notes
    );

    let args = check_args("--config unused --dest-namespace app --port 80 --source-ip 10.1.2.3");
    let r = check(&mesh, &query(&mesh, &args).unwrap());
    assert!(r.evaluation.is_allow());
    assert!(r.notes.is_empty());
}

#[test]
fn dest_workload_address_is_the_default_dest_ip() {
    let mesh = MeshConfig::demo(&Options::default()).unwrap();
    let q = query(
        &mesh,
        &check_args("--demo --dest ambient-demo/httpbin --port 1"),
    )
    .unwrap();
    assert_eq!(
        q.dest_workload,
        Some(PolicyKey::new("ambient-demo", "httpbin"))
    );
    assert!(!q.dst_ip_defaulted);
    let q = query(
        &mesh,
        &check_args("--demo --dest ambient-demo/httpbin --dest-ip 10.9.9.9 --port 1"),
    )
    .unwrap();
    assert_eq!(q.conn.dst, "10.9.9.9".parse::<IpAddr>().unwrap());
}

#[test]
fn bad_input_is_an_error() {
    let e = run_check(&check_args("--demo --dest ambient-demo/nope --port 1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no WorkloadEntry ambient-demo/nope in the configuration; check the namespace and name"
    );
    for bad in [
        "--demo --port 1",
        "--demo --dest a/b --dest-namespace a --port 1",
        "--demo --dest a --port 1",
        "--demo --dest-namespace a --dest-label novalue --port 1",
        "--demo --dest-namespace a --port 1 --source-identity cluster.local/ns/a/sa/b",
        "--demo --dest-namespace a --port 70000",
        "--demo --config /tmp --dest-namespace a --port 1",
    ] {
        let argv = std::iter::once("zgate")
            .chain(["check"])
            .chain(bad.split_whitespace());
        assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
    }
    let e = run_check(&check_args("--dest-namespace a --port 1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no configuration: pass --config DIR (or --demo for the embedded example)"
    );
    let e = run_policies(&PoliciesArgs {
        config: ConfigArgs {
            config: Some(PathBuf::from("/nonexistent/zgate")),
            demo: false,
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
        },
        json: false,
    })
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot open directory /nonexistent/zgate"),
        "{e}"
    );
}

#[test]
fn policies_report_statuses_and_mtls() {
    let yaml = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: app}
spec: {action: AUDIT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: app}
spec: {labels: {app: web}}
";
    let mesh = MeshConfig::from_str(yaml, "t.yaml", &Options::default()).unwrap();
    let report = policies(&mesh);
    let text = report.render(false).unwrap();
    assert!(
        text.contains("app/audit AUDIT [not enforced]: UnsupportedValue: ztunnel does not support the AUDIT action"),
        "{text}"
    );
    assert!(
        text.contains(
            "app/web: STRICT: plaintext rejected except on ports 9090 (enforced by app/converted_peer_authentication_strict)"
        ),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&report.render(true).unwrap()).unwrap();
    assert_eq!(v["policies"][0]["reason"], "UnsupportedValue");
    assert_eq!(v["workloads"][0]["mode"], "STRICT");
    assert_eq!(v["workloads"][0]["port_exceptions"][0], 9090);
}

#[test]
fn workload_refs() {
    assert_eq!(
        "ns/name".parse::<WorkloadRef>().unwrap(),
        WorkloadRef {
            namespace: "ns".into(),
            name: "name".into()
        }
    );
    for bad in ["ns", "/name", "ns/", "a/b/c"] {
        assert!(bad.parse::<WorkloadRef>().is_err(), "{bad}");
    }
    assert_eq!(
        parse_label("a=b=c").unwrap(),
        ("a".to_owned(), "b=c".to_owned())
    );
    assert_eq!(parse_label("a=").unwrap(), ("a".to_owned(), String::new()));
    assert!(parse_label("=b").is_err());
}
