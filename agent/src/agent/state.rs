//! The agent's state, owned by one task: the datapath's maps, the mesh
//! config, the enrolled workloads, and the compiled live generation.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use aya::maps::IterableMap as _;
use zgate_common::{
    conn::{ConnKey, ORIGIN_AGENT},
    event::{VerdictEvent, KIND_DENY, KIND_DRY_RUN_DENY_MATCH, KIND_LISTEN_UNATTRIBUTED},
    listener::{tag_of, Listener, ListenerKey, UNATTRIBUTED},
    policy::{
        IDENTITY_NONE, REASON_ALLOW_MATCHED, REASON_DEFAULT_ALLOW, REASON_EXPLICIT_DENY,
        REASON_MAP_FULL, REASON_NO_ALLOW_MATCHED,
    },
    socket::{self, SocketRecord, FLAG_BOUND, FLAG_BY_AGENT, KIND_BOUND},
    workload::Workload as KernelWorkload,
    Addr, AF_INET, AF_INET6, IPPROTO_TCP,
};

use super::{
    load_mesh,
    log_limit::LogLimit,
    mesh::{self, Certs, MeshView},
    metrics::{Family, Histogram},
    status, AgentOptions, Command, Error,
};
use crate::{
    bpf::{self, Datapath, Paths, PolicyWriter},
    check,
    compile::{self, Compiled, Identities, PolicyIds, WorkloadPolicies},
    config::{MeshConfig, WorkloadEntry},
    identity::SpiffeId,
    policy::Reason,
    sock_diag,
    workload::{Leftovers, Registry, Spec, Workload},
};

pub(super) struct State {
    started: Instant,
    /// Deny log lines the event reader's rate limit held back.
    deny_logs_suppressed: Arc<AtomicU64>,
    compile_seconds: Histogram,
    apply_seconds: Histogram,
    opts: AgentOptions,
    datapath: Datapath,
    writer: PolicyWriter,
    mesh: Arc<MeshConfig>,
    registry: Registry,
    identities: Identities,
    policy_ids: PolicyIds,
    compiled: Compiled,
    certs: Certs,
    view: Arc<ArcSwap<MeshView>>,
}

/// What survives an agent restart besides the pinned maps: the enrolled
/// workloads, and the identities in id order (ids are in the maps).
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    identities: Vec<SpiffeId>,
    workloads: Vec<Workload>,
}

impl State {
    pub fn new(
        opts: AgentOptions,
        mut datapath: Datapath,
        mesh: Arc<MeshConfig>,
        certs: Certs,
    ) -> Result<Self, Error> {
        let writer = PolicyWriter::new(
            &datapath.maps.config,
            opts.map_sizes().conn_limit(),
            Some(opts.mesh_tls.outbound_addr),
        );
        writer.discard_unfinished(&mut datapath.maps.policy)?;
        let mut registry = Registry::new(&opts.node.cgroup_root);
        let mut identities = Identities::default();
        let path = opts.node.state_file();
        if let Ok(text) = fs::read_to_string(&path) {
            let saved: Saved = serde_json::from_str(&text).map_err(|source| Error::State {
                path: path.clone(),
                source,
            })?;
            for id in &saved.identities {
                identities.intern(id);
            }
            registry.adopt(saved.workloads);
        }
        // Connections a previous agent relayed died with it (it owned their
        // sockets): forget their peers, so no later connection that happens
        // to reuse a 5-tuple inherits an authenticated identity.
        let relayed = bpf::keys_where(&datapath.maps.conn_peer, |peer| peer.origin == ORIGIN_AGENT);
        for key in relayed {
            let _ = datapath.maps.conn_peer.remove(&key);
        }
        // Re-register adopted workloads; drop entries for cgroups that are gone.
        let stale: Vec<u64> = datapath
            .maps
            .workloads
            .keys()
            .filter_map(Result::ok)
            .collect();
        for cgroup in stale {
            let _ = datapath.maps.workloads.remove(&cgroup);
        }
        for wl in registry.workloads() {
            let identity = identities.intern(&wl.identity);
            datapath
                .maps
                .workloads
                .insert(
                    wl.cgroup_id,
                    KernelWorkload {
                        id: wl.id,
                        identity,
                    },
                    0,
                )
                .map_err(|source| bpf::Error::Map {
                    name: "ZG_WORKLOADS",
                    source,
                })?;
            tracing::info!(workload = wl.id, identity = %wl.identity, "adopted workload");
        }
        restore_listeners(&mut datapath.maps, &registry);
        let mut state = Self {
            started: Instant::now(),
            deny_logs_suppressed: Arc::default(),
            compile_seconds: Histogram::default(),
            apply_seconds: Histogram::default(),
            opts,
            datapath,
            writer,
            mesh,
            registry,
            identities,
            policy_ids: PolicyIds::default(),
            compiled: Compiled::default(),
            view: Arc::new(ArcSwap::from_pointee(MeshView {
                roots: certs.roots(),
                certs: Default::default(),
                local: Default::default(),
                remote: Default::default(),
            })),
            certs,
        };
        // Reports made while no agent read them.
        let unnamed = bpf::keys_where(&state.datapath.maps.listeners, |e| {
            e.workload == UNATTRIBUTED
        });
        state.name_listener_owners(&unnamed);
        Ok(state)
    }

