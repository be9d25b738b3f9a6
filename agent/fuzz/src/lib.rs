//! The properties the fuzz targets check, one function per target, so
//! `fuzz_targets/*.rs` stay one line each. Every function panics when a
//! property fails: that is the crash libFuzzer reports.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use arbitrary::{Result, Unstructured};
use rustls::pki_types::CertificateDer;
use zgate::{
    check::{self, Query},
    compile::{self, Compiled, Identities, PolicyIds, WorkloadPolicies},
    config::{MeshConfig, Options},
    identity::SpiffeId,
    policy::{self, Authorization, Conn, DryRunNote, Reason},
};
use zgate_common::policy::{
    REASON_ALLOW_MATCHED, REASON_DEFAULT_ALLOW, REASON_EXPLICIT_DENY, REASON_NO_ALLOW_MATCHED,
};

mod arb;

// === config_yaml ===

/// Any text either fails to load with an error that renders, or loads into
/// a configuration whose every query (policies per workload, `zgate check`,
/// `zgate policies`, compilation) works and agrees with the evaluator.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = Options::default();
    let mesh = match MeshConfig::from_str(text, "fuzz.yaml", &opts) {
        Ok(mesh) => mesh,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let _ = check::policies(&mesh);
    let td = &mesh.options().trust_domain;
    let mut identities: Vec<Option<SpiffeId>> = vec![None];
    identities.extend(mesh.workloads().iter().map(|w| Some(w.identity(td))));
    identities.truncate(7);
    identities.push(Some(SpiffeId::new("other.td", "ns", "sa")));
    let mut ports: Vec<u16> = vec![0, 80, 15008, 65535];
    let mut addrs: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    addrs.extend(mesh.workloads().iter().filter_map(|w| w.address));
    for p in mesh.authorizations() {
        for m in p.rules.iter().flatten().flatten() {
            ports.extend(&m.destination_ports);
            ports.extend(&m.not_destination_ports);
            for net in m.source_ips.iter().chain(&m.destination_ips) {
                addrs.push(net.network());
            }
        }
    }
    ports.truncate(8);
    addrs.truncate(6);

    let mut destinations: Vec<(String, BTreeMap<String, String>)> = mesh
        .workloads()
        .iter()
        .map(|w| (w.namespace.clone(), w.labels.clone()))
        .collect();
    // Every selector a policy names, in its own namespace and in another.
    for p in mesh.authorizations() {
        let labels = match &p.scope {
            policy::Scope::WorkloadSelector(sel) => sel.clone(),
            policy::Scope::Global | policy::Scope::Namespace => BTreeMap::new(),
        };
        destinations.push((p.key.namespace.clone(), labels.clone()));
        destinations.push(("elsewhere".to_owned(), labels));
    }
    destinations.truncate(16);

    let mut workloads = Vec::new();
    for (i, (namespace, labels)) in destinations.iter().enumerate() {
        let policies = mesh.policies_for(namespace, labels);
        let _ = mesh.peer_authentication_for(namespace, labels);
        for id in &identities {
            for &port in &ports {
                let src = addrs[port as usize % addrs.len()];
                let dst = addrs[(port as usize + 1) % addrs.len()];
                let conn = Conn {
                    src,
                    dst,
                    dst_port: port,
                    src_identity: id.clone(),
                };
                let query = Query {
                    dest_namespace: namespace.clone(),
                    dest_labels: labels.clone(),
                    dest_workload: None,
                    conn,
                    src_ip_defaulted: true,
                    dst_ip_defaulted: false,
                };
                let report = check::check(&mesh, &query);
                let _ = report.evaluation.verdict.to_string();
            }
        }
        workloads.push(WorkloadPolicies {
            id: i as u32 + 1,
            name: format!("{namespace}/w{i}"),
            policies,
        });
    }
    // The loaded policies compile, and the kernel's look-ups agree.
    let known: Vec<SpiffeId> = identities.iter().flatten().cloned().collect();
    let Some((compiled, ids, policy_ids)) = compile_all(&workloads, &known, known.len() / 2) else {
        return;
    };
    for wl in &workloads {
        for id in &identities {
            for &port in &ports {
                let conn = Conn {
                    src: addrs[0],
                    dst: addrs[port as usize % addrs.len()],
                    dst_port: port,
                    src_identity: id.clone(),
                };
                agree(&compiled, &ids, &policy_ids, wl, &conn);
            }
        }
    }
}

