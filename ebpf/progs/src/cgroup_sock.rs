//! `cgroup/post_bind4|6` and `cgroup/sock_release`: learn which enrolled
//! workload owns each bound TCP address, so policy applies to whatever a
//! workload listens on, and forget it when the socket goes away.
//!
//! `sock_release` may not read a socket's addresses, so `post_bind` also
//! keeps the bound address in the socket's record (`zgate_common::socket`);
//! `sock_release` undoes what the record says was done for the socket.
//! Several sockets may hold one address (`SO_REUSEPORT`): its entry counts
//! them (`zgate_common::listener`) and goes with the last.
//!
//! # Minimum kernel version
//! 4.17 (`post_bind`), 5.9 (`sock_release`), 5.10 (socket cookies here).

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
    EbpfContext as _,
};
use zgate_common::{
    conn::ConnKey,
    event::HOOK_BIND,
    listener::{tag_of, ListenerKey},
    socket::{SocketRecord, FLAG_BOUND, KIND_BOUND},
    Addr, IPPROTO_TCP,
};

use crate::{
    listeners::{hold, unhold},
    maps::WORKLOADS,
    record::unpublish,
    slots,
    verdict::{addr_v4, addr_v6, deny_map_full, generation, Subject},
};

const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

#[doc(alias = "BPF_CGROUP_INET4_POST_BIND")]
#[cgroup_sock(post_bind4)]
pub fn zg_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run; post_bind4
    // may read `src_ip4` and `src_port`.
    let (addr, port) = unsafe { (addr_v4((*ctx.sock).src_ip4), (*ctx.sock).src_port) };
    on_bind(&ctx, addr, port)
}

#[doc(alias = "BPF_CGROUP_INET6_POST_BIND")]
#[cgroup_sock(post_bind6)]
pub fn zg_post_bind6(ctx: SockContext) -> i32 {
    // SAFETY: as above; post_bind6 may read `src_ip6` and `src_port`.
    let (addr, port) = unsafe { (addr_v6((*ctx.sock).src_ip6), (*ctx.sock).src_port) };
    on_bind(&ctx, addr, port)
}

#[doc(alias = "BPF_CGROUP_INET_SOCK_RELEASE")]
#[cgroup_sock(sock_release)]
pub fn zg_sock_release(ctx: SockContext) -> i32 {
    // An accepted connection has no record, and nothing to undo: its byte
    // counts come at `TCP_CLOSE`, after the FIN exchange.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: this socket's own record, copied out at once.
    let Some(record) = slots::record(cookie).map(|r| unsafe { *r }) else {
        return PROCEED;
    };
    if record.flags & FLAG_BOUND != 0 {
        unhold(&record.bound, record.bound_tag);
    }
    unpublish(&record, cookie);
    slots::remove_record(cookie, &record);
    PROCEED
}

#[inline(always)]
fn on_bind(ctx: &SockContext, addr: Addr, port: u32) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    if unsafe { (*ctx.sock).protocol } != u32::from(IPPROTO_TCP) {
        return PROCEED;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a plain Copy value, copied out at once.
    let Some(workload) = unsafe { WORKLOADS.get(&cgroup) }.copied() else {
        return PROCEED;
    };
    let key = ListenerKey {
        addr,
        port: port as u16,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let held = hold(&key, workload.id, tag_of(cookie));
    let recorded = held.is_some_and(|bound_tag| {
        let record = SocketRecord {
            kind: KIND_BOUND,
            flags: FLAG_BOUND,
            workload: workload.id,
            bound: key,
            bound_tag,
            ..SocketRecord::default()
        };
        slots::add_record(cookie, &record)
    });
    if !recorded {
        // A port the kernel cannot attribute would go unenforced: refuse the
        // bind (EPERM), fail closed and loudly.
        if let Some(bound_tag) = held {
            unhold(&key, bound_tag);
        }
        let subject = Subject {
            hook: HOOK_BIND,
            workload: workload.id,
            identity: workload.identity,
            conn: ConnKey {
                dst: addr,
                dst_port: key.port,
                proto: IPPROTO_TCP,
                ..ConnKey::default()
            },
            src_known: false,
            generation: generation(),
            quiet: false,
        };
        deny_map_full(&subject);
        return REFUSE;
    }
    PROCEED
}