    pub fn paths(&self) -> &Paths {
        &self.datapath.paths
    }

    /// What the proxies read: always the latest published view.
    pub fn view(&self) -> Arc<ArcSwap<MeshView>> {
        Arc::clone(&self.view)
    }

    /// Bring the mesh data path in line with the enrolled workloads and the
    /// inventory (certificates, `ZG_REMOTE`), and publish the proxies' new
    /// view.
    fn sync_mesh(&mut self) {
        let view = mesh::sync(
            &mut self.certs,
            &self.registry,
            &self.mesh,
            &mut self.identities,
            &mut self.datapath.maps.remote,
        );
        self.view.store(Arc::new(view));
    }

    /// Compile the mesh config for every enrolled workload and make it the
    /// live generation. On error the previous generation stays enforced.
    pub fn apply(&mut self) -> Result<u32, Error> {
        let started = Instant::now();
        let td = self.opts.trust_domain.clone();
        for entry in self.mesh.workloads() {
            self.identities.intern(&SpiffeId::new(
                &td,
                &entry.namespace,
                &entry.service_account,
            ));
        }
        let workloads: Vec<WorkloadPolicies> = self
            .registry
            .workloads()
            .map(|wl| WorkloadPolicies {
                id: wl.id,
                name: format!("{}/{}", wl.spec.namespace, wl.spec.name),
                policies: self.mesh.policies_for(&wl.spec.namespace, &wl.spec.labels),
            })
            .collect();
        let compiled = compile::compile(&workloads, &self.identities, &mut self.policy_ids)?;
        self.compile_seconds.observe(started.elapsed());
        let maps = &mut self.datapath.maps;
        let generation = self
            .writer
            .apply(&mut maps.policy, &mut maps.config, &compiled)?;
        self.compiled = compiled;
        self.apply_seconds.observe(started.elapsed());
        tracing::info!(
            generation,
            workloads = workloads.len(),
            sets = self.compiled.sets.len(),
            apply_us = started.elapsed().as_micros() as u64,
            "policy applied"
        );
        self.revoke();
        self.sync_mesh();
        self.save()?;
        Ok(generation)
    }