// === spiffe_id ===

/// A string that parses as an identity renders back to itself; an identity
/// whose round-trip check passes parses back to itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::from_str(text) {
        let rendered = id.to_string();
        assert_eq!(rendered, text, "rendering changes the identity");
        let back = SpiffeId::from_str(&rendered).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.check_round_trip(), Ok(()));
        assert_eq!(format!("spiffe://{}", id.principal()), rendered);
    }
    // The three fields split out of the input, as the CA would receive them.
    let mut fields = text.splitn(3, '\u{0}');
    let id = SpiffeId::new(
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    if id.check_round_trip().is_ok() {
        assert_eq!(SpiffeId::from_str(&id.to_string()), Ok(id));
    }
}

// === peer_identity ===

/// Any bytes as a certificate chain: no panic, and an identity found is a
/// valid one. The first two bytes (big-endian) split the input into a leaf
/// and one intermediate.
pub fn peer_identity(data: &[u8]) {
    assert_eq!(zgate::tls::peer_identity(&[]), None);
    let (leaf, rest) = match data {
        [hi, lo, rest @ ..] => {
            let split = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            (&rest[..split], &rest[split..])
        }
        _ => (data, &[][..]),
    };
    let whole = [CertificateDer::from(data)];
    let chain = [CertificateDer::from(leaf), CertificateDer::from(rest)];
    for certs in [&whole[..], &chain[..]] {
        if let Some(id) = zgate::tls::peer_identity(certs) {
            assert_eq!(id.check_round_trip(), Ok(()), "{id:?}");
        }
    }
}

// === hbone_request ===

