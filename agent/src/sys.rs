//! The agent's only `unsafe`: registering descriptors with tokio's reactor,
//! which tokio marks unsafe because the descriptor must stay open and the
//! same for as long as it is registered; the one `bpf(2)` command aya has
//! no wrapper for; and reading an mmapable array's memory.
#![expect(
    unsafe_code,
    reason = "tokio's AsyncFd::register is unsafe (I/O safety), each type here owns its descriptor; bpf(2) and mmap(2) are raw syscalls"
)]

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    maps::{MapData, MapType, RingBuf},
    util::nr_cpus,
};
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

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Elements one call asks for. A hash copies out whole buckets, so this is
/// also the most entries one bucket may have (`ENOSPC` beyond).
const BATCH: usize = 4096;

/// The number of elements of `map`, `BATCH` a syscall
/// (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6 and later for hashes and arrays; not
/// LPM tries).
pub(crate) fn count_elements(map: &MapData) -> io::Result<u64> {
    let info = map.info().map_err(io::Error::other)?;
    let per_cpu = matches!(
        info.map_type(),
        Ok(MapType::PerCpuHash | MapType::PerCpuArray | MapType::LruPerCpuHash)
    );
    // What the kernel copies out a value: a per-CPU map's holds every
    // possible CPU's copy, each padded to 8 bytes.
    let value_size = if per_cpu {
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        (info.value_size() as usize).next_multiple_of(8) * cpus
    } else {
        info.value_size() as usize
    };
    let key_size = info.key_size() as usize;
    if value_size == 0 || key_size == 0 {
        return Ok(0);
    }
    // The sizes the kernel copies with: the buffers hold `BATCH` of each.
    let mut keys = vec![0u8; key_size * BATCH];
    let mut values = vec![0u8; value_size * BATCH];
    // Where a call starts and the next one will: an array's index, a
    // hash's bucket (`u32` both); none for the first call.
    let (mut from, mut next) = (None::<u32>, 0u32);
    let mut elements = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: from.as_ref().map_or(0, |b| std::ptr::from_ref(b) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix: the kernel reads a
        // `u32` cursor from `in_batch`, writes one to `out_batch`, and at
        // most `count` keys and values, of the map's sizes, into buffers
        // that hold that many.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        elements += u64::from(attr.count.min(BATCH as u32));
        match error {
            None => from = Some(next),
            // Past the last element (the call may still have copied some).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(elements),
            Some(e) => return Err(e),
        }
    }
}

/// The elements of the mmapable array `map` (`BPF_F_MMAPABLE`) whose first
/// word is non-zero, read from the array's memory: no syscall an element.
pub(crate) fn nonzero_first_words(map: &MapData) -> io::Result<u64> {
    let info = map.info().map_err(io::Error::other)?;
    // The kernel lays elements out 8-byte aligned, from a page boundary.
    let elem = (info.value_size() as usize).next_multiple_of(8);
    let entries = info.max_entries() as usize;
    let len = elem * entries;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a read-only shared mapping of the array's values, which the
    // kernel keeps alive while mapped; unmapped below, and nothing else
    // refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let held = (0..entries)
        .filter(|i| {
            // SAFETY: each element starts 8-byte aligned inside the
            // mapping; the kernel writes the word concurrently, so it is
            // read atomically.
            let word = unsafe { &*base.cast::<u8>().add(i * elem).cast::<AtomicU64>() };
            word.load(Ordering::Relaxed) != 0
        })
        .count();
    // SAFETY: the mapping made above, no longer referred to.
    unsafe { libc::munmap(base, len) };
    Ok(held as u64)
}
