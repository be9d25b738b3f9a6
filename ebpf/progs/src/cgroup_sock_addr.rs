//! `cgroup/connect4|6`: the connect-side verdict.
//!
//! Between workloads on this node the kernel knows both identities at
//! `connect()`, so a connection the destination's policy denies fails with
//! EPERM before any packet is sent. Anything else (a destination that is not
//! an enrolled workload here, a policy that depends on the source address)
//! is left to the accept side.
//!
//! # Minimum kernel version
//! 4.17 (`BPF_CGROUP_INET4_CONNECT`); `bpf_get_current_cgroup_id` from 5.7.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use zgate_common::{
    conn::ConnKey,
    event::HOOK_CONNECT,
    Addr, IPPROTO_TCP,
};

use crate::{
    maps::{CONFIG, CONN_COUNT, WORKLOADS},
    verdict::{addr_v4, addr_v6, deny_map_full, judge, listener, Subject, Verdict},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[doc(alias = "BPF_CGROUP_INET4_CONNECT")]
#[cgroup_sock_addr(connect4)]
pub fn zg_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let addr = unsafe { addr_v4((*ctx.sock_addr).user_ip4) };
    verdict(&ctx, addr)
}

#[doc(alias = "BPF_CGROUP_INET6_CONNECT")]
#[cgroup_sock_addr(connect6)]
pub fn zg_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let addr = unsafe { addr_v6((*ctx.sock_addr).user_ip6) };
    verdict(&ctx, addr)
}

#[inline(always)]
fn verdict(ctx: &SockAddrContext, dst: Addr) -> i32 {
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
    let conn_entries = CONN_COUNT.get(0).copied().unwrap_or(0);
    let limit = CONFIG.get(0).map_or(0, |c| c.conn_limit);
    let full = conn_entries >= u64::from(limit);
    let Some(workload) = listener(&dst, dst_port).or(full.then_some(0)) else {
        return ALLOW;
    };
    let subject = Subject {
        hook: HOOK_CONNECT,
        workload,
        identity: source.identity,
        conn: ConnKey {
            src: Addr::any(dst.family),
            dst,
            src_port: 0,
            dst_port,
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        },
        src_known: false,
    };
    // `sock_ops` could not record this connection's identity: refuse it
    // rather than let the destination see a plaintext peer.
    if full {
        deny_map_full(&subject);
        return DENY;
    }
    match judge(&subject) {
        Verdict::Deny => DENY,
        Verdict::Allow | Verdict::Defer => ALLOW,
    }
}
