//! The node's own security: only root may enrol workloads or read the
//! agent's state, tested with a real unprivileged user.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::Command,
};

use zgate_common::ABI_VERSION;

use crate::harness::{zgate_bin, Node, Outcome};

const DEMO: &str = zgate::config::DEMO_CONFIG;

/// Run `args` as the unprivileged user `nobody` (uid/gid 65534; std drops
/// root's supplementary groups when it sets the uid). Unix sockets and
/// bpffs are not per network namespace, so no netns is needed.
fn as_nobody(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).uid(65_534).gid(65_534);
    c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

#[test]
fn an_unprivileged_user_cannot_enrol_or_read_state() {
    let node = Node::start("node_security", &[("demo.yaml", DEMO)]);
    let _httpbin = node.server(
        "ambient-demo",
        "httpbin",
        &["app=httpbin"],
        "127.0.0.1:8000",
    );

    // Enrolling as `sleep` would be allowed through; as nobody it is refused.
    let out = as_nobody(&[
        zgate_bin().as_os_str(),
        "run".as_ref(),
        "--namespace".as_ref(),
        "ambient-demo".as_ref(),
        "--service-account".as_ref(),
        "sleep".as_ref(),
        "--admin-socket".as_ref(),
        node.admin_socket().as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nobody enrolled a workload: {stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        !node.log().contains("sa/sleep"),
        "the agent saw the request"
    );

    // Pins, the admin socket and the agent's state are root's alone.
    for path in [
        node.bpffs_dir(),
        node.bpffs_dir().join(format!("v{ABI_VERSION}/maps")),
        node.admin_socket(),
        node.dir.join(format!("{}.state.json", node.netns)),
    ] {
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
    }
    let out = as_nobody(&[
        "cat".as_ref(),
        node.bpffs_dir()
            .join(format!("v{ABI_VERSION}/maps/ZG_CONFIG"))
            .as_os_str(),
    ]);
    assert!(!out.status.success(), "nobody read a pinned map");

    // The node CA's private key is unreadable to others, and no key ever
    // shows in the log or the status.
    let key = node.dir.join("ca").join(zgate::ca::ROOT_KEY_FILE);
    let out = as_nobody(&["cat".as_ref(), key.as_os_str()]);
    assert!(!out.status.success(), "nobody read the CA key");
    let status = node.zgate(&["status", "--json"]);
    for text in [node.log(), status] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    // Enforcement is unaffected.
    assert_eq!(node.connect_plaintext("127.0.0.1:8000"), Outcome::Refused);
}
