//! `sock_ops`: publishes the identity of enrolled workloads' outgoing
//! connections under their 5-tuple, for the accept side on this node, and
//! counts the connections enrolled workloads accepted: opened once
//! established, closed with their byte counts (their counters' key kept
//! meanwhile in the slot the socket's cookie names, `zgate_common::socket`).
//!
//! At `TCP_CONNECT_CB` the source port is chosen and the SYN not yet sent,
//! so the connection's peer is recorded (`peers`) before the destination's `sk_lookup`
//! runs. The socket's record (`zgate_common::socket`) keeps the 5-tuple,
//! and `sock_release` removes it: connecting sockets ask for no
//! state callbacks, so the rest of their life runs no program.
//!
//! A connection `connect4|6` redirected to the agent's outbound listener
//! has its original destination published under the 5-tuple the agent's
//! accepted socket sees (`zgate_common::redirect`).
//!
//! A socket that listens on a port `listen()` picked (it never called
//! `bind()`, so `post_bind` never saw it) is entered at `TCP_LISTEN_CB`
//! for an owner the agent names (`zgate_common::listener::OWNERS_MAP`):
//! until then every connection to it is refused, where it would otherwise
//! be open to anyone.
//!
//! # Minimum kernel version
//! 4.13 (`sock_ops`), 4.16 (`STATE_CB`), 4.19 (`TCP_LISTEN_CB`).

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use zgate_common::{
    config::GENERATION_NONE,
    conn::ConnKey,
    event::{HOOK_BIND, KIND_LISTEN_UNATTRIBUTED},
    listener::{tag_of, ListenerKey, UNATTRIBUTED},
    policy::{IDENTITY_NONE, POLICY_NONE},
    redirect::OrigDst,
    socket::{
        Approval, SocketRecord, FLAG_BOUND, FLAG_CAPTURED, FLAG_PUBLISHED, KIND_BOUND,
        KIND_CONNECTING,
    },
    stats::{ConnStats, ConnStatsKey},
    AF_INET, AF_INET6, IPPROTO_TCP,
};

use crate::{
    listeners::{hold, unhold},
    maps::ORIG_DST,
    peers,
    slots,
    verdict::{add_conn_stats, addr_v4, addr_v6, deny_map_full, emit, generation, listener, Subject},
};

/// Each callback is a BPF subprogram of its own (`inline(never)`), so the
/// stack a call chain uses is that one callback's, not all of theirs.
#[sock_ops]
pub fn zg_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        // Only accepted sockets ask for state callbacks.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_accepted_close(&ctx),
        _ => {}
    }
    1
}

#[inline(never)]
fn on_connect(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The connecting workload, as `connect4|6` saw it (`sock_ops` may not
    // read the current cgroup before 6.4; on 6.1 the verifier says
    // "unknown func bpf_get_current_cgroup_id#80").
    let Some(record) = slots::record(cookie) else {
        return;
    };
    // SAFETY: this socket's own record, written by `connect4|6` in this
    // same `connect()` call and by nothing else while it runs (the socket
    // is locked).
    let record = unsafe { &mut *record };
    if record.kind != KIND_CONNECTING {
        return;
    }
    let Some(key) = conn_key(ctx) else {
        return;
    };
    if record.flags & FLAG_CAPTURED != 0 {
        let orig = OrigDst {
            dst: record.conn.dst,
            dst_port: record.conn.dst_port,
            _pad: [0; 2],
            identity: record.identity,
            workload: record.workload,
        };
        // No entry: the agent cannot tell where the connection was going
        // and closes it.
        let _ = ORIG_DST.insert(&key, &orig, 0);
    }
    // An approval holds for the destination `connect()` judged, only.
    let approval = if record.conn.dst == key.dst && record.conn.dst_port == key.dst_port {
        record.approval
    } else {
        Approval::default()
    };
    record.conn = key;
    record.flags |= FLAG_PUBLISHED;
    peers::publish(&key, cookie, record.identity, approval);
}

/// An accepted connection to an enrolled workload: count it opened, and
/// remember whose it is, so its byte counts are added to the Istio TCP
/// metrics when it closes.
///
/// A connection `connect()` approved names its destination workload in
/// its peer's approval: no listener look-up for those. Only counters
/// depend on either (hence the peer read without barriers): a port that
/// changed hands between `connect()` and the SYN, which `sk_lookup` then
/// judged for its new owner, counts for the old one.
#[inline(never)]
fn on_accepted(ctx: &SockOpsContext) {
    let Some(key) = conn_key(ctx) else {
        return;
    };
    // `conn_key` is the local end's view; the accept side's is reversed.
    let inbound = ConnKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        ..key
    };
    let peer = peers::peek(&inbound);
    let approved = peer
        .as_ref()
        .filter(|p| p.approval.generation != GENERATION_NONE)
        .map(|p| p.approval.workload);
    let Some(workload) = approved.or_else(|| listener(&key.src, key.src_port)) else {
        return;
    };
    let identity = peer.map_or(IDENTITY_NONE, |p| p.identity);
    let stats = ConnStatsKey { identity, workload };
    add_conn_stats(
        &stats,
        &ConnStats {
            opened: 1,
            denied: 0,
            closed: 0,
            sent_bytes: 0,
            received_bytes: 0,
        },
    );
    // The state callbacks first: a key is only ever kept for a socket whose
    // `TCP_CLOSE` will take it.
    if ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32).is_ok() {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        slots::add_accepted(cookie, &stats);
    }
}

