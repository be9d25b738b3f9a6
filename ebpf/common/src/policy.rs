//! The compiled policy: the maps that let a program decide a connection with
//! a fixed number of look-ups, however many policies exist.
//!
//! The agent turns every AuthorizationPolicy (and each PeerAuthentication,
//! as a synthetic DENY) that applies to a workload into disjunctive *terms*:
//! a term is one way a rule can match, the AND of one match chosen from each
//! of the rule's clauses. A term's predicate splits into four independent
//! dimensions — source identity, source IP, destination IP, destination port
//! — so for each dimension the agent stores, per value class, the bitset of
//! terms whose predicate holds there. A verdict is then four look-ups and an
//! AND of four bitsets (`decide`), the bit-vector classification scheme.
//!
//! Workloads with the same set of applicable policies share one *policy set*.
//! Every key carries the policy generation; the agent writes a complete new
//! generation, flips `config::Config::generation`, then deletes the old one,
//! so no connection is ever decided against a half-written policy.

use crate::Addr;

/// Width of a term bitset: a policy set holds at most this many terms.
pub const TERM_WORDS: usize = 4;
pub const MAX_TERMS: usize = TERM_WORDS * 64;

pub const WORKLOAD_POLICY_MAP: &str = "ZG_WL_POLICY";
pub const POLICY_SET_MAP: &str = "ZG_POLICY_SETS";
pub const IDENTITY_BITS_MAP: &str = "ZG_ID_BITS";
pub const PORT_BITS_MAP: &str = "ZG_PORT_BITS";
pub const IP_BITS_MAP: &str = "ZG_IP_BITS";
pub const TERM_MAP: &str = "ZG_TERMS";
pub const VERDICT_CACHE_MAP: &str = "ZG_VERDICT_CACHE";
/// Verdicts remembered at once (an LRU: the least recently used go first).
pub const VERDICT_CACHE_ENTRIES: u32 = 16_384;

/// Identity 0 is "no identity": a plaintext connection.
pub const IDENTITY_NONE: u32 = 0;
/// No policy decided (default allow, or a fail-closed denial).
pub const POLICY_NONE: u32 = u32::MAX;

/// `PolicySet::flags`: at least one enforced ALLOW policy applies.
pub const SET_HAS_ALLOW: u32 = 1;
/// At least one dry-run ALLOW policy applies.
pub const SET_HAS_DRY_ALLOW: u32 = 2;
/// Some term constrains the source IP: a connect-side verdict, taken before
/// the source address is chosen, must leave the decision to the accept side.
pub const SET_SRC_IP_SENSITIVE: u32 = 4;

/// `IpBitsKey::dim`.
pub const DIM_SRC_IP: u8 = 1;
pub const DIM_DST_IP: u8 = 2;
/// Bits of `IpBitsKey` before the address: always fully part of the prefix.
pub const IP_KEY_FIXED_BITS: u32 = 96;

/// `TermInfo::flags`: the term belongs to a PeerAuthentication-derived policy.
pub const TERM_PEER_AUTHN: u32 = 1;

/// Why a verdict was reached; mirrored by the agent's `Reason`.
pub const REASON_DEFAULT_ALLOW: u8 = 1;
pub const REASON_ALLOW_MATCHED: u8 = 2;
pub const REASON_EXPLICIT_DENY: u8 = 3;
pub const REASON_NO_ALLOW_MATCHED: u8 = 4;
/// An enrolled workload has no compiled policy yet, or a map entry the
/// compiler always writes is missing: fail closed.
pub const REASON_NO_POLICY: u8 = 5;
/// A map the verdict depends on is full: refused, fail closed.
pub const REASON_MAP_FULL: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TermBits {
    pub words: [u64; TERM_WORDS],
}
const _: () = assert!(size_of::<TermBits>() == 32);

impl TermBits {
    pub const EMPTY: Self = Self {
        words: [0; TERM_WORDS],
    };

    pub fn set(&mut self, term: usize) {
        if let Some(w) = self.words.get_mut(term / 64) {
            *w |= 1 << (term % 64);
        }
    }