    /// Re-decide every established connection to an enrolled workload
    /// against the live generation, and close the ones it no longer
    /// allows (ztunnel's `PolicyWatcher`). Allowed ones are left alone.
    fn revoke(&self) {
        let sockets = match sock_diag::established() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    "cannot list connections to re-check them after a policy update: {e}"
                );
                return;
            }
        };
        let maps = &self.datapath.maps;
        for sock in sockets {
            let local = Addr::from(sock.local.ip());
            let port = sock.local.port();
            let Some(workload) = listener(maps, &local, port) else {
                continue;
            };
            let key = ConnKey::tcp(sock.remote, sock.local);
            // The peer the agent delivered, or the local workload `sock_ops`
            // published: its entry lives as long as the client's socket,
            // which an established connection still has (a closed client
            // leaves the connection in CLOSE_WAIT, not listed here).
            let peer = bpf::peer_of(&maps.conn_slots, &maps.conn_peer, &key);
            let identity = peer.map_or(IDENTITY_NONE, |p| p.identity);
            let src = match peer {
                Some(p) if p.original_src.family != 0 => p.original_src.into(),
                _ => sock.remote.ip(),
            };
            let allowed = self
                .compiled
                .lookup(workload, identity, src, sock.local.ip(), port)
                .is_some_and(|d| d.allowed());
            if allowed {
                continue;
            }
            match sock_diag::destroy(&sock) {
                Ok(()) => tracing::info!(
                    src.addr = %sock.remote, dst.addr = %sock.local,
                    "connection closed because it's no longer allowed after a policy update"
                ),
                Err(e) => tracing::error!(
                    src.addr = %sock.remote, dst.addr = %sock.local,
                    "could not close a connection the policy no longer allows: {e}"
                ),
            }
        }
    }

    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Enroll(spec, reply) => {
                let result = self.enroll(spec).map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Command::Deregister(id) => {
                if let Err(e) = self.deregister(id) {
                    tracing::error!(workload = id, "deregistering: {e}");
                }
            }
            Command::Reload => self.reload(),
            Command::Event(ev, _) if ev.kind == KIND_LISTEN_UNATTRIBUTED => {
                self.name_listener_owners(&[ListenerKey {
                    addr: ev.dst,
                    port: ev.dst_port,
                    proto: IPPROTO_TCP,
                    _pad: 0,
                }]);
            }
            Command::Event(ev, held_back) => self.log_event(&ev, held_back),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::Check(args, reply) => {
                let _ = reply.send(self.check(&args));
            }
            Command::InternPeer(id, reply) => {
                let _ = reply.send(self.intern_peer(&id));
            }
            Command::RotateDue => self.certs.rotate_due(SystemTime::now()),
        }
    }

    /// The numeric identity of a peer authenticated over mTLS. A new one
    /// gets its policy bits in the live generation at once (the compiler
    /// includes it in every later generation).
    fn intern_peer(&mut self, id: &SpiffeId) -> Result<u32, String> {
        if let Some(n) = self.identities.id(id) {
            return Ok(n);
        }
        let n = self.identities.intern(id);
        let maps = &mut self.datapath.maps;
        self.writer
            .add_identity(&mut maps.policy, &self.compiled, n, id)
            .map_err(|e| format!("cannot write the policy bits of {id}: {e}"))?;
        tracing::info!(identity = %id, id = n, "new peer identity");
        Ok(n)
    }

    fn enroll(&mut self, spec: Spec) -> Result<Workload, Error> {
        let wl = self.registry.enroll(spec, &self.opts.trust_domain)?;
        let identity = self.identities.intern(&wl.identity);
        let entry = KernelWorkload {
            id: wl.id,
            identity,
        };
        let inserted = self
            .datapath
            .maps
            .workloads
            .insert(wl.cgroup_id, entry, 0)
            .map_err(|source| {
                Error::Bpf(bpf::Error::Map {
                    name: "ZG_WORKLOADS",
                    source,
                })
            });
        if let Err(e) = inserted.and_then(|()| self.apply().map(|_| ())) {
            let _ = self.datapath.maps.workloads.remove(&wl.cgroup_id);
            let _ = self.registry.remove(wl.id, Leftovers::Kill);
            return Err(e);
        }
        tracing::info!(
            workload = wl.id,
            identity = %wl.identity,
            cgroup = %wl.cgroup.display(),
            "enrolled"
        );
        Ok(wl)
    }

    fn deregister(&mut self, id: u32) -> Result<(), Error> {
        let wl = self.registry.remove(id, Leftovers::Kill)?;
        let maps = &mut self.datapath.maps;
        let _ = maps.workloads.remove(&wl.cgroup_id);
        // Its listener entries are left to the kernel: its processes are
        // gone, and with them their sockets' counts. An entry that stays is
        // held by a socket handed to a process outside the workload, and
        // names a workload with no policy from now on, so connections to it
        // are refused; removing it would open that port to anyone (and race
        // the kernel's own delete).
        self.apply()?;
        tracing::info!(workload = id, identity = %wl.identity, "deregistered");
        Ok(())
    }

    /// Re-pin links whose pins were removed by hand, loudly.
    pub fn check_pins(&mut self) {
        match self.datapath.repin_links() {
            Ok(repinned) => {
                for name in repinned {
                    tracing::error!(
                        program = name,
                        "its bpffs pin was removed: pinned it again, so enforcement still outlives the agent"
                    );
                }
            }
            Err(e) => tracing::error!(
                "a bpffs pin was removed and could not be restored; enforcement stops if the agent stops: {e}"
            ),
        }
    }

    /// Everything `zgate status` shows.
    pub fn status(&self) -> status::Status {
        let name = |w: &Workload| format!("{}/{}", w.spec.namespace, w.spec.name);
        let mut applies: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let workloads = self
            .registry
            .workloads()
            .map(|w| {
                let policies: Vec<String> = self
                    .mesh
                    .policies_for(&w.spec.namespace, &w.spec.labels)
                    .iter()
                    .map(|p| p.key.to_string())
                    .collect();
                for p in &policies {
                    applies.entry(p.clone()).or_default().push(name(w));
                }
                status::WorkloadStatus {
                    id: w.id,
                    workload: name(w),
                    identity: w.identity.to_string(),
                    labels: w
                        .spec
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect(),
                    cgroup: w.cgroup.display().to_string(),
                    policies,
                }
            })
            .collect();
        let policies = self
            .mesh
            .policy_status()
            .into_iter()
            .map(|p| status::PolicyStatus {
                workloads: applies.remove(&p.key.to_string()).unwrap_or_default(),
                policy: p.key.to_string(),
                action: p.action.to_string(),
                status: p.reason.to_string(),
                message: p.message,
            })
            .collect();
        status::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            generation: self.writer.generation(),
            config: self.opts.config.as_ref().map_or_else(
                || "embedded ambient-demo".into(),
                |d| d.display().to_string(),
            ),
            workloads,
            programs: self
                .datapath
                .attached
                .iter()
                .map(|(name, fresh)| status::ProgramStatus {
                    name: (*name).into(),
                    state: if *fresh { "attached" } else { "adopted" }.into(),
                    link: self.paths().link(name).display().to_string(),
                })
                .collect(),
            policies,
            maps: self.map_usage(),
            verdicts: self.verdicts(),
            certificates: self.certificates(),
        }
    }

    /// Each kernel map's entries and capacity.
    fn map_usage(&self) -> Vec<status::MapUsage> {
        let maps = &self.datapath.maps;
        let sizes = self.opts.map_sizes();
        let entries = bpf::entries;
        let both = |a: io::Result<u64>, b: io::Result<u64>| Ok(a? + b?);
        let policy = &maps.policy;
        let policy_entries = [
            policy.workload_policy.map(),
            policy.sets.map(),
            policy.identity_bits.map(),
            policy.port_bits.map(),
            policy.terms.map(),
        ]
        .into_iter()
        // An LPM trie has no batch look-up: its keys, one by one.
        .try_fold(policy.ip_bits.keys().count() as u64, |n, m| {
            Ok(n + entries(m)?)
        });
        [
            (
                "workloads",
                entries(maps.workloads.map()),
                zgate_common::workload::MAX_ENTRIES,
            ),
            ("listeners", entries(maps.listeners.map()), sizes.listeners),
            (
                "connections",
                entries(maps.conn_peer.map()),
                sizes.connections,
            ),
            (
                "connection slots",
                bpf::held_slots(&maps.conn_slots),
                zgate_common::conn::CONN_SLOTS,
            ),
            (
                "sockets",
                both(
                    entries(maps.sockets.map()),
                    bpf::held_slots(&maps.socket_slots),
                ),
                sizes.sockets(),
            ),
            (
                "accepted connections",
                both(
                    entries(maps.accepted.map()),
                    bpf::held_slots(&maps.accepted_slots),
                ),
                sizes.connections,
            ),
            (
                "policy (6 maps)",
                policy_entries,
                sizes.policy_entries.saturating_mul(6),
            ),
            (
                "verdict cache",
                entries(maps.verdict_cache.map()),
                zgate_common::policy::VERDICT_CACHE_ENTRIES,
            ),
            (
                "remote workloads",
                entries(maps.remote.map()),
                zgate_common::redirect::REMOTE_MAX_ENTRIES,
            ),
        ]
        .into_iter()
        .map(|(map, entries, capacity)| status::MapUsage {
            map: map.to_owned(),
            // A map that cannot be read counts as empty, with a warning.
            entries: entries.unwrap_or_else(|e| {
                tracing::warn!(map, "counting the entries of a kernel map: {e}");
                0
            }),
            capacity: u64::from(capacity),
        })
        .collect()
    }

    /// The kernel's verdict counters, by deciding policy, reason and hook.
    fn verdicts(&self) -> Vec<status::VerdictCount> {
        self.datapath
            .maps
            .verdict_counts()
            .into_iter()
            .map(|(k, n)| {
                let (verdict, reason) = status::reason_name(k.reason);
                status::VerdictCount {
                    policy: self
                        .policy_ids
                        .key(k.policy)
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "-".into()),
                    verdict: verdict.into(),
                    reason: reason.into(),
                    hook: status::hook_name(k.hook).into(),
                    count: n,
                }
            })
            .collect()
    }

    /// When the current certificate of each identity expires.
    fn certificates(&self) -> Vec<status::CertificateStatus> {
        self.certs
            .expiries()
            .into_iter()
            .map(|(id, at)| {
                let now = SystemTime::now();
                let unix = |t: SystemTime| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                };
                status::CertificateStatus {
                    identity: id.to_string(),
                    expires_at: unix(at),
                    expires_in_secs: at.duration_since(now).map_or(0, |d| d.as_secs()),
                }
            })
            .collect()
    }

    /// `zgate check --agent`: the reference evaluator over the live config,
    /// with enrolled workloads as the inventory, then what the kernel's
    /// maps decide for the same connection.
    fn check(&self, args: &[String]) -> Result<String, String> {
        #[derive(clap::Parser)]
        #[command(name = "zgate check --agent", no_binary_name = true)]
        struct Args {
            #[command(flatten)]
            check: check::CheckArgs,
        }
        let args = <Args as clap::Parser>::try_parse_from(args)
            .map_err(|e| crate::cli::usage_error_line(&e))?
            .check;
        let enrolled = self.registry.workloads().map(|w| WorkloadEntry {
            namespace: w.spec.namespace.clone(),
            name: w.spec.name.clone(),
            address: None,
            labels: w.spec.labels.clone(),
            service_account: w.spec.service_account.clone(),
        });
        let mesh = self.mesh.with_workloads(enrolled);
        let report = check::check_in(&mesh, &args).map_err(|e| e.to_string())?;
        let kernel = args.dest.as_ref().and_then(|d| {
            let wl = self
                .registry
                .workloads()
                .find(|w| w.spec.namespace == d.namespace && w.spec.name == d.name)?;
            let c = &report.query.conn;
            let id = c.src_identity.as_ref();
            self.compiled
                .lookup_spiffe(wl.id, id, &self.identities, c.src, c.dst, c.dst_port)
        });
        let mut out = report.render(args.json).map_err(|e| e.to_string())?;
        if let Some(d) = kernel {
            let (verdict, reason) = status::reason_name(d.reason);
            let line = format!(
                "kernel (generation {}): {verdict} ({reason})",
                self.writer.generation()
            );
            if args.json {
                out = format!(
                    "{}\n",
                    serde_json::json!({"check": serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default(), "kernel": line})
                );
            } else {
                out.push_str(&line);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// The Prometheus exposition of the kernel's counters and the agent's
    /// own gauges and histograms.
    fn metrics(&self) -> String {
        let mut out = String::new();
        let maps = &self.datapath.maps;
        // Not `status()`: a scrape builds only what it reports (a status of
        // every policy in a large mesh is tens of milliseconds of this one
        // command loop).
        let map_usage = self.map_usage();
        let mut f = Family::new(
            &mut out,
            "zgate_verdicts_total",
            "counter",
            "Connection verdicts taken in the kernel, by deciding policy, reason and hook.",
        );
        for v in &self.verdicts() {
            f.sample(
                &[
                    ("policy", &v.policy),
                    ("action", &v.verdict),
                    ("reason", &v.reason),
                    ("hook", &v.hook),
                ],
                v.count,
            );
        }
        let conns = maps.connection_counts();
        let labels = |identity: u32, workload: u32| {
            let principal = self
                .identities
                .get(identity)
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            let (ns, name) = self.registry.get(workload).map_or_else(
                || ("unknown".to_owned(), format!("#{workload}")),
                |w| (w.spec.namespace.clone(), w.spec.name.clone()),
            );
            (principal, ns, name)
        };
        let mut f = Family::new(
            &mut out,
            "istio_tcp_connections_opened_total",
            "counter",
            "TCP connections opened to enrolled workloads (reporter=destination).",
        );
        for (k, s) in &conns {
            let (principal, ns, name) = labels(k.identity, k.workload);
            f.sample(
                &[
                    ("reporter", "destination"),
                    ("source_principal", &principal),
                    ("destination_workload", &name),
                    ("destination_workload_namespace", &ns),
                    ("response_flags", "-"),
                ],
                s.opened,
            );
        }
        let istio = [
            (
                "istio_tcp_connections_closed_total",
                "TCP connections to enrolled workloads that closed (reporter=destination).",
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes enrolled workloads sent on closed connections (reporter=destination).",
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes enrolled workloads received on closed connections (reporter=destination).",
            ),
        ];
        for (name, help) in istio {
            let mut f = Family::new(&mut out, name, "counter", help);
            for (k, s) in &conns {
                let (principal, ns, wl) = labels(k.identity, k.workload);
                let value = match name {
                    "istio_tcp_connections_closed_total" => s.closed,
                    "istio_tcp_sent_bytes_total" => s.sent_bytes,
                    _ => s.received_bytes,
                };
                f.sample(
                    &[
                        ("reporter", "destination"),
                        ("source_principal", &principal),
                        ("destination_workload", &wl),
                        ("destination_workload_namespace", &ns),
                        ("response_flags", "-"),
                    ],
                    value,
                );
            }
        }
        let mut f = Family::new(
            &mut out,
            "zgate_connections_denied_total",
            "counter",
            "Connections to enrolled workloads refused by policy, by source and destination.",
        );
        for (k, s) in &conns {
            let (principal, ns, name) = labels(k.identity, k.workload);
            f.sample(
                &[
                    ("source_principal", &principal),
                    ("destination_workload", &name),
                    ("destination_workload_namespace", &ns),
                ],
                s.denied,
            );
        }
        let mut f = Family::new(
            &mut out,
            "zgate_map_entries",
            "gauge",
            "Entries in the kernel maps.",
        );
        for m in &map_usage {
            f.sample(&[("map", &m.map)], m.entries);
        }
        let mut f = Family::new(
            &mut out,
            "zgate_map_capacity",
            "gauge",
            "Capacity of the kernel maps.",
        );
        for m in &map_usage {
            f.sample(&[("map", &m.map)], m.capacity);
        }
        Family::new(
            &mut out,
            "zgate_policy_generation",
            "gauge",
            "The live policy generation.",
        )
        .sample(&[], self.writer.generation());
        Family::new(&mut out, "zgate_workloads", "gauge", "Enrolled workloads.")
            .sample(&[], self.registry.workloads().count());
        let mut f = Family::new(
            &mut out,
            "zgate_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the current certificate of each identity on this node expires (Unix time).",
        );
        for c in &self.certificates() {
            f.sample(&[("identity", &c.identity)], c.expires_at);
        }
        Family::new(
            &mut out,
            "zgate_events_dropped_total",
            "counter",
            "Verdict events lost because the ring buffer was full (the verdicts themselves are counted).",
        )
        .sample(&[], maps.events_dropped());
        Family::new(
            &mut out,
            "zgate_deny_logs_suppressed_total",
            "counter",
            "Deny log lines held back by the per-source rate limit (counters are never limited).",
        )
        .sample(&[], self.deny_logs_suppressed.load(Ordering::Relaxed));
        self.compile_seconds.render(
            &mut out,
            "zgate_policy_compile_seconds",
            "Time to compile the policy for every workload.",
        );
        self.apply_seconds.render(
            &mut out,
            "zgate_policy_apply_seconds",
            "Time from a policy change to the new generation live in the kernel.",
        );
        out
    }

    /// Re-read the config directory; a bad file is reported and the last
    /// good policy stays enforced.
    fn reload(&mut self) {
        if self.opts.config.is_none() {
            return;
        }
        let mesh = match load_mesh(&self.opts) {
            Ok(mesh) => mesh,
            Err(e) => {
                tracing::error!("config not applied, the previous policy stays enforced: {e}");
                return;
            }
        };
        let previous = std::mem::replace(&mut self.mesh, mesh);
        if let Err(e) = self.apply() {
            tracing::error!("config not applied, the previous policy stays enforced: {e}");
            self.mesh = previous;
        }
    }

    /// Name the owners of listener entries `sock_ops` made for ports
    /// `listen()` picked: the enrolled workload whose cgroup each listening
    /// socket is in, as the kernel's socket table (read once) says. Until
    /// named (or if it cannot be), connections to the port are refused.
    fn name_listener_owners(&mut self, keys: &[ListenerKey]) {
        if keys.is_empty() {
            return;
        }
        let sockets = match sock_diag::listening() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot list listening sockets to name listeners' workloads: {e}");
                return;
            }
        };
        for key in keys {
            self.name_listener_owner(key, &sockets);
        }
    }

    /// [`Self::name_listener_owners`] for one entry.
    fn name_listener_owner(&mut self, key: &ListenerKey, sockets: &[sock_diag::Socket]) {
        let addr = std::net::SocketAddr::new(key.addr.into(), key.port);
        let maps = &mut self.datapath.maps;
        // Gone already, or named before.
        let Some(tag) = maps
            .listeners
            .get(key, 0)
            .ok()
            .filter(|e| e.workload == UNATTRIBUTED)
            .map(|e| Listener::tag(e.held))
            .filter(|tag| maps.listener_owners.get(tag, 0).is_err())
        else {
            return;
        };
        let owner = sockets
            .iter()
            .filter(|s| s.local == addr)
            .filter_map(|s| s.cgroup)
            .find_map(|c| self.registry.workloads().find(|w| w.cgroup_id == c))
            .map(|w| w.id);
        let Some(workload) = owner else {
            tracing::warn!(%addr, "a listener on a port listen() picked belongs to no enrolled workload here: connections to it stay refused");
            return;
        };
        if let Err(e) = maps.listener_owners.insert(tag, workload, 0) {
            tracing::error!(workload, %addr, "cannot name a listener's workload, connections to it stay refused: {e}");
            return;
        }
        // Closed meanwhile: its release found no name to remove.
        if maps
            .listeners
            .get(key, 0)
            .map_or(true, |e| Listener::tag(e.held) != tag)
        {
            let _ = maps.listener_owners.remove(&tag);
            return;
        }
        tracing::info!(workload, %addr, "named the workload listening on a port listen() picked");
    }

    /// The rate limit for the event reader, counting what it holds back
    /// into this state's metrics.
    pub fn log_limit(&self) -> LogLimit {
        LogLimit::new(Arc::clone(&self.deny_logs_suppressed))
    }

    fn log_event(&self, ev: &VerdictEvent, held_back: u64) {
        let policy = self.policy_ids.key(ev.policy);
        let reason = match (ev.reason, policy) {
            (REASON_EXPLICIT_DENY, Some(key)) => Reason::ExplicitDeny(key.clone()).to_string(),
            (REASON_NO_ALLOW_MATCHED, _) => Reason::NoAllowMatched.to_string(),
            (REASON_ALLOW_MATCHED | REASON_DEFAULT_ALLOW, _) => "allowed".to_owned(),
            (REASON_MAP_FULL, _) => {
                "a kernel map is full, so the kernel refused it (fail closed): raise --max-connections / --max-listeners".to_owned()
            }
            _ => "no policy compiled for this workload yet (fail closed)".to_owned(),
        };
        let src_identity = self
            .identities
            .get(ev.identity)
            .map_or_else(|| "none (plaintext)".to_owned(), ToString::to_string);
        let dst_workload = self.registry.get(ev.workload).map_or_else(
            || match ev.workload {
                UNATTRIBUTED => "(a port listen() picked, its workload not named yet)".to_owned(),
                id => format!("#{id}"),
            },
            |w| format!("{}/{}", w.spec.namespace, w.spec.name),
        );
        let src = std::net::SocketAddr::new(ev.src.into(), ev.src_port);
        let dst = std::net::SocketAddr::new(ev.dst.into(), ev.dst_port);
        let hook = status::hook_name(ev.hook);
        let policy = policy.map(ToString::to_string).unwrap_or_default();
        match ev.kind {
            KIND_DENY if ev.reason == REASON_MAP_FULL => tracing::error!(
                src.identity = %src_identity, dst.addr = %dst, dst.workload = %dst_workload, hook,
                error = %format!("connection closed due to policy rejection: {reason}"),
                "deny"
            ),
            KIND_DENY => tracing::warn!(
                src.addr = %src, src.identity = %src_identity, dst.addr = %dst,
                dst.workload = %dst_workload, policy = %policy, hook, held_back,
                error = %format!("connection closed due to policy rejection: {reason}"),
                "deny"
            ),
            KIND_DRY_RUN_DENY_MATCH => tracing::info!(
                src.addr = %src, src.identity = %src_identity, dst.workload = %dst_workload,
                policy = %policy, hook, "dry-run: deny policy match"
            ),
            _ => tracing::info!(
                src.addr = %src, src.identity = %src_identity, dst.workload = %dst_workload,
                hook, "dry-run: no allow policies match"
            ),
        }
    }

    /// Record enrolled workloads and identities for the next agent (0600).
    pub fn save(&self) -> Result<(), Error> {
        let saved = Saved {
            identities: (1..=self.identities.len() as u32)
                .filter_map(|n| self.identities.get(n).cloned())
                .collect(),
            workloads: self.registry.workloads().cloned().collect(),
        };
        let path = self.opts.node.state_file();
        let io = |op, path: &PathBuf| {
            let path = path.clone();
            move |source| Error::Io { op, path, source }
        };
        fs::create_dir_all(&self.opts.node.state_dir)
            .map_err(io("creating", &self.opts.node.state_dir))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&saved).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        io::Write::write_all(&mut file, &text).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("replacing", &path))?;
        Ok(())
    }

    /// Ctrl-C: detach every program, remove every pin, and remove zgate's
    /// cgroups; the workloads' processes keep running, no longer enforced.
    pub fn shutdown(self) -> Result<(), Error> {
        let node = self.opts.node.clone();
        drop(self.datapath);
        super::uninstall(&node)
    }
}

