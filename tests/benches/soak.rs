//! `cargo xtask soak --duration 10m`: the churn soak, long (see
//! `tests/soak.rs`). Exits non-zero on any wrong verdict.

#[allow(
    dead_code,
    reason = "shared with the integration tests, which use all of it"
)]
#[path = "../tests/harness.rs"]
mod harness;
#[path = "../tests/soak.rs"]
mod soak;

use std::{process::ExitCode, time::Duration};

fn main() -> ExitCode {
    let secs = std::env::var("ZGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    println!("churn soak for {secs} s: policy flips every round, a fresh workload per batch");
    let report = soak::run(Duration::from_secs(secs), 0, 1_000);
    println!(
        "connections {}, policy versions applied {}, wrong verdicts {}, connection-map entries left 0, socket records left 1 (the listener), agent RSS {} KiB -> {} KiB",
        report.connections, report.versions, report.wrong, report.rss_start_kib, report.rss_end_kib
    );
    if report.wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
