//! The verdict shared by the connect and accept hooks: one look-up in the
//! verdict cache, or at most eight in the policy maps, whatever the number
//! of policies (`zgate_common::policy`).

use aya_ebpf::maps::lpm_trie::Key;
use zgate_common::{
    conn::ConnKey,
    event::{self, VerdictEvent},
    listener::ListenerKey,
    policy::{
        decide, ip_key, CachedVerdict, IdentityBitsKey, PolicySetKey, PortBitsKey, TermBits,
        TermKey, VerdictCacheKey, WorkloadPolicyKey, DIM_DST_IP, DIM_SRC_IP, IDENTITY_NONE,
        IP_KEY_FIXED_BITS, NO_TERM, OUTCOME_DECIDED, OUTCOME_DEFER, POLICY_NONE, REASON_MAP_FULL,
        REASON_NO_POLICY, SET_SRC_IP_SENSITIVE,
    },
    stats::{ConnStats, ConnStatsKey, VerdictKey},
    Addr, AF_INET, AF_INET6, IPPROTO_TCP,
};

use crate::{
    listeners::owner,
    maps::{
        CONFIG, CONN_STATS, EVENTS, EVENTS_DROPPED, ID_BITS, IP_BITS, LISTENERS, POLICY_SETS,
        PORT_BITS, TERMS, VERDICTS, VERDICT_CACHE, WL_POLICY,
    },
};

/// A connection to an enrolled workload, as one hook sees it.
pub struct Subject {
    pub hook: u8,
    /// Destination workload id.
    pub workload: u32,
    /// Source identity, `IDENTITY_NONE` for plaintext.
    pub identity: u32,
    pub conn: ConnKey,
    /// False at `connect()`, before the kernel picked the source address.
    pub src_known: bool,
    /// The policy generation this verdict reads ([`generation`]).
    pub generation: u32,
    /// Decide without counting or logging: a segment on the 5-tuple of a
    /// connection that is over (`zgate_common::conn`).
    pub quiet: bool,
}

pub enum Verdict {
    Allow,
    Deny,
    /// Only at `connect()`: the policy depends on the source address, so the
    /// accept side decides.
    Defer,
}

/// The enrolled workload listening on `addr:port`, if any: the exact
/// address, then the family's wildcard, then (for IPv4) a dual-stack `[::]`.
#[inline(always)]
pub fn listener(addr: &Addr, port: u16) -> Option<u32> {
    match listener_id(addr, port) {
        NO_WORKLOAD => None,
        id => Some(id),
    }
}

/// Workload ids start at 1.
const NO_WORKLOAD: u32 = 0;

