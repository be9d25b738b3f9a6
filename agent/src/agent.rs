//! The node daemon: installs the datapath, compiles the mesh config and the
//! enrolled workloads into the maps, serves the admin socket, logs verdict
//! events, and reloads the config directory when it changes.
//!
//! One task owns all state (`State`); the admin socket, the event reader and
//! the config watcher talk to it over a channel, so map updates are
//! serialized and each one is a complete policy generation.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    bpf::{self, Datapath, Paths},
    config::{self, MeshConfig},
    workload,
};

mod admin;
mod events;
mod inbound;
mod log_limit;
mod mesh;
mod metrics;
mod options;
mod outbound;
mod state;
pub mod status;
mod watch;

pub use admin::{Request, Response};
pub use options::{cgroup2_mount, AgentOptions, Capacity, LogFormat, MeshTlsOptions, NodeOptions};
use state::State;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bpf(#[from] bpf::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Compile(#[from] crate::compile::Error),
    #[error(transparent)]
    Workload(#[from] workload::Error),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {}: {source}", path.display())]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Mesh(#[from] mesh::Error),
    #[error("binding the {what} listener on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the agent stopped")]
    Stopped,
}

/// What the agent's single state task is asked to do.
enum Command {
    Enroll(
        workload::Spec,
        oneshot::Sender<Result<workload::Workload, String>>,
    ),
    Deregister(u32),
    Reload,
    /// A verdict event the log rate limit admitted, with the lines held
    /// back for its key since the last one logged.
    Event(zgate_common::event::VerdictEvent, u64),
    Status(oneshot::Sender<status::Status>),
    Metrics(oneshot::Sender<String>),
    Check(Vec<String>, oneshot::Sender<Result<String, String>>),
    /// The numeric identity of a peer authenticated over mTLS.
    InternPeer(
        crate::identity::SpiffeId,
        oneshot::Sender<Result<u32, String>>,
    ),
    /// Renew the certificates past their refresh time.
    RotateDue,
}

/// A background task, aborted when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the agent ends: Ctrl-C (SIGINT) detaches everything it attached;
/// SIGTERM (a service manager stopping or upgrading it) and crashes leave
/// the pinned programs and maps enforcing the last policy (fail-static).
enum Exit {
    Detach,
    KeepEnforcing,
}

pub async fn run(opts: AgentOptions) -> Result<(), Error> {
    let node = &opts.node;
    bpf::preflight(&node.cgroup_root, &node.bpffs)?;
    std::fs::create_dir_all(&node.cgroup_root).map_err(|source| Error::Io {
        op: "creating cgroup",
        path: node.cgroup_root.clone(),
        source,
    })?;
    let mesh = load_mesh(&opts)?;
    let paths = Paths::new(&node.bpffs, &node.instance);
    let started = Instant::now();
    let mut datapath = Datapath::install(
        paths,
        &node.cgroup_root,
        Path::new("/proc/self/ns/net"),
        opts.map_sizes(),
    )?;
    for (name, fresh) in &datapath.attached {
        let how = if *fresh { "attached" } else { "adopted" };
        tracing::info!(program = name, "{how}");
    }
    let events = datapath
        .take_events()
        .ok_or(bpf::Error::BugMissing(zgate_common::event::MAP))?;
    let ca = opts
        .mesh_tls
        .root_source(node)
        .load(opts.mesh_tls.svid_ttl)
        .map_err(mesh::Error::from)?;
    let mut state = State::new(opts.clone(), datapath, mesh, mesh::Certs::new(ca)?)?;
    let generation = state.apply()?;
    let (tx, mut rx) = mpsc::channel(1024);
    let _proxies = spawn_proxies(&opts.mesh_tls, &state, tx.clone()).await?;
    tracing::info!(
        generation,
        elapsed_ms = started.elapsed().as_millis() as u64,
        cgroup = %node.cgroup_root.display(),
        bpffs = %state.paths().root().display(),
        admin = %node.admin_socket.display(),
        outbound = %opts.mesh_tls.outbound_addr,
        hbone = %opts.mesh_tls.hbone_addr,
        ca = ?opts.mesh_tls.root_source(node),
        "zgate agent ready"
    );

    let admin = admin::serve(&node.admin_socket, tx.clone())?;
    let _events = events::spawn(events, state.log_limit(), tx.clone())?;
    let _metrics = metrics::serve(opts.metrics_addr, opts.readiness_addr, tx.clone()).await?;
    let _watch = opts
        .config
        .as_deref()
        .map(|dir| watch::spawn(dir, tx.clone()))
        .transpose()?;
    use tokio::signal::unix::SignalKind;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Pins removed by hand are put back, so enforcement keeps outliving us.
    let mut pin_check = tokio::time::interval(std::time::Duration::from_secs(2));
    let exit = loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => state.handle(cmd),
                None => break Exit::KeepEnforcing,
            },
            _ = interrupt.recv() => break Exit::Detach,
            _ = terminate.recv() => break Exit::KeepEnforcing,
            _ = hangup.recv() => state.handle(Command::Reload),
            _ = pin_check.tick() => state.check_pins(),
        }
    };
    drop(admin);
    let _ = std::fs::remove_file(&node.admin_socket);
    match exit {
        Exit::Detach => {
            state.shutdown()?;
            tracing::info!("detached every program and removed every map and cgroup zgate created");
        }
        Exit::KeepEnforcing => {
            state.save()?;
            tracing::info!("stopped; the pinned programs keep enforcing the last policy");
        }
    }
    Ok(())
}

