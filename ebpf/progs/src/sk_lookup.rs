//! `sk_lookup`: the accept-side verdict, at SYN time, before any socket is
//! chosen. `SK_DROP` fails the lookup, so TCP answers with a RST and the
//! client sees ECONNREFUSED at once, never a hang.
//!
//! The source identity is the one recorded for this 5-tuple — by the agent
//! for connections it delivered after mTLS, by `sock_ops` for workloads on
//! this node — or none (plaintext). A connection between workloads on this
//! node that `connect()` allowed is not decided twice: its approval holds
//! while the policy generation and the destination workload are the same.
//!
//! # Minimum kernel version
//! 5.9 (`BPF_SK_LOOKUP`).

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use zgate_common::{
    config::GENERATION_NONE, conn::ConnKey, event::HOOK_ACCEPT, policy::IDENTITY_NONE, AF_INET,
    AF_INET6, IPPROTO_TCP,
};

use crate::{
    maps::CONN_PEER,
    verdict::{addr_v4, addr_v6, count_connection, generation, judge, listener, Subject, Verdict},
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
    let conn = ConnKey {
        src,
        dst,
        src_port: u16::from_be(lk.remote_port),
        dst_port,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let generation = generation();
    // SAFETY: a plain Copy value, copied out at once.
    let peer = unsafe { CONN_PEER.get(&conn) }.copied();
    let mut subject = Subject {
        hook: HOOK_ACCEPT,
        workload,
        identity: IDENTITY_NONE,
        conn,
        src_known: true,
        generation,
    };
    if let Some(p) = peer {
        subject.identity = p.identity;
        if p.original_src.family != 0 {
            subject.conn.src = p.original_src;
        }
        // Between workloads on this node `connect()` already decided, with
        // both identities and this generation's policy of this workload.
        if p.approval.generation != GENERATION_NONE
            && p.approval.generation == generation
            && p.approval.workload == workload
        {
            count_connection(&subject, true);
            return SK_PASS;
        }
    }
    match judge(&subject) {
        Verdict::Deny => SK_DROP,
        Verdict::Allow | Verdict::Defer => SK_PASS,
    }
}