/// An accepted connection closed: add its byte counts.
#[inline(never)]
fn on_accepted_close(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(stats) = slots::take_accepted(cookie) else {
        return;
    };
    // SAFETY: the context pointer is valid for the program's run.
    let (sent, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    add_conn_stats(
        &stats,
        &ConnStats {
            opened: 0,
            denied: 0,
            closed: 1,
            sent_bytes: sent,
            received_bytes: received,
        },
    );
}

/// A socket starts listening: one whose address no `post_bind` entered
/// (a port `listen()` picked) is entered for an owner the agent names, and
/// reported. It has no record, or one from a `connect()` that failed.
#[inline(never)]
fn on_listen(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let record = slots::record(cookie);
    // SAFETY: this socket's own record; `listen()` holds the socket lock.
    if record.is_some_and(|r| unsafe { (*r).flags } & FLAG_BOUND != 0) {
        return;
    }
    let Some(local) = conn_key(ctx) else {
        return;
    };
    let key = ListenerKey {
        addr: local.src,
        port: local.src_port,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    let subject = Subject {
        hook: HOOK_BIND,
        workload: UNATTRIBUTED,
        identity: IDENTITY_NONE,
        conn: ConnKey {
            src: local.dst,
            dst: key.addr,
            src_port: 0,
            dst_port: key.port,
            ..local
        },
        src_known: false,
        generation: generation(),
        quiet: false,
    };
    let Some(bound_tag) = hold(&key, UNATTRIBUTED, tag_of(cookie)) else {
        // `sock_ops` cannot refuse the `listen()`: the port stays
        // unenforced, and says so.
        deny_map_full(&subject);
        return;
    };
    let recorded = match record {
        // SAFETY: as above.
        Some(r) => unsafe {
            (*r).flags |= FLAG_BOUND;
            (*r).bound = key;
            (*r).bound_tag = bound_tag;
            true
        },
        None => slots::add_record(
            cookie,
            &SocketRecord {
                kind: KIND_BOUND,
                flags: FLAG_BOUND,
                workload: UNATTRIBUTED,
                bound: key,
                bound_tag,
                ..SocketRecord::default()
            },
        ),
    };
    if !recorded {
        unhold(&key, bound_tag);
        deny_map_full(&subject);
        return;
    }
    emit(
        &subject,
        subject.generation,
        KIND_LISTEN_UNATTRIBUTED,
        0,
        POLICY_NONE,
    );
}

/// The connection as its destination sees it: source = our local end.
#[inline(always)]
fn conn_key(ctx: &SockOpsContext) -> Option<ConnKey> {
    let (src, dst) = match ctx.family() {
        f if f == u32::from(AF_INET) => (addr_v4(ctx.local_ip4()), addr_v4(ctx.remote_ip4())),
        f if f == u32::from(AF_INET6) => (addr_v6(ctx.local_ip6()), addr_v6(ctx.remote_ip6())),
        _ => return None,
    };
    Some(ConnKey {
        src,
        dst,
        src_port: ctx.local_port() as u16,
        // The kernel shifts the big-endian port into the upper half on
        // little-endian hosts (`sock_ops_convert_ctx_access`).
        dst_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        proto: IPPROTO_TCP,
        _pad0: 0,
        _pad1: 0,
    })
}
