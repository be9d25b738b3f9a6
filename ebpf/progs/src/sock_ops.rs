//! `sock_ops`: records the identity of enrolled workloads' outgoing
//! connections, keyed by 5-tuple, for the accept side on this node.
//!
//! At `TCP_CONNECT_CB` the source port is chosen and the SYN not yet sent,
//! so the entry exists before the destination's `sk_lookup` runs. The entry
//! is removed when the socket reaches `TCP_CLOSE`.
//!
//! A connection `connect4|6` redirected to the agent's outbound listener
//! has its original destination moved here from socket cookie to the
//! 5-tuple the agent's accepted socket sees (`zgate_common::redirect`).
//!
//! # Minimum kernel version
//! 4.13 (`sock_ops`), 4.16 (`STATE_CB`).

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use zgate_common::{
    conn::{ConnKey, ConnPeer, ORIGIN_LOCAL},
    policy::IDENTITY_NONE,
    stats::ConnStatsKey,
    Addr, AF_INET, AF_INET6, IPPROTO_TCP,
};

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use crate::{
    maps::{CONN_COUNT, CONN_PEER, ORIG_DST, ORIG_DST_COOKIES, SERVER_CONNS, SOURCE_COOKIES},
    verdict::{addr_v4, addr_v6, count_close, listener},
};

#[sock_ops]
pub fn zg_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            on_accepted_close(&ctx);
            // Only recorded connections asked for state callbacks.
            if let Some(key) = conn_key(&ctx) {
                if CONN_PEER.remove(&key).is_ok() {
                    add_count(u64::MAX);
                }
                // A captured connection the agent never accepted.
                let _ = ORIG_DST.remove(&key);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    // The connecting workload, as `connect4|6` saw it (`sock_ops` may not
    // read the current cgroup before 6.4; on 6.1 the verifier says
    // "unknown func bpf_get_current_cgroup_id#80").
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain Copy value, copied out at once.
    let Some(source) = (unsafe { SOURCE_COOKIES.get(&cookie) }).copied() else {
        return;
    };
    let _ = SOURCE_COOKIES.remove(&cookie);
    let Some(key) = conn_key(ctx) else {
        return;
    };
    // SAFETY: a plain Copy value, copied out at once.
    if let Some(orig) = unsafe { ORIG_DST_COOKIES.get(&cookie) }.copied() {
        let _ = ORIG_DST_COOKIES.remove(&cookie);
        if ORIG_DST.insert(&key, &orig, 0).is_ok() {
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
    }
    let peer = ConnPeer {
        identity: source.identity,
        origin: ORIGIN_LOCAL,
        original_src: Addr::default(),
    };
    // `connect()` already refused this connection if the map was close to
    // full (`conn::RESERVED`), so this insert has room.
    if CONN_PEER.insert(&key, &peer, 0).is_ok() {
        add_count(1);
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

/// An accepted connection to an enrolled workload: remember whose it is, so
/// its byte counts are added to the Istio TCP metrics when it closes.
#[inline(always)]
fn on_accepted(ctx: &SockOpsContext) {
    let Some(key) = conn_key(ctx) else {
        return;
    };
    // `conn_key` is the local end's view; the accept side's is reversed.
    let Some(workload) = listener(&key.src, key.src_port) else {
        return;
    };
    let inbound = ConnKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        ..key
    };
    // SAFETY: a plain Copy value, copied out at once.
    let identity = unsafe { CONN_PEER.get(&inbound) }.map_or(IDENTITY_NONE, |p| p.identity);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let stats = ConnStatsKey { identity, workload };
    if SERVER_CONNS.insert(&cookie, &stats, 0).is_ok() {
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

#[inline(always)]
fn on_accepted_close(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain Copy value, copied out at once.
    let Some(stats) = (unsafe { SERVER_CONNS.get(&cookie) }).copied() else {
        return;
    };
    let _ = SERVER_CONNS.remove(&cookie);
    // SAFETY: the context pointer is valid for the program's run.
    let (sent, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    count_close(&stats, sent, received);
}

/// `ZG_CONN_COUNT[0] += delta` (wrapping: `u64::MAX` subtracts one).
#[inline(always)]
fn add_count(delta: u64) {
    if let Some(p) = CONN_COUNT.get_ptr_mut(0) {
        // SAFETY: a valid, aligned u64 in the map, shared by every CPU, so
        // updated with an atomic add (BPF `lock xadd`); core's `AtomicU64`
        // has no `fetch_add` on the BPF target.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
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
        _pad: [0; 3],
    })
}
