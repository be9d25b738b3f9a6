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
//! The hook also runs for segments that are not SYNs but find no socket,
//! such as the trailing segments of a connection whose sockets are gone;
//! the 5-tuple's `ZG_CONN_CLOSED` slot keeps those from being reported as
//! connections (`zgate_common::conn`).
//!
//! # Minimum kernel version
//! 5.9 (`BPF_SK_LOOKUP`).

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use zgate_common::{
    config::GENERATION_NONE,
    conn::ConnKey,
    event::HOOK_ACCEPT,
    policy::IDENTITY_NONE,
    Addr, AF_INET, AF_INET6, IPPROTO_TCP,
};

use crate::{
    peers::{self, Peer},
    verdict::{addr_v4, addr_v6, generation, judge, listener, Subject, Verdict},
};

#[doc(alias = "BPF_SK_LOOKUP")]
#[sk_lookup]
pub fn zg_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let lk = unsafe { &*ctx.lookup };
    if lk.protocol != u32::from(IPPROTO_TCP) {
        return SK_PASS;
    }
    let mut subject = Subject {
        hook: HOOK_ACCEPT,
        workload: 0,
        identity: IDENTITY_NONE,
        conn: ConnKey {
            src: Addr::default(),
            dst: Addr::default(),
            src_port: u16::from_be(lk.remote_port),
            dst_port: lk.local_port as u16,
            proto: IPPROTO_TCP,
            _pad0: 0,
            _pad1: 0,
        },
        src_known: true,
        generation: 0,
        quiet: false,
    };
    // Written in place: one copy of the connection on this program's stack,
    // which `judge`'s frame shares the 512 bytes of.
    match lk.family {
        f if f == u32::from(AF_INET) => {
            subject.conn.src = addr_v4(lk.remote_ip4);
            subject.conn.dst = addr_v4(lk.local_ip4);
        }
        f if f == u32::from(AF_INET6) => {
            subject.conn.src = addr_v6(lk.remote_ip6);
            subject.conn.dst = addr_v6(lk.local_ip6);
        }
        _ => return SK_PASS,
    }
    let Some(workload) = listener(&subject.conn.dst, subject.conn.dst_port) else {
        return SK_PASS;
    };
    subject.workload = workload;
    subject.generation = generation();
    match peers::lookup(&subject.conn) {
        Some(p) => {
            if honoured(&mut subject, &p) {
                return SK_PASS;
            }
        }
        // Plaintext. On the 5-tuple of a connection that is over, what
        // still arrives is no connection attempt of its own (or none its
        // identity may vouch for): judged as plaintext, not reported.
        None => subject.quiet = peers::recently_closed(&subject.conn),
    }
    match judge(&subject) {
        Verdict::Deny => SK_DROP,
        Verdict::Allow | Verdict::Defer => SK_PASS,
    }
}

/// Take the identity (and original source) of a recorded peer;
/// true if `connect()` already allowed the connection under this
/// generation, which the accept side then honours.
#[inline(always)]
fn honoured(subject: &mut Subject, p: &Peer) -> bool {
    // Between workloads on this node `connect()` already decided, with
    // both identities and this generation's policy of this workload.
    let approved = p.approval.generation != GENERATION_NONE
        && p.approval.generation == subject.generation
        && p.approval.workload == subject.workload;
    subject.identity = p.identity;
    if p.original_src.family != 0 {
        subject.conn.src = p.original_src;
    }
    approved
}