/// [`listener`]'s look-ups, `NO_WORKLOAD` for none. Out of line, a BPF
/// subprogram: its key's stack space is then not part of every hook's frame
/// (a call chain may use 512 bytes of stack in all).
#[inline(never)]
fn listener_id(addr: &Addr, port: u16) -> u32 {
    let mut key = ListenerKey {
        addr: *addr,
        port,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: the owner is a plain u32, copied out before any map update;
    // an entry whose count is 0 (being deleted) still names it, so a
    // connection racing the last close is judged, not waved through.
    if let Some(l) = unsafe { LISTENERS.get(&key) } {
        return owner(l);
    }
    key.addr = Addr::any(addr.family);
    if let Some(l) = unsafe { LISTENERS.get(&key) } {
        return owner(l);
    }
    if addr.family == AF_INET {
        key.addr = Addr::any(AF_INET6);
        if let Some(l) = unsafe { LISTENERS.get(&key) } {
            return owner(l);
        }
    }
    NO_WORKLOAD
}

/// The live policy generation, read once per verdict so every look-up of
/// that verdict is keyed with the same one.
#[inline(always)]
pub fn generation() -> u32 {
    CONFIG.get(0).map_or(0, |c| c.generation)
}

/// The verdict for a connection: remembered from an earlier connection with
/// the same key under this generation (`ZG_VERDICT_CACHE`), or taken from
/// the policy maps and remembered. Either way it is counted, and logged as
/// the policy maps' verdict would be.
///
/// Out of line, a BPF subprogram: each hook's own keys and the verdict's
/// would not fit one 512-byte stack frame together.
#[inline(never)]
pub fn judge(subject: &Subject) -> Verdict {
    let [_, s0, s1, s2, s3] = subject.conn.src.words();
    let [_, d0, d1, d2, d3] = subject.conn.dst.words();
    // The source left zero at `connect()`, by a mask: a zeroed array is a
    // call to `memset`.
    let known = 0u32.wrapping_sub(u32::from(subject.src_known));
    let key = VerdictCacheKey {
        generation: subject.generation,
        workload: subject.workload,
        identity: subject.identity,
        dst_port: subject.conn.dst_port,
        src_known: u8::from(subject.src_known),
        family: subject.conn.dst.family,
        src: [s0 & known, s1 & known, s2 & known, s3 & known],
        dst: [d0, d1, d2, d3],
    };
    // SAFETY: a plain Copy value, copied out at once.
    let verdict = match unsafe { VERDICT_CACHE.get(&key) } {
        Some(v) => *v,
        None => {
            let mut v = CachedVerdict::default();
            if !evaluate(subject, &mut v) {
                return deny_unconfigured(subject, subject.generation);
            }
            // No room to remember it: the next connection evaluates again.
            let _ = VERDICT_CACHE.insert(&key, &v, 0);
            v
        }
    };
    enforce(subject, &verdict)
}

/// The policy maps' verdict, into `out`: at most eight look-ups. False: the
/// workload has no compiled policy in this generation (fail closed, never
/// cached). Out of line: its keys' stack space is then not in `judge`'s
/// frame, on every hook's path (6.1's verifier rounds each frame of a call
/// chain up to 32 bytes, and the chain may use 512).
#[inline(never)]
fn evaluate(subject: &Subject, out: &mut CachedVerdict) -> bool {
    match evaluated(subject) {
        Some(v) => {
            *out = v;
            true
        }
        None => false,
    }
}

/// [`evaluate`]'s body, where `?` can stop at the first missing entry.
#[inline(always)]
fn evaluated(subject: &Subject) -> Option<CachedVerdict> {
    let generation = subject.generation;
    let set_id = *unsafe {
        WL_POLICY.get(&WorkloadPolicyKey {
            generation,
            workload: subject.workload,
        })
    }?;
    // SAFETY: the agent replaces a generation only after flipping CONFIG, and
    // deletes an old one only after that; a value read here stays valid for
    // the rest of this program run (RCU).
    let set = unsafe {
        POLICY_SETS.get(&PolicySetKey {
            generation,
            set: set_id,
        })
    }?;
    if !subject.src_known && set.flags & SET_SRC_IP_SENSITIVE != 0 {
        return Some(CachedVerdict {
            outcome: OUTCOME_DEFER,
            policy: POLICY_NONE,
            dry_run_deny_policy: POLICY_NONE,
            ..CachedVerdict::default()
        });
    }
    let identity = if subject.identity == IDENTITY_NONE {
        &set.identity_plaintext
    } else {
        let key = IdentityBitsKey {
            generation,
            set: set_id,
            identity: subject.identity,
            _pad: 0,
        };
        unsafe { ID_BITS.get(&key) }.unwrap_or(&set.identity_default)
    };
    let port_key = PortBitsKey {
        generation,
        set: set_id,
        port: subject.conn.dst_port,
        _pad: [0; 2],
    };
    let port = unsafe { PORT_BITS.get(&port_key) }.unwrap_or(&set.port_default);
    let src = address_bits(
        generation,
        set_id,
        DIM_SRC_IP,
        &subject.conn.src,
        subject.src_known,
    )?;
    let dst = address_bits(generation, set_id, DIM_DST_IP, &subject.conn.dst, true)?;
    let decision = decide(set, identity, port, src, dst);
    Some(CachedVerdict {
        outcome: OUTCOME_DECIDED,
        reason: decision.reason,
        dry_run_no_allow: u8::from(decision.dry_run_no_allow),
        _pad: 0,
        policy: term_policy(generation, set_id, decision.term),
        dry_run_deny_policy: term_policy(generation, set_id, decision.dry_run_deny),
    })
}

/// Count a verdict, emit its events, and say what the hook must do.
#[inline(always)]
fn enforce(subject: &Subject, verdict: &CachedVerdict) -> Verdict {
    if verdict.outcome == OUTCOME_DEFER {
        return Verdict::Defer;
    }
    if subject.quiet {
        return if verdict.allowed() {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
    }
    let generation = subject.generation;
    count(verdict.policy, verdict.reason, subject.hook);
    if !verdict.allowed() {
        count_denied(subject);
    }
    if verdict.dry_run_deny_policy != POLICY_NONE {
        emit(
            subject,
            generation,
            event::KIND_DRY_RUN_DENY_MATCH,
            verdict.reason,
            verdict.dry_run_deny_policy,
        );
    }
    if verdict.dry_run_no_allow != 0 {
        emit(
            subject,
            generation,
            event::KIND_DRY_RUN_NO_ALLOW,
            verdict.reason,
            POLICY_NONE,
        );
    }
    if verdict.allowed() {
        return Verdict::Allow;
    }
    emit(
        subject,
        generation,
        event::KIND_DENY,
        verdict.reason,
        verdict.policy,
    );
    Verdict::Deny
}

/// Istio's TCP metrics (`ZG_CONN_STATS`), per source identity and
/// destination workload: a denial counts wherever it happened; a connection
/// is opened once the accept side has established it (`sock_ops`, so a
/// segment that only passed `sk_lookup` never counts) and closed, with its
/// byte counts, at `TCP_CLOSE`.
#[inline(never)]
fn count_denied(subject: &Subject) {
    let key = ConnStatsKey {
        identity: subject.identity,
        workload: subject.workload,
    };
    add_conn_stats(
        &key,
        &ConnStats {
            opened: 0,
            denied: 1,
            closed: 0,
            sent_bytes: 0,
            received_bytes: 0,
        },
    );
}

/// Add `delta` to `key`'s counters. Inlined, into subprograms of its
/// callers' own. (Every field of a delta is spelled out where it is built:
/// a `..Default::default()` becomes a call to `memset`, one frame deeper
/// than 6.1's verifier lets the verdict's chain go.)
#[inline(always)]
pub fn add_conn_stats(key: &ConnStatsKey, delta: &ConnStats) {
    match CONN_STATS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value: no other program touches it concurrently.
        Some(s) => unsafe {
            (*s).opened += delta.opened;
            (*s).denied += delta.denied;
            (*s).closed += delta.closed;
            (*s).sent_bytes += delta.sent_bytes;
            (*s).received_bytes += delta.received_bytes;
        },
        None => {
            let _ = CONN_STATS.insert(key, delta, 0);
        }
    }
}

/// Refuse, fail closed, because a map the verdict needs is full.
#[inline(never)]
pub fn deny_map_full(subject: &Subject) -> Verdict {
    count(POLICY_NONE, REASON_MAP_FULL, subject.hook);
    emit(
        subject,
        subject.generation,
        event::KIND_DENY,
        REASON_MAP_FULL,
        POLICY_NONE,
    );
    Verdict::Deny
}

/// Bump the per-CPU counter of this verdict.
#[inline(always)]
pub fn count(policy: u32, reason: u8, hook: u8) {
    let key = VerdictKey {
        policy,
        reason,
        hook,
        _pad: [0; 2],
    };
    match VERDICTS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value: no other program touches it concurrently.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = VERDICTS.insert(&key, &1, 0);
        }
    }
}

