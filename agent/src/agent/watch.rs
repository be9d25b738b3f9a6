//! Watches the config directory (recursively, with inotify) and asks the
//! state task to reload when a YAML file is written, moved or removed.
//! Bursts of events become one reload.

use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{Command, Error};

pub(super) struct Watcher(JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// In the parent: the config directory appearing or going away.
const PARENT_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE);

pub(super) fn spawn(dir: &Path, tx: mpsc::Sender<Command>) -> Result<Watcher, Error> {
    let err = |source: nix::Error| Error::Io {
        op: "watching",
        path: dir.to_owned(),
        source: source.into(),
    };
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(err)?;
    add_watches(&inotify, dir).map_err(err)?;
    // The parent too, for the directory itself being removed and created
    // again: until it is back the last good policy stays enforced.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent_wd = parent
        .map(|p| inotify.add_watch(p, PARENT_MASK))
        .transpose()
        .map_err(err)?;
    let name = dir.file_name().map(ToOwned::to_owned);
    let fd = crate::sys::async_fd(crate::sys::InotifyFd(inotify)).map_err(|source| Error::Io {
        op: "watching",
        path: dir.to_owned(),
        source,
    })?;
    let dir = dir.to_owned();
    Ok(Watcher(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let mut changed = false;
            while let Ok(events) = guard.get_inner().0.read_events() {
                if events.is_empty() {
                    break;
                }
                // In the parent, only the config directory's own name counts.
                changed |= events
                    .iter()
                    .any(|e| Some(e.wd) != parent_wd || e.name == name);
            }
            guard.clear_ready();
            if changed {
                // New subdirectories need watches of their own.
                if let Err(e) = add_watches(&guard.get_inner().0, &dir) {
                    tracing::warn!(dir = %dir.display(), "config watch: {e}");
                }
                if tx.send(Command::Reload).await.is_err() {
                    return;
                }
            }
        }
    })))
}

fn add_watches(inotify: &Inotify, dir: &Path) -> nix::Result<()> {
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        inotify.add_watch(&d, MASK)?;
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(())
}
