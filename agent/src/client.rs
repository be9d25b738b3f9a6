//! The client side of the agent's admin socket, for `zgate run` and
//! `zgate status`: one JSON request line, one JSON response line.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use crate::agent::{status::Status, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the zgate agent at {}: {source} (is `zgate agent` running, and are you root?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Protocol(String),
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// A connection to the agent. Dropping it ends an enrolment made on it.
pub struct AdminClient {
    stream: UnixStream,
}

impl AdminClient {
    pub fn connect(path: &Path) -> Result<Self, Error> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { stream })
    }

    pub fn request(&self, request: &Request) -> Result<Response, Error> {
        let mut line =
            serde_json::to_string(request).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push('\n');
        (&self.stream)
            .write_all(line.as_bytes())
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let mut reply = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut reply)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        match serde_json::from_str::<Response>(&reply) {
            Ok(Response::Error { message }) => Err(Error::Refused(message)),
            Ok(response) => Ok(response),
            Err(e) => Err(Error::Protocol(format!("unexpected reply {reply:?}: {e}"))),
        }
    }

    pub fn status(&self) -> Result<Status, Error> {
        match self.request(&Request::Status)? {
            Response::Status(status) => Ok(*status),
            other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}
