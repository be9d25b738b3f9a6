//! zgate's eBPF programs. Every verdict is taken once per connection, at
//! `connect()` (`cgroup/connect4|6`, EPERM before any packet is sent) or at
//! SYN time (`sk_lookup`, `SK_DROP` → the client sees a RST), from the maps
//! the agent compiled; nothing runs per packet.
//!
//! Each entry point is a one-line match over a `try_` function; every map
//! and type comes from `zgate-common`.
#![no_std]
#![no_main]
// No library calls made up by the optimizer: LLVM merges runs of zero
// stores into `memset`, which the BPF backend leaves a call to aya-ebpf's
// byte-at-a-time loop (18 call sites in the object, several on every
// connection's path, each a subprogram call with its return).
#![no_builtins]
// `atomic_xadd`: the BPF target has no atomic read-modify-write in core.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![deny(unsafe_op_in_unsafe_fn)]

mod listeners;
mod maps;
mod peers;
mod record;
mod slots;
mod verdict;

mod cgroup_sock;
mod cgroup_sock_addr;
mod sk_lookup;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction; a reachable panic loops forever, which
    // the verifier rejects, so it can never ship.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