/// The HBONE server's CONNECT parsing: the input is split on NUL into a
/// method, a URI (the `:authority`) and a `Forwarded` header value.
pub fn hbone_request(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let forwarded = parts.next().unwrap_or_default();

    if let Ok(text) = std::str::from_utf8(forwarded) {
        if let Some(addr) = zgate::hbone::fuzzing::forwarded_for(text) {
            let again = zgate::hbone::fuzzing::forwarded_for(&format!("for=\"{addr}\""));
            assert_eq!(again, Some(addr));
        }
    }
    let mut builder = http::Request::builder().uri(uri);
    if let Ok(method) = http::Method::from_bytes(method) {
        builder = builder.method(method);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(forwarded) {
        builder = builder.header(http::header::FORWARDED, value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (head, ()) = request.into_parts();
    let peer = SpiffeId::new("cluster.local", "ns", "sa");
    if let Ok(req) = zgate::hbone::fuzzing::parse_request(&head, peer) {
        assert_eq!(head.method, http::Method::CONNECT);
        let authority = head.uri.authority().map(|a| a.as_str());
        assert_eq!(
            authority.and_then(|a| a.parse::<SocketAddr>().ok()),
            Some(req.authority)
        );
    }
}

// === compile_differential ===

/// Random small policy lists and connections: the compiled maps, read
/// through the kernel's look-up model, give the reference evaluator's
/// verdict, reason, deciding policy and dry-run notes.
pub fn compile_differential(data: &[u8]) {
    let _ = compile_differential_inner(&mut Unstructured::new(data));
}

fn compile_differential_inner(u: &mut Unstructured<'_>) -> Result<()> {
    let lists = arb::policy_lists(u)?;
    let known = arb::identities(u)?;
    let early = u.int_in_range(0..=known.len())?;
    let workloads: Vec<WorkloadPolicies> = lists
        .into_iter()
        .enumerate()
        .map(|(i, policies)| WorkloadPolicies {
            id: i as u32 + 1,
            name: format!("ns/w{i}"),
            policies,
        })
        .collect();
    let Some((compiled, ids, policy_ids)) = compile_all(&workloads, &known, early) else {
        return Ok(());
    };
    let probes = u.int_in_range(1..=24)?;
    for _ in 0..probes {
        let wl = u.choose(&workloads)?;
        let conn = arb::conn(u, &known)?;
        agree(&compiled, &ids, &policy_ids, wl, &conn);
    }
    Ok(())
}

// === helpers ===

/// Compiles with only `known[..early]` numbered up front; the rest arrive
/// afterwards and get their entries the way the agent adds them. `None`
/// when the policies exceed the in-kernel term limit (a clear error).
fn compile_all(
    workloads: &[WorkloadPolicies],
    known: &[SpiffeId],
    early: usize,
) -> Option<(Compiled, Identities, PolicyIds)> {
    let mut ids = Identities::default();
    for id in &known[..early] {
        ids.intern(id);
    }
    let mut policy_ids = PolicyIds::default();
    let mut compiled = match compile::compile(workloads, &ids, &mut policy_ids) {
        Ok(compiled) => compiled,
        Err(compile::Error::TooManyTerms { terms, .. }) => {
            assert!(terms > zgate_common::policy::MAX_TERMS);
            return None;
        }
    };
    for id in &known[early..] {
        let n = ids.intern(id);
        for set in &mut compiled.sets {
            if let Some(bits) = set.identity(id) {
                set.identity_bits.insert(n, bits);
            }
        }
    }
    Some((compiled, ids, policy_ids))
}

/// The kernel model and the evaluator agree on `conn` to `wl`.
fn agree(
    compiled: &Compiled,
    ids: &Identities,
    policy_ids: &PolicyIds,
    wl: &WorkloadPolicies,
    conn: &Conn,
) {
    let refs: Vec<&Authorization> = wl.policies.iter().map(Arc::as_ref).collect();
    let expected = policy::evaluate(&refs, conn);
    let numbered = conn.src_identity.as_ref().and_then(|s| ids.id(s));
    let got = match (&conn.src_identity, numbered) {
        // An identity never numbered: the entries computed on the fly.
        (Some(_), None) => compiled.lookup_spiffe(
            wl.id,
            conn.src_identity.as_ref(),
            ids,
            conn.src,
            conn.dst,
            conn.dst_port,
        ),
        (_, n) => compiled.lookup(wl.id, n.unwrap_or(0), conn.src, conn.dst, conn.dst_port),
    }
    .unwrap();
    let context = || format!("{conn:?} {expected:?} {got:?} {:#?}", wl.policies);
    assert_eq!(got.allowed(), expected.is_allow(), "{}", context());
    assert_eq!(
        got.reason,
        reason_code(expected.verdict.reason()),
        "{}",
        context()
    );
    let set = &compiled.sets[compiled.workload_sets[&wl.id] as usize];
    let key_of = |term: u32| {
        set.terms
            .get(term as usize)
            .and_then(|info| policy_ids.key(info.policy))
    };
    let decided_by = got.deciding_term().and_then(key_of);
    assert_eq!(
        decided_by,
        expected.verdict.reason().policy(),
        "{}",
        context()
    );
    // Dry-run notes: the first matching dry-run DENY, and "no dry-run
    // ALLOW matched" (which the evaluator only reaches without an
    // enforced DENY match).
    let first_dry_deny = expected.dry_run.iter().find_map(|n| match n {
        DryRunNote::DenyMatched(key) => Some(key),
        DryRunNote::AllowMatched(_) | DryRunNote::NoAllowMatched => None,
    });
    let dry_deny = (got.dry_run_deny != zgate_common::policy::NO_TERM)
        .then_some(got.dry_run_deny)
        .and_then(key_of);
    assert_eq!(dry_deny, first_dry_deny, "{}", context());
    if !matches!(expected.verdict.reason(), Reason::ExplicitDeny(_)) {
        let no_allow = expected.dry_run.contains(&DryRunNote::NoAllowMatched);
        assert_eq!(got.dry_run_no_allow, no_allow, "{}", context());
    }
}

fn reason_code(r: &Reason) -> u8 {
    match r {
        Reason::DefaultAllow => REASON_DEFAULT_ALLOW,
        Reason::AllowMatched(_) => REASON_ALLOW_MATCHED,
        Reason::ExplicitDeny(_) => REASON_EXPLICIT_DENY,
        Reason::NoAllowMatched => REASON_NO_ALLOW_MATCHED,
    }
}
