//! `sk_lookup`: the accept-side verdict, at SYN time, before any socket is
//! chosen. `SK_DROP` fails the lookup, so TCP answers with a RST and the
//! client sees ECONNREFUSED at once, never a hang.
//!
//! The source identity is the one recorded for this 5-tuple — by the agent
//! for connections it delivered after mTLS, by `sock_ops` for workloads on
//! this node — or none (plaintext).
//!
//! # Minimum kernel version
//! 5.9 (`BPF_SK_LOOKUP`).

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use zgate_common::{
    conn::ConnKey, event::HOOK_ACCEPT, policy::IDENTITY_NONE, AF_INET, AF_INET6, IPPROTO_TCP,
};

use crate::{
    maps::CONN_PEER,
    verdict::{addr_v4, addr_v6, judge, listener, Subject, Verdict},
};

#[doc(alias = "BPF_SK_LOOKUP")]
#[sk_lookup]
pub fn zg_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let lk = unsafe { &*ctx.lookup };
    if lk.protocol != u32::from(IPPROTO_TCP) {
        return SK_PASS;
    }
    let (src, dst) = match lk.family {
        f if f == u32::from(AF_INET) => (addr_v4(lk.remote_ip4), addr_v4(lk.local_ip4)),
        f if f == u32::from(AF_INET6) => (addr_v6(lk.remote_ip6), addr_v6(lk.local_ip6)),
        _ => return SK_PASS,
    };
    let dst_port = lk.local_port as u16;
    let Some(workload) = listener(&dst, dst_port) else {
        return SK_PASS;
    };
    let mut conn = ConnKey {
        src,
        dst,
        src_port: u16::from_be(lk.remote_port),
        dst_port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    // SAFETY: a plain Copy value, copied out at once.
    let peer = unsafe { CONN_PEER.get(&conn) }.copied();
    let identity = match peer {
        Some(p) => {
            if p.original_src.family != 0 {
                conn.src = p.original_src;
            }
            p.identity
        }
        None => IDENTITY_NONE,
    };
    let subject = Subject {
        hook: HOOK_ACCEPT,
        workload,
        identity,
        conn,
        src_known: true,
    };
    match judge(&subject) {
        Verdict::Deny => SK_DROP,
        Verdict::Allow | Verdict::Defer => SK_PASS,
    }
}
