//! Reads verdict events from the kernel's ring buffer and hands the ones
//! the log rate limit admits to the state task, which names identities,
//! workloads and policies in the log.
//!
//! A client retrying a denied connection back to back makes 90 000–150 000
//! denials a second here. The kernel wakes the reader for a record only
//! when the reader has read every earlier one, so a reader that drains at
//! once is woken for nearly every denial; after a drain it waits [`PACE`]
//! before reading again, and what arrived meanwhile is read in one go.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::{sync::mpsc, task::JoinHandle};
use zgate_common::event::{VerdictEvent, KIND_LISTEN_UNATTRIBUTED};

use super::{log_limit::LogLimit, Command, Error};

/// The least time between two drains of the ring: a flood of denials wakes
/// the reader a thousand times a second at most, and a log line is late by
/// a millisecond at most. The ring (`zgate_common::event::RING_BYTES`)
/// holds ~3 600 events (64 bytes and an 8-byte header each), 24 ms of
/// that flood.
const PACE: Duration = Duration::from_millis(1);

pub(super) struct Reader(JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn spawn(
    ring: RingBuf<MapData>,
    mut limit: LogLimit,
    tx: mpsc::Sender<Command>,
) -> Result<Reader, Error> {
    let mut fd = crate::sys::async_fd(ring).map_err(|source| Error::Io {
        op: "polling",
        path: "ZG_EVENTS".into(),
        source,
    })?;
    Ok(Reader(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            let mut admitted = Vec::new();
            while let Some(item) = ring.next() {
                let Some(ev) = VerdictEvent::from_bytes(&item) else {
                    continue;
                };
                // A listener to name is work for the agent, not a log line.
                if ev.kind == KIND_LISTEN_UNATTRIBUTED {
                    admitted.push(Command::Event(ev, 0));
                    continue;
                }
                let key = (ev.identity, ev.workload, ev.reason, ev.hook);
                if let Some(held_back) = limit.admit(key, Instant::now()) {
                    admitted.push(Command::Event(ev, held_back));
                }
            }
            guard.clear_ready();
            for cmd in admitted {
                if tx.send(cmd).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(PACE).await;
        }
    })))
}
