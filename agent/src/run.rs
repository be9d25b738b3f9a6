//! `zgate run`: run a command as an enrolled workload, like a pod in
//! ambient mode — its own cgroup under zgate's tree, registered with the
//! running agent, identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! The enrolment lives as long as the admin connection: this process keeps
//! it open while the command runs, and when the command exits (or this
//! process dies) the agent deregisters the workload and removes its cgroup.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, ExitStatus},
};

use crate::{
    agent::{cgroup2_mount, Request, Response},
    client::{self, AdminClient},
    workload::{self, current_cgroup, join_cgroup, Spec},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Admin(#[from] client::Error),
    #[error("unexpected reply from the agent: {0}")]
    Protocol(String),
    #[error(transparent)]
    Workload(#[from] workload::Error),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("--label {0:?} is not KEY=VALUE")]
    Label(String),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The workload's namespace.
    #[arg(long)]
    pub namespace: String,
    /// The workload's service account (its identity).
    #[arg(long)]
    pub service_account: String,
    /// A workload label, for policy selectors (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The workload's name (default: the command's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// The workload's own IP, on which it serves HBONE peers from other
    /// nodes (default: its WorkloadEntry's `spec.address`).
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
    /// The agent's admin socket.
    #[arg(long, default_value = "/run/zgate/admin.sock")]
    pub admin_socket: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Enrol, run the command inside the workload's cgroup, and return its
/// exit status once it ends.
pub fn run(args: &RunArgs) -> Result<ExitStatus, Error> {
    let spec = spec(args)?;
    let admin = AdminClient::connect(&args.admin_socket)?;
    let workload = match admin.request(&Request::Enroll(spec))? {
        Response::Enrolled(wl) => *wl,
        other => return Err(Error::Protocol(format!("{other:?}"))),
    };
    let program = &args.command[0];
    // Join the workload's cgroup just long enough to start the command in
    // it, then step back out so only the command's tree is the workload.
    let mount = cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let home = current_cgroup(&mount)?;
    join_cgroup(&workload.cgroup)?;
    let child = Command::new(program).args(&args.command[1..]).spawn();
    join_cgroup(&home)?;
    let mut child = child.map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let status = child.wait().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    // Closing the connection deregisters the workload.
    drop(admin);
    Ok(status)
}

fn spec(args: &RunArgs) -> Result<Spec, Error> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| Error::Label(l.clone()))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let base = args.command[0].rsplit('/').next().unwrap_or("workload");
        base.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    });
    Ok(Spec {
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        name,
        labels,
        address: args.address.map(|a| a.to_canonical()),
    })
}