    pub fn contains(&self, term: usize) -> bool {
        self.words
            .get(term / 64)
            .is_some_and(|w| w & (1 << (term % 64)) != 0)
    }
}

/// `(generation, workload id)` → policy set id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkloadPolicyKey {
    pub generation: u32,
    pub workload: u32,
}
const _: () = assert!(size_of::<WorkloadPolicyKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicySetKey {
    pub generation: u32,
    pub set: u32,
}
const _: () = assert!(size_of::<PolicySetKey>() == 8);

/// One policy set: which terms are DENY/ALLOW (enforced or dry-run), and
/// the bitsets for values that have no entry of their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub deny: TermBits,
    pub allow: TermBits,
    pub dry_deny: TermBits,
    pub dry_allow: TermBits,
    /// Identity-dimension bits of a plaintext connection.
    pub identity_plaintext: TermBits,
    /// Identity-dimension bits of an identity with no entry in `ZG_ID_BITS`.
    pub identity_default: TermBits,
    /// Port-dimension bits of a port with no entry in `ZG_PORT_BITS`.
    pub port_default: TermBits,
    /// `SET_*`.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PolicySet>() == 232);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityBitsKey {
    pub generation: u32,
    pub set: u32,
    pub identity: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<IdentityBitsKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortBitsKey {
    pub generation: u32,
    pub set: u32,
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<PortBitsKey>() == 12);

/// The data part of an LPM-trie key (the trie prepends the prefix length).
/// The first `IP_KEY_FIXED_BITS` bits are always part of the prefix; each
/// (generation, set, dimension, family) has a default entry whose prefix
/// stops there, so a look-up never misses for a compiled set. The entry for
/// a CIDR holds the bits of the terms satisfied by *every* CIDR containing
/// it, which the longest-prefix match makes exact for each address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpBitsKey {
    pub generation: u32,
    pub set: u32,
    pub dim: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<IpBitsKey>() == 28);

/// `(generation, set, term)` → the policy the term came from, read once per
/// verdict to name the deciding policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TermKey {
    pub generation: u32,
    pub set: u32,
    pub term: u32,
}
const _: () = assert!(size_of::<TermKey>() == 12);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TermInfo {
    /// Numeric policy id (the agent maps it back to `namespace/name`).
    pub policy: u32,
    /// `TERM_*`.
    pub flags: u32,
}
const _: () = assert!(size_of::<TermInfo>() == 8);

/// Everything a verdict depends on: the policy generation, the destination
/// workload and the connection as the hook sees it. A generation's policy
/// maps never change once it is live — only bits for identities no
/// connection has carried yet are added (`config::Config::generation`) — so
/// the same key always gets the same verdict, and `ZG_VERDICT_CACHE` keeps
/// it. A policy update is a new generation: older entries are never read
/// again and age out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictCacheKey {
    pub generation: u32,
    pub workload: u32,
    /// Source identity, `IDENTITY_NONE` for plaintext.
    pub identity: u32,
    pub dst_port: u16,
    /// 0 at `connect()`, where `src` is not chosen yet (and left zero); 1 at
    /// the accept side.
    pub src_known: u8,
    /// Of both addresses (`Addr::family`).
    pub family: u8,
    /// The addresses' words (`Addr::words`, without the family's).
    pub src: [u32; 4],
    pub dst: [u32; 4],
}
const _: () = assert!(size_of::<VerdictCacheKey>() == 48);

/// `CachedVerdict::outcome`: the decision stands as `reason` says.
pub const OUTCOME_DECIDED: u8 = 1;
/// At `connect()` the policy depends on the source address, which is not
/// chosen yet: the accept side decides.
pub const OUTCOME_DEFER: u8 = 2;

/// A verdict with its deciding policies resolved: all a hook needs to count
/// it, log it and enforce it without the policy maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVerdict {
    /// `OUTCOME_*`.
    pub outcome: u8,
    /// `REASON_*` (`OUTCOME_DECIDED`).
    pub reason: u8,
    /// 1: dry-run ALLOW policies exist, no enforced ALLOW, none matched.
    pub dry_run_no_allow: u8,
    pub _pad: u8,
    /// The deciding policy, `POLICY_NONE` when none decided.
    pub policy: u32,
    /// The policy of the first dry-run DENY that matched, `POLICY_NONE` if
    /// none did.
    pub dry_run_deny_policy: u32,
}
const _: () = assert!(size_of::<CachedVerdict>() == 12);

