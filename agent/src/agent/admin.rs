//! The admin socket: a root-only Unix socket speaking one JSON object per
//! line. An `enroll` request creates a workload that lives as long as the
//! connection: when the enrolling client goes away, the workload is
//! deregistered and its cgroup removed.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{Command, Error};
use crate::workload::{Spec, Workload};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Enrol a workload; it is deregistered when this connection closes.
    Enroll(Spec),
    /// What the agent is doing (`zgate status`).
    Status,
    /// `zgate check --agent`: the `zgate check` arguments, decided against
    /// the live state.
    Check { args: Vec<String> },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Enrolled(Box<Workload>),
    Status(Box<super::status::Status>),
    /// The rendered `zgate check` report.
    Checked {
        report: String,
    },
    Error {
        message: String,
    },
}

/// Aborts the accept loop when dropped.
pub(super) struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn serve(path: &Path, tx: mpsc::Sender<Command>) -> Result<Server, Error> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing a stale")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting"))?;
    Ok(Server(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, tx.clone()));
                }
                Err(e) => tracing::warn!("admin socket: accept failed: {e}"),
            }
        }
    })))
}

async fn connection(stream: UnixStream, tx: mpsc::Sender<Command>) {
    // Root only: the socket is 0600, and the peer's uid is checked too.
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "admin socket: refused a non-root client");
            return;
        }
        Err(e) => {
            tracing::warn!("admin socket: no peer credentials: {e}");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let (response, enrolled) = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Enroll(spec)) => {
            let (reply, rx) = oneshot::channel();
            let sent = tx.send(Command::Enroll(spec, reply)).await;
            match (sent, rx.await) {
                (Ok(()), Ok(Ok(wl))) => (Response::Enrolled(Box::new(wl.clone())), Some(wl.id)),
                (Ok(()), Ok(Err(message))) => (Response::Error { message }, None),
                _ => (
                    Response::Error {
                        message: Error::Stopped.to_string(),
                    },
                    None,
                ),
            }
        }
        Ok(Request::Status) => {
            let (reply, rx) = oneshot::channel();
            let sent = tx.send(Command::Status(reply)).await;
            match (sent, rx.await) {
                (Ok(()), Ok(status)) => (Response::Status(Box::new(status)), None),
                _ => (
                    Response::Error {
                        message: Error::Stopped.to_string(),
                    },
                    None,
                ),
            }
        }
        Ok(Request::Check { args }) => {
            let (reply, rx) = oneshot::channel();
            let sent = tx.send(Command::Check(args, reply)).await;
            match (sent, rx.await) {
                (Ok(()), Ok(Ok(report))) => (Response::Checked { report }, None),
                (Ok(()), Ok(Err(message))) => (Response::Error { message }, None),
                _ => (
                    Response::Error {
                        message: Error::Stopped.to_string(),
                    },
                    None,
                ),
            }
        }
        Err(e) => (
            Response::Error {
                message: format!("bad request: {e}"),
            },
            None,
        ),
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    if write.write_all(text.as_bytes()).await.is_err() {
        tracing::warn!("admin socket: client left before the response");
    }
    if let Some(id) = enrolled {
        // The workload lives as long as this connection.
        let mut sink = [0u8; 64];
        let mut inner = lines.into_inner();
        while matches!(inner.read(&mut sink).await, Ok(n) if n > 0) {}
        let _ = tx.send(Command::Deregister(id)).await;
    }
}