/// The term bitset for `addr` in one address dimension. With `exact` false
/// only the set's default entry can match (the address is not known yet).
#[inline(always)]
fn address_bits(
    generation: u32,
    set: u32,
    dim: u8,
    addr: &Addr,
    exact: bool,
) -> Option<&'static TermBits> {
    let addr_bits = match (exact, addr.family) {
        (false, _) => 0,
        (true, AF_INET6) => 128,
        (true, _) => 32,
    };
    let key = Key::new(
        IP_KEY_FIXED_BITS + addr_bits,
        ip_key(generation, set, dim, addr),
    );
    IP_BITS.get(&key)
}

#[inline(always)]
fn term_policy(generation: u32, set: u32, term: u32) -> u32 {
    if term == NO_TERM {
        return POLICY_NONE;
    }
    let key = TermKey {
        generation,
        set,
        term,
    };
    match unsafe { TERMS.get(&key) } {
        Some(info) => info.policy,
        None => POLICY_NONE,
    }
}

/// An enrolled workload with no compiled policy: the window before the first
/// policy generation, or a missing entry. Fail closed.
#[inline(never)]
fn deny_unconfigured(subject: &Subject, generation: u32) -> Verdict {
    count(POLICY_NONE, REASON_NO_POLICY, subject.hook);
    emit(
        subject,
        generation,
        event::KIND_DENY,
        REASON_NO_POLICY,
        POLICY_NONE,
    );
    Verdict::Deny
}

/// Out of line: the events are the uncommon path, and one copy of the
/// event's stack space serves every caller.
#[inline(never)]
pub fn emit(subject: &Subject, generation: u32, kind: u8, reason: u8, policy: u32) {
    let Some(mut entry) = EVENTS.reserve::<VerdictEvent>(0) else {
        // Ring full: the verdict stands (and is counted); the event is lost,
        // and counted as lost.
        if let Some(n) = EVENTS_DROPPED.get_ptr_mut(0) {
            // SAFETY: a per-CPU value: no other program touches it concurrently.
            unsafe { *n += 1 };
        }
        return;
    };
    entry.write(VerdictEvent {
        kind,
        hook: subject.hook,
        reason,
        _pad: 0,
        generation,
        src: subject.conn.src,
        dst: subject.conn.dst,
        src_port: subject.conn.src_port,
        dst_port: subject.conn.dst_port,
        identity: subject.identity,
        workload: subject.workload,
        policy,
    });
    entry.submit(0);
}

/// An address from the kernel's `u32`/`[u32; 4]` network-order fields,
/// word by word (`Addr::from_words`).
#[inline(always)]
pub fn addr_v4(raw: u32) -> Addr {
    Addr::from_words(AF_INET, [raw, 0, 0, 0])
}

/// As [`addr_v4`]; an IPv4-mapped address (`::ffff:a.b.c.d`) is stored as
/// IPv4, as `Addr::v6` does.
#[inline(always)]
pub fn addr_v6(raw: [u32; 4]) -> Addr {
    if raw[0] == 0 && raw[1] == 0 && raw[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return addr_v4(raw[3]);
    }
    Addr::from_words(AF_INET6, raw)
}