impl CachedVerdict {
    pub fn allowed(&self) -> bool {
        matches!(self.reason, REASON_DEFAULT_ALLOW | REASON_ALLOW_MATCHED)
    }
}

/// No term: `Decision::term` when no policy decided, `dry_run_deny` when no
/// dry-run DENY matched.
pub const NO_TERM: u32 = u32::MAX;

/// The outcome of `decide`, before the deciding term is mapped to a policy.
///
/// Plain `u32`s with a sentinel rather than `Option<u32>`: an `Option`'s
/// unset payload is undefined, and the verifier rejects the spill of an
/// uninitialised register that LLVM may emit for it ("R3 !read_ok").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `REASON_*`.
    pub reason: u8,
    /// The term that decided (`ALLOW_MATCHED` / `EXPLICIT_DENY`), or `NO_TERM`.
    pub term: u32,
    /// First dry-run DENY term that matched, or `NO_TERM`.
    pub dry_run_deny: u32,
    /// Dry-run ALLOW policies exist, no enforced ALLOW does, and none matched.
    pub dry_run_no_allow: bool,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self.reason, REASON_DEFAULT_ALLOW | REASON_ALLOW_MATCHED)
    }

    /// The deciding term, if a policy decided.
    pub fn deciding_term(&self) -> Option<u32> {
        (self.term != NO_TERM).then_some(self.term)
    }
}

/// ztunnel's decision order over the four dimension bitsets of one
/// connection: an enforced DENY match rejects; with no enforced ALLOW the
/// connection is allowed; otherwise an ALLOW match is required.
#[inline(always)]
pub fn decide(
    set: &PolicySet,
    identity: &TermBits,
    port: &TermBits,
    src: &TermBits,
    dst: &TermBits,
) -> Decision {
    let mut deny = NO_TERM;
    let mut allow = NO_TERM;
    let mut dry_deny = NO_TERM;
    let mut dry_allow = false;
    let mut w = 0;
    while w < TERM_WORDS {
        let sat = identity.words[w] & port.words[w] & src.words[w] & dst.words[w];
        if deny == NO_TERM {
            deny = first_term(w, sat & set.deny.words[w]);
        }
        if allow == NO_TERM {
            allow = first_term(w, sat & set.allow.words[w]);
        }
        if dry_deny == NO_TERM {
            dry_deny = first_term(w, sat & set.dry_deny.words[w]);
        }
        dry_allow |= sat & set.dry_allow.words[w] != 0;
        w += 1;
    }
    let has_allow = set.flags & SET_HAS_ALLOW != 0;
    let dry_run_no_allow = !has_allow && set.flags & SET_HAS_DRY_ALLOW != 0 && !dry_allow;
    let (reason, term) = if deny != NO_TERM {
        (REASON_EXPLICIT_DENY, deny)
    } else if !has_allow {
        (REASON_DEFAULT_ALLOW, NO_TERM)
    } else if allow != NO_TERM {
        (REASON_ALLOW_MATCHED, allow)
    } else {
        (REASON_NO_ALLOW_MATCHED, NO_TERM)
    };
    Decision {
        reason,
        term,
        dry_run_deny: dry_deny,
        dry_run_no_allow,
    }
}

/// The lowest set bit's term number, or `NO_TERM`.
#[inline(always)]
fn first_term(word: usize, bits: u64) -> u32 {
    if bits == 0 {
        NO_TERM
    } else {
        word as u32 * 64 + bits.trailing_zeros()
    }
}

/// The LPM-trie key for an address in one dimension of one policy set.
pub fn ip_key(generation: u32, set: u32, dim: u8, addr: &Addr) -> IpBitsKey {
    IpBitsKey {
        generation,
        set,
        dim,
        family: addr.family,
        _pad: [0; 2],
        addr: addr.bytes,
    }
}