/// The outbound (captured connections) and inbound (HBONE) proxies, and
/// the certificate rotation clock.
async fn spawn_proxies(
    opts: &MeshTlsOptions,
    state: &State,
    tx: mpsc::Sender<Command>,
) -> Result<Vec<Task>, Error> {
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { what, addr, source })
    };
    let outbound_listener = bind("outbound", opts.outbound_addr).await?;
    let hbone_listener = bind("HBONE", opts.hbone_addr).await?;
    let table = Arc::new(bpf::ConnTable::open(state.paths())?);
    let outbound = Arc::new(outbound::Outbound {
        view: state.view(),
        table: Arc::clone(&table),
        pool: crate::hbone::Pool::new(),
    });
    let inbound = Arc::new(inbound::Inbound {
        view: state.view(),
        table,
        tx: tx.clone(),
        identities: Default::default(),
    });
    let rotate = async move {
        let mut tick = tokio::time::interval(ROTATE_CHECK);
        loop {
            tick.tick().await;
            if tx.send(Command::RotateDue).await.is_err() {
                return;
            }
        }
    };
    Ok(vec![
        Task(tokio::spawn(outbound.serve(outbound_listener))),
        Task(tokio::spawn(inbound.serve(hbone_listener))),
        Task(tokio::spawn(rotate)),
    ])
}

/// How often certificates are checked against their refresh time.
const ROTATE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Remove every program, link, map, cgroup and file zgate created.
pub fn uninstall(node: &NodeOptions) -> Result<(), Error> {
    bpf::preflight(&node.cgroup_root, &node.bpffs)?;
    bpf::uninstall(&Paths::new(&node.bpffs, &node.instance))?;
    remove_cgroup_tree(&node.cgroup_root, &cgroup2_mount().unwrap_or_default())?;
    for file in [node.state_file(), node.admin_socket.clone()] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "removing",
                    path: file,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Remove zgate's cgroup tree; processes still in it move to `evict_to` and
/// keep running, no longer enforced.
fn remove_cgroup_tree(root: &Path, evict_to: &Path) -> Result<(), Error> {
    let leftovers = workload::Leftovers::MoveTo(evict_to);
    let workloads = root.join("workloads");
    if let Ok(entries) = std::fs::read_dir(&workloads) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                workload::remove_cgroup(&entry.path(), leftovers)?;
            }
        }
    }
    workload::remove_cgroup(&workloads, leftovers)?;
    workload::remove_cgroup(root, leftovers)?;
    Ok(())
}

fn load_mesh(opts: &AgentOptions) -> Result<Arc<MeshConfig>, Error> {
    let mesh = match &opts.config {
        Some(dir) => MeshConfig::load_dir(dir, &opts.mesh())?,
        None => MeshConfig::demo(&opts.mesh())?,
    };
    Ok(Arc::new(mesh))
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(kind).map_err(|source| Error::Io {
        op: "installing a signal handler for",
        path: PathBuf::from("zgate"),
        source,
    })
}
