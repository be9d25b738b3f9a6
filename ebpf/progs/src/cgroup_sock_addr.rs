//! `cgroup/connect4|6`: the connect-side verdict, and outbound capture.
//!
//! Between workloads on this node the kernel knows both identities at
//! `connect()`, so a connection the destination's policy denies fails with
//! EPERM before any packet is sent. Anything else (a destination that is not
//! an enrolled workload here, a policy that depends on the source address)
//! is left to the accept side.
//!
//! A connection from an enrolled workload to a mesh workload on another
//! node (`ZG_REMOTE`) is redirected to the agent's outbound listener, which
//! carries it over HBONE (mTLS); the original destination is recorded by
//! socket cookie for `sock_ops` to re-key (`zgate_common::redirect`).
//!
//! # Minimum kernel version
//! 4.17 (`BPF_CGROUP_INET4_CONNECT`); `bpf_get_current_cgroup_id` from 5.7;
//! `bpf_get_socket_cookie` here from 5.10.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use zgate_common::{
    conn::ConnKey,
    event::HOOK_CONNECT,
    socket::{Approval, SocketRecord, FLAG_BOUND, FLAG_BY_AGENT, FLAG_CAPTURED, KIND_CONNECTING},
    workload::Workload,
    Addr, AF_INET, AF_INET6, IPPROTO_TCP,
};

use crate::{
    maps::{CONFIG, CONN_COUNT, REMOTE, WORKLOADS},
    record::unpublish,
    slots,
    verdict::{addr_v4, addr_v6, deny_map_full, generation, judge, listener, Subject, Verdict},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[doc(alias = "BPF_CGROUP_INET4_CONNECT")]
#[cgroup_sock_addr(connect4)]
pub fn zg_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let addr = unsafe { addr_v4((*ctx.sock_addr).user_ip4) };
    verdict::<false>(&ctx, addr)
}

#[doc(alias = "BPF_CGROUP_INET6_CONNECT")]
#[cgroup_sock_addr(connect6)]
pub fn zg_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let addr = unsafe { addr_v6((*ctx.sock_addr).user_ip6) };
    verdict::<true>(&ctx, addr)
}

/// `V6`: the connect6 program (the verifier lets each program write only
/// its own family's address fields).
#[inline(always)]
fn verdict<const V6: bool>(ctx: &SockAddrContext, dst: Addr) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let (protocol, raw_port) = unsafe { ((*ctx.sock_addr).protocol, (*ctx.sock_addr).user_port) };
    if protocol != u32::from(IPPROTO_TCP) {
        return ALLOW;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a plain Copy value, copied out at once.
    let Some(source) = (unsafe { WORKLOADS.get(&cgroup) }).copied() else {
        return ALLOW;
    };
    let dst_port = u16::from_be(raw_port as u16);
    let mut subject = Subject {
        hook: HOOK_CONNECT,
        workload: 0,
        identity: source.identity,
        conn: ConnKey {
            src: Addr::any(dst.family),
            dst,
            src_port: 0,
            dst_port,
            proto: IPPROTO_TCP,
            _pad0: 0,
            _pad1: 0,
        },
        src_known: false,
        generation: generation(),
        quiet: false,
    };
    let local = listener(&dst, dst_port);
    subject.workload = local.unwrap_or(0);
    // Past the limit `sock_ops` could not publish this connection's
    // identity: refuse it rather than let the destination see a plaintext
    // peer.
    let conn_entries = CONN_COUNT.get(0).copied().unwrap_or(0);
    let limit = CONFIG.get(0).map_or(0, |c| c.conn_limit);
    if conn_entries >= u64::from(limit) {
        deny_map_full(&subject);
        return DENY;
    }
    let (approval, flags) = match local {
        Some(workload) => match judge(&subject) {
            Verdict::Deny => return DENY,
            Verdict::Allow => (
                Approval {
                    generation: subject.generation,
                    workload,
                },
                0,
            ),
            Verdict::Defer => (Approval::default(), 0),
        },
        None if capture::<V6>(ctx, &dst) => (Approval::default(), FLAG_CAPTURED),
        None => (Approval::default(), 0),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if !save(cookie, &source, &approval, flags, &subject.conn) {
        // No record, no identity for the accept side, no original
        // destination for a captured connection: refuse it (EPERM) rather
        // than let it arrive, or leave, as plaintext.
        deny_map_full(&subject);
        return DENY;
    }
    ALLOW
}

/// Record a connecting socket: what `sock_ops` publishes for the accept side
/// once the source port is chosen, whatever the destination (a NAT or a
/// wildcard listener may still deliver the connection to a workload on this
/// node). Most sockets have no record yet; one that bound an address first
/// keeps it, and one connecting again (after a failed attempt) first
/// unpublishes the attempt before.
///
/// Out of line, a BPF subprogram beside `judge`: the hook's frame and
/// either one's must fit the 512 bytes of stack a call chain may use.
#[inline(never)]
fn save(cookie: u64, source: &Workload, approval: &Approval, flags: u8, conn: &ConnKey) -> bool {
    let record = SocketRecord {
        kind: KIND_CONNECTING,
        flags,
        identity: source.identity,
        workload: source.id,
        approval: *approval,
        conn: *conn,
        ..SocketRecord::default()
    };
    let Some(old) = slots::record(cookie) else {
        return slots::add_record(cookie, &record);
    };
    // SAFETY: this socket's own record; nothing else writes it while
    // `connect()` holds the socket lock.
    let old = unsafe { &mut *old };
    unpublish(old, cookie);
    let (flags, bound, bound_tag) = (
        old.flags & (FLAG_BOUND | FLAG_BY_AGENT),
        old.bound,
        old.bound_tag,
    );
    *old = record;
    old.flags |= flags;
    old.bound = bound;
    old.bound_tag = bound_tag;
    true
}

/// Redirect a connection to a remote mesh workload to the agent's outbound
/// listener; false when the destination is not one (or capture is off).
/// The destination node takes the verdict, once the agent has carried the
/// connection there over mTLS. Out of line, like `save`.
#[inline(never)]
fn capture<const V6: bool>(ctx: &SockAddrContext, dst: &Addr) -> bool {
    // SAFETY: only presence is read.
    if unsafe { REMOTE.get(dst) }.is_none() {
        return false;
    }
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    let (outbound, port) = (config.outbound, config.outbound_port);
    if outbound.family == 0 || port == 0 {
        return false;
    }
    if !V6 && outbound.family != AF_INET {
        return false;
    }
    let port = u32::from(port.to_be());
    let [_family, a, b, c, d] = outbound.words();
    // SAFETY: connect4|6 may write `user_ip4`/`user_ip6` and `user_port`
    // (`sock_addr_is_valid_access`); the context is valid for the run.
    unsafe {
        if V6 {
            // A v4 listener is reached from a v6 socket by its v4-mapped
            // address.
            let words = if outbound.family == AF_INET6 {
                [a, b, c, d]
            } else {
                [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), a]
            };
            (*ctx.sock_addr).user_ip6 = words;
        } else {
            (*ctx.sock_addr).user_ip4 = a;
        }
        (*ctx.sock_addr).user_port = port;
    }
    true
}
