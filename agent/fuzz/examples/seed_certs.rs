//! Writes the `peer_identity` seeds: real SVIDs from `zgate::ca` (a fresh
//! root, so they differ each run; the committed ones are one such run).
//!
//! `cargo run --manifest-path agent/fuzz/Cargo.toml --example seed_certs -- agent/fuzz/corpus/peer_identity`

use std::path::PathBuf;

use zgate::{ca::CertificateAuthority, identity::SpiffeId};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seed_certs DIR"));
    let scratch = std::env::temp_dir().join(format!("zgate-seed-ca-{}", std::process::id()));
    let ca = CertificateAuthority::load_or_generate(&scratch).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("root.der"), ca.root()).unwrap();
    for (name, id) in [
        (
            "svid-sleep.der",
            SpiffeId::new("cluster.local", "ambient-demo", "sleep"),
        ),
        ("svid-other-td.der", SpiffeId::new("other.td", "a", "b")),
    ] {
        let svid = ca.issue(&id).unwrap();
        std::fs::write(out.join(name), &svid.chain()[0]).unwrap();
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}
