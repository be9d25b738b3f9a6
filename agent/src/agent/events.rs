//! Reads verdict events from the kernel's ring buffer and hands them to the
//! state task, which names identities, workloads and policies in the log.

use aya::maps::{MapData, RingBuf};
use tokio::{sync::mpsc, task::JoinHandle};
use zgate_common::event::VerdictEvent;

use super::{Command, Error};

pub(super) struct Reader(JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn spawn(ring: RingBuf<MapData>, tx: mpsc::Sender<Command>) -> Result<Reader, Error> {
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
            while let Some(item) = ring.next() {
                if let Some(ev) = VerdictEvent::from_bytes(&item) {
                    if tx.send(Command::Event(ev)).await.is_err() {
                        return;
                    }
                }
            }
            guard.clear_ready();
        }
    })))
}
