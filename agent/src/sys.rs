//! The agent's only `unsafe`: registering descriptors with tokio's reactor,
//! which tokio marks unsafe because the descriptor must stay open and the
//! same for as long as it is registered.
#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd::register is unsafe (I/O safety); each type here owns its descriptor"
)]

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use nix::sys::inotify::Inotify;
use tokio::io::unix::AsyncFd;

/// Types that own their descriptor for their whole life.
pub(crate) trait OwnedDescriptor: AsRawFd {}

impl OwnedDescriptor for RingBuf<MapData> {}

/// An inotify instance, which owns its descriptor.
pub(crate) struct InotifyFd(pub Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl OwnedDescriptor for InotifyFd {}

pub(crate) fn async_fd<T: OwnedDescriptor>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its descriptor (`OwnedDescriptor`) and moves into the
    // `AsyncFd`, so the descriptor stays open and unchanged while registered.
    Ok(unsafe { AsyncFd::register(inner) }?)
}