/// The enrolled workload listening on `addr:port`, looked up as the
/// kernel's `listener()` does: exact address, the family's wildcard, then
/// a dual-stack `[::]` for IPv4; an entry `sock_ops` made names its owner
/// in `ZG_LISTENER_OWNERS` (`UNATTRIBUTED` until the agent names it).
fn listener(maps: &bpf::Maps, addr: &Addr, port: u16) -> Option<u32> {
    let mut candidates = vec![*addr, Addr::any(addr.family)];
    if addr.family == AF_INET {
        candidates.push(Addr::any(AF_INET6));
    }
    candidates.into_iter().find_map(|a| {
        let key = ListenerKey {
            addr: a,
            port,
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        let entry = maps.listeners.get(&key, 0).ok()?;
        Some(match entry.workload {
            UNATTRIBUTED => maps
                .listener_owners
                .get(&Listener::tag(entry.held), 0)
                .unwrap_or(UNATTRIBUTED),
            workload => workload,
        })
    })
}

/// Re-learn the listening sockets of adopted workloads from the kernel's
/// socket table (their cgroup says whose they are): after the listener map
/// was lost (its pin removed), binds made before it would otherwise go
/// unenforced until the workload binds again. Each address's entry counts
/// its listening sockets, under the tag their records name (they were
/// counted in one entry, the lost one) or a new one, and a socket with no
/// record gets one naming it.
fn restore_listeners(maps: &mut bpf::Maps, registry: &Registry) {
    let by_cgroup: BTreeMap<u64, u32> = registry.workloads().map(|w| (w.cgroup_id, w.id)).collect();
    if by_cgroup.is_empty() {
        return;
    }
    let sockets = match sock_diag::listening() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot list listening sockets to re-learn workloads' ports: {e}");
            return;
        }
    };
    // Each lost address's sockets, with their workload and kernel record.
    let mut lost: std::collections::HashMap<ListenerKey, Vec<_>> = Default::default();
    for sock in sockets {
        let Some(&workload) = sock.cgroup.and_then(|c| by_cgroup.get(&c)) else {
            continue;
        };
        let key = ListenerKey {
            addr: Addr::from(sock.local.ip()),
            port: sock.local.port(),
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        if maps.listeners.get(&key, 0).is_ok() {
            continue;
        }
        let cookie = sock.cookie();
        // A record the kernel still holds for the socket, in its slot or
        // in the hash (its slot counts it there).
        let recorded = maps
            .socket_slots
            .get(&socket::cookie_slot(cookie), 0)
            .ok()
            .filter(|s| s.cookie == cookie)
            .map(|s| s.record)
            .or_else(|| maps.sockets.get(&cookie, 0).ok());
        lost.entry(key)
            .or_default()
            .push((sock, workload, recorded));
    }
    for (key, holders) in lost {
        let Some((first, workload, _)) = holders.first() else {
            continue;
        };
        let tag = holders
            .iter()
            .find_map(|(_, _, r)| r.filter(|r| r.flags & FLAG_BOUND != 0).map(|r| r.bound_tag))
            .unwrap_or_else(|| tag_of(first.cookie()));
        let entry = Listener::new(*workload, tag, holders.len() as u32);
        let addr = first.local;
        if let Err(e) = maps.listeners.insert(key, entry, 0) {
            tracing::error!(workload, %addr, "cannot re-learn a listening address: {e}");
            continue;
        }
        for (sock, workload, recorded) in &holders {
            // Replacing a record in the hash with the agent's would leave
            // it counted in its slot.
            if recorded.is_some() {
                continue;
            }
            let record = SocketRecord {
                kind: KIND_BOUND,
                flags: FLAG_BOUND | FLAG_BY_AGENT,
                workload: *workload,
                bound: key,
                bound_tag: tag,
                ..SocketRecord::default()
            };
            // The flag first: the kernel looks for a socket's record in
            // `ZG_SOCKETS` only where it knows one may be.
            let written = maps
                .sockets_by_agent
                .set(0, 1, 0)
                .and_then(|()| maps.sockets.insert(sock.cookie(), record, 0));
            if let Err(e) = written {
                tracing::error!(workload, addr = %sock.local, "cannot record a re-learned listening socket: {e}");
            }
        }
        tracing::info!(workload, %addr, sockets = holders.len(), "re-learned a listening address");
    }
}
