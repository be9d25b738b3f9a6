//! Small random policies and connections from fuzzer bytes, after the
//! proptest strategy in `agent/src/compile/tests.rs`: values are drawn
//! mostly from short tables, so that policies and connections collide
//! often, with some free-form values (any CIDR, port, short string) so the
//! fuzzer can reach what the tables miss.

use std::{net::IpAddr, sync::Arc};

use arbitrary::{Result, Unstructured};
use ipnet::IpNet;
use zgate::{
    identity::SpiffeId,
    policy::{
        Action, Authorization, Conn, Match, Origin, PolicyKey, Scope, ServiceAccountMatch,
        StringMatch,
    },
};

/// Up to 3 workloads, each with up to 4 policies `ns/p<i>`.
pub fn policy_lists(u: &mut Unstructured<'_>) -> Result<Vec<Vec<Arc<Authorization>>>> {
    let workloads = u.int_in_range(1..=3)?;
    (0..workloads)
        .map(|_| {
            let n = u.int_in_range(0..=4)?;
            (0..n).map(|i| authorization(u, i).map(Arc::new)).collect()
        })
        .collect()
}

/// Identities to number, some up front and some late: the table's, plus
/// up to two free-form ones.
pub fn identities(u: &mut Unstructured<'_>) -> Result<Vec<SpiffeId>> {
    let mut out = Vec::new();
    for td in DOMAINS {
        for ns in NAMESPACES {
            for sa in ACCOUNTS {
                out.push(SpiffeId::new(td, ns, sa));
            }
        }
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let id = SpiffeId::new(&id_field(u)?, &id_field(u)?, &id_field(u)?);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// A connection from one of `identities` (or plaintext, or an identity no
/// one numbered). Identities are always valid ones: the kernel's look-up
/// assumes, as it may, that a peer's namespace and service account are
/// non-empty (`Presence` holds for an identity no policy names).
pub fn conn(u: &mut Unstructured<'_>, identities: &[SpiffeId]) -> Result<Conn> {
    let src_identity = match u.int_in_range(0..=9)? {
        0..=1 => None,
        2 => Some(SpiffeId::new(&id_field(u)?, &id_field(u)?, &id_field(u)?)),
        _ => Some(u.choose(identities)?.clone()),
    };
    Ok(Conn {
        src: addr(u)?,
        dst: addr(u)?,
        dst_port: port(u)?,
        src_identity,
    })
}

fn authorization(u: &mut Unstructured<'_>, index: usize) -> Result<Authorization> {
    let rules = few_up_to(u, 2, |u| few_up_to(u, 2, |u| few_up_to(u, 2, a_match)))?;
    let allow = u.arbitrary::<bool>()?;
    Ok(Authorization {
        key: PolicyKey::new("ns", format!("p{index}")),
        scope: Scope::Namespace,
        action: if allow { Action::Allow } else { Action::Deny },
        rules,
        dry_run: u.ratio(1u8, 6)?,
        origin: if u.ratio(1u8, 6)? {
            Origin::PeerAuthentication
        } else {
            Origin::AuthorizationPolicy
        },
    })
}

fn a_match(u: &mut Unstructured<'_>) -> Result<Match> {
    Ok(Match {
        namespaces: few(u, string_match)?,
        not_namespaces: few(u, string_match)?,
        service_accounts: few(u, account)?,
        not_service_accounts: few(u, account)?,
        principals: few(u, string_match)?,
        not_principals: few(u, string_match)?,
        source_ips: few(u, cidr)?,
        not_source_ips: few(u, cidr)?,
        destination_ips: few(u, cidr)?,
        not_destination_ips: few(u, cidr)?,
        destination_ports: few(u, port)?,
        not_destination_ports: few(u, port)?,
    })
}

/// Usually empty (a field left out), else one or two values.
fn few<T>(
    u: &mut Unstructured<'_>,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    if u.ratio(3u8, 4)? {
        return Ok(Vec::new());
    }
    let n = u.int_in_range(1..=2)?;
    (0..n).map(|_| f(u)).collect()
}

/// 0 to `max` values.
fn few_up_to<T>(
    u: &mut Unstructured<'_>,
    max: usize,
    mut f: impl FnMut(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

fn string_match(u: &mut Unstructured<'_>) -> Result<StringMatch> {
    Ok(match u.int_in_range(0..=3)? {
        0 => StringMatch::Exact(string(u)?),
        1 => StringMatch::Prefix(string(u)?),
        2 => StringMatch::Suffix(string(u)?),
        _ => StringMatch::Presence,
    })
}

fn string(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1u8, 5)? {
        word(u)
    } else {
        Ok((*u.choose(&STRINGS)?).to_owned())
    }
}

/// A short string over an alphabet that can form identities.
fn word(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(0..=6)?;
    (0..len)
        .map(|_| u.choose(&ALPHABET).map(|c| *c as char))
        .collect()
}

/// A field of an identity a certificate can carry: non-empty, no `/`
/// (`SpiffeId::from_str` and the CA refuse anything else).
fn id_field(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(1..=6)?;
    (0..len)
        .map(|_| u.choose(&ID_ALPHABET).map(|c| *c as char))
        .collect()
}

fn account(u: &mut Unstructured<'_>) -> Result<ServiceAccountMatch> {
    Ok(ServiceAccountMatch {
        namespace: (*u.choose(&NAMESPACES)?).to_owned(),
        service_account: (*u.choose(&ACCOUNTS)?).to_owned(),
    })
}

fn cidr(u: &mut Unstructured<'_>) -> Result<IpNet> {
    if u.ratio(1u8, 4)? {
        // Any prefix of a table address, not truncated: the compiler must
        // truncate it itself.
        let ip = addr(u)?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = u.int_in_range(0..=max)?;
        return Ok(IpNet::new(ip, len).unwrap_or_default());
    }
    Ok(u.choose(&CIDRS)?.parse().unwrap_or_default())
}

fn addr(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    if u.ratio(1u8, 8)? {
        return Ok(if u.arbitrary()? {
            IpAddr::from(u.arbitrary::<[u8; 4]>()?)
        } else {
            IpAddr::from(u.arbitrary::<[u8; 16]>()?)
        });
    }
    Ok(u.choose(&ADDRS)?.parse().unwrap_or(IpAddr::from([0u8; 4])))
}

fn port(u: &mut Unstructured<'_>) -> Result<u16> {
    if u.ratio(1u8, 6)? {
        u.arbitrary()
    } else {
        u.choose(&PORTS).copied()
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "ab"];
const ACCOUNTS: [&str; 2] = ["x", "y"];
const DOMAINS: [&str; 2] = ["cluster.local", "other.td"];
const PORTS: [u16; 6] = [80, 443, 8080, 9090, 22, 0];
const ADDRS: [&str; 10] = [
    "10.0.0.1",
    "10.0.1.2",
    "10.1.0.1",
    "192.168.0.1",
    "127.0.0.1",
    "fd00::1",
    "fd00:1::2",
    "::ffff:10.0.0.1",
    "::1",
    "0.0.0.0",
];
const CIDRS: [&str; 14] = [
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.0.1/32",
    "10.0.0.5/16",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "fd00::/8",
    "fd00::1/128",
    "::/0",
    "::ffff:10.0.0.0/104",
    "::ffff:0.0.0.0/96",
    "127.0.0.1/32",
    "::/128",
];
const STRINGS: [&str; 10] = [
    "a",
    "ab",
    "b",
    "",
    "cluster.local/ns/a/sa/x",
    "other.td/ns/b/sa/y",
    "cluster.local/ns/",
    "/sa/x",
    "spiffe://cluster.local/ns/a/sa/x",
    "*",
];
const ALPHABET: [u8; 8] = *b"ab/.*-sx";
const ID_ALPHABET: [u8; 7] = *b"ab.*-sx";
