//! HBONE: HTTP/2 `CONNECT` over the mTLS connection of [`crate::tls`], one
//! CONNECT stream per tunneled TCP connection (istio-l4-semantics.md §6).
//!
//! - The server ([`serve_connection`]) answers each stream on its own: the
//!   agent's handler decides (RBAC is per CONNECT stream, "other streams on
//!   the same pooled HBONE connection are not affected"), then bytes are
//!   copied both ways. Status codes follow ztunnel (§1.6): policy denial
//!   401, non-CONNECT method or bad authority 400, upstream failure 503.
//! - The client ([`Connection::connect`]) opens a stream with `:authority`
//!   = the original destination `ip:port` and `Forwarded: for="ip:port"`,
//!   and hands back an [`HboneStream`] once the server answers 200.
//! - [`Pool`] keeps one connection per (source identity, destination
//!   identity, destination address) for reuse.

use std::net::SocketAddr;

use http::StatusCode;

mod client;
mod pool;
mod server;
mod stream;
#[cfg(test)]
mod tests;

pub use client::Connection;
pub use pool::{Pool, PoolKey};
pub use server::{serve_connection, Reject, Request};
pub use stream::HboneStream;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP/2 handshake on the HBONE connection failed: {source}")]
    Handshake { source: h2::Error },
    #[error("the HBONE connection failed: {source}")]
    Connection { source: h2::Error },
    #[error("sending CONNECT {target} failed: {source}")]
    Request {
        target: SocketAddr,
        source: h2::Error,
    },
    #[error("the HBONE server refused CONNECT {target} with {status}: {}", meaning(*status))]
    Status {
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("bug: building the CONNECT request for {target}: {source}")]
    BugRequest {
        target: SocketAddr,
        source: http::Error,
    },
}

impl Error {
    /// The status of a CONNECT the server refused, e.g. 401 when the
    /// destination's policy denied it.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn meaning(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "the destination's policy denied the connection",
        StatusCode::BAD_REQUEST => "the destination is not a workload on that node",
        StatusCode::SERVICE_UNAVAILABLE => "the destination could not be reached from its node",
        _ => "unexpected status",
    }
}

/// The server's pure request parsers, public only for the fuzz targets
/// (`agent/fuzz`, `hbone_request`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;

    use http::request::Parts;

    use super::{server, Request};
    use crate::identity::SpiffeId;

    /// A CONNECT request head as the server reads it; `Err` is the reason
    /// for its 400.
    pub fn parse_request(parts: &Parts, peer: SpiffeId) -> Result<Request, &'static str> {
        server::parse(parts, peer)
    }

    /// The `for=` address of a `Forwarded` header value.
    pub fn forwarded_for(header: &str) -> Option<SocketAddr> {
        server::forwarded_for(header)
    }
}

/// The HBONE server port.
pub const PORT: u16 = 15008;
/// Per-stream HTTP/2 flow-control window (ztunnel's 4 MiB).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection HTTP/2 flow-control window (ztunnel's 16 MiB).
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame payload accepted (256 KiB).
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Streams (tunneled connections) one client may hold open on one HBONE
/// connection; a client with more opens another connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Buffer per direction when copying tunnel bytes.
const COPY_BUFFER: usize = 64 * 1024;
