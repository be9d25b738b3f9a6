//! The HBONE server: CONNECT streams on an accepted mTLS connection.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{server::SendResponse, Reason, RecvStream};
use http::{header::FORWARDED, request::Parts, Method, Response, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinSet,
};
use tracing::Instrument;

use super::{
    Error, HboneStream, CONNECTION_WINDOW, COPY_BUFFER, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
    STREAM_WINDOW,
};
use crate::identity::SpiffeId;

/// One CONNECT the handler is asked to carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The original destination, from `:authority`.
    pub authority: SocketAddr,
    /// The mTLS peer's identity: RBAC's `src_identity`.
    pub peer: SpiffeId,
    /// `Forwarded: for=` when it names an `ip:port`; for logs only, never
    /// for RBAC (istio-l4-semantics.md §1.6).
    pub forwarded_for: Option<SocketAddr>,
}

/// Why the handler will not carry a CONNECT; each answers with the status
/// ztunnel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Policy denied the connection: 401.
    Forbidden,
    /// The authority is not a workload on this node: 400.
    BadDestination,
    /// The destination could not be reached: 503.
    Unavailable,
}

/// Serves the CONNECT streams of one accepted mTLS connection from `peer`
/// until the client closes it. Each stream runs in its own task: `handler`
/// connects it to its destination (or rejects it) and bytes are then
/// copied both ways until both sides have closed. Returning (or dropping
/// this future) ends the connection's streams.
///
/// An error is this connection's alone: log it and carry on.
pub async fn serve_connection<IO, H, F, S>(io: IO, peer: SpiffeId, handler: H) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Result<S, Reject>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake(io)
        .await
        .map_err(|source| Error::Handshake { source })?;
    let handler = Arc::new(handler);
    let mut streams = JoinSet::new();
    // `accept` also drives the connection, so it keeps being polled while
    // streams are open; it returns `None` once the connection is over.
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted.map_err(|source| Error::Connection { source })?;
        streams.spawn(serve_stream(
            request,
            respond,
            peer.clone(),
            Arc::clone(&handler),
        ));
        while streams.try_join_next().is_some() {}
    }
    Ok(())
}

// === impl Reject ===

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::UNAUTHORIZED,
            Self::BadDestination => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

// === helpers ===

async fn serve_stream<H, F, S>(
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SpiffeId,
    handler: Arc<H>,
) where
    H: Fn(Request) -> F,
    F: Future<Output = Result<S, Reject>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, body) = request.into_parts();
    let request = match parse(&parts, peer) {
        Ok(request) => request,
        Err(reason) => {
            tracing::debug!(method = %parts.method, uri = %parts.uri, reason, "bad HBONE request");
            return answer(&mut respond, StatusCode::BAD_REQUEST);
        }
    };
    let span = tracing::debug_span!(
        "hbone",
        dst.addr = %request.authority,
        src.identity = %request.peer,
    );
    carry(request, respond, body, handler.as_ref())
        .instrument(span)
        .await;
}

/// Asks the handler for the destination, then copies bytes both ways.
async fn carry<H, F, S>(
    request: Request,
    mut respond: SendResponse<Bytes>,
    body: RecvStream,
    handler: &H,
) where
    H: Fn(Request) -> F,
    F: Future<Output = Result<S, Reject>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match handler(request).await {
        Ok(upstream) => upstream,
        Err(reject) => {
            tracing::debug!(?reject, "CONNECT rejected");
            return answer(&mut respond, reject.status());
        }
    };
    let send = match respond.send_response(response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(error) => return tracing::debug!(%error, "the client went away"),
    };
    let mut tunnel = HboneStream::new(send, body);
    match tokio::io::copy_bidirectional_with_sizes(
        &mut tunnel,
        &mut upstream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await
    {
        Ok((sent, received)) => tracing::debug!(sent, received, "tunnel closed"),
        Err(error) => {
            tracing::debug!(%error, "tunnel failed");
            tunnel.reset(Reason::INTERNAL_ERROR);
        }
    }
}

/// `Err` carries why the request gets a 400.
pub(super) fn parse(parts: &Parts, peer: SpiffeId) -> Result<Request, &'static str> {
    if parts.method != Method::CONNECT {
        return Err("the method is not CONNECT");
    }
    let authority = parts
        .uri
        .authority()
        .ok_or("no :authority")?
        .as_str()
        .parse()
        .map_err(|_| ":authority is not an ip:port")?;
    let forwarded_for = parts
        .headers
        .get(FORWARDED)
        .and_then(|value| value.to_str().ok())
        .and_then(forwarded_for);
    Ok(Request {
        authority,
        peer,
        forwarded_for,
    })
}

/// The `for=` of the first element of a `Forwarded` header (RFC 7239 §4),
/// when it is an `ip:port` (quoted, as IPv6 and ports require).
pub(super) fn forwarded_for(header: &str) -> Option<SocketAddr> {
    let first = header.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        value.trim().trim_matches('"').parse().ok()
    })
}

fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    if let Err(error) = respond.send_response(response(status), true) {
        tracing::debug!(%error, %status, "the client went away");
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_takes_the_first_ip_port() {
        let v4 = "10.0.0.1:4711".parse().ok();
        let v6 = "[2001:db8::1]:4711".parse().ok();
        assert_eq!(forwarded_for(r#"for="10.0.0.1:4711""#), v4);
        assert_eq!(forwarded_for(r#"for="10.0.0.1:4711";host=svc.ns"#), v4);
        assert_eq!(
            forwarded_for(r#"host=svc.ns; For="[2001:db8::1]:4711""#),
            v6
        );
        assert_eq!(
            forwarded_for(r#"for="10.0.0.1:4711", for="10.0.0.2:1""#),
            v4
        );
        assert_eq!(forwarded_for("for=10.0.0.1"), None);
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for(""), None);
    }
}
