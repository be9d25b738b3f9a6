//! The HBONE client: CONNECT streams over one established mTLS connection.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{header::FORWARDED, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Error, HboneStream, CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};

/// An HTTP/2 connection to an HBONE server. Cheap to clone; every clone
/// opens streams on the same connection, which lives until the last clone
/// and the last stream are gone.
#[derive(Clone, Debug)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Runs the HTTP/2 handshake over `io` (an established mTLS stream, see
    /// [`crate::tls::connect`]) and spawns the task that drives the
    /// connection.
    pub async fn handshake<IO>(io: IO) -> Result<Self, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .handshake(io)
            .await
            .map_err(|source| Error::Handshake { source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let on_close = Arc::clone(&closed);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HBONE connection failed");
            }
            on_close.store(true, Ordering::Release);
        });
        Ok(Self { sender, closed })
    }

    /// Whether the connection has ended; a pool drops such a connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tunnels a TCP connection to `target`, the original destination
    /// `ip:port`, on a new CONNECT stream. `forwarded_for` is the original
    /// client's `ip:port`, sent as `Forwarded: for="…"`.
    ///
    /// Anything but 200 is [`Error::Status`]: 401 when the destination's
    /// policy denied the connection.
    pub async fn connect(
        &self,
        target: SocketAddr,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<HboneStream, Error> {
        let request_error = |source| Error::Request { target, source };
        let mut request = http::Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string());
        if let Some(client) = forwarded_for {
            request = request.header(FORWARDED, format!("for=\"{client}\""));
        }
        let request = request
            .body(())
            .map_err(|source| Error::BugRequest { target, source })?;
        let mut sender = self.sender.clone().ready().await.map_err(request_error)?;
        let (response, send) = sender.send_request(request, false).map_err(request_error)?;
        let response = response.await.map_err(request_error)?;
        if response.status() != StatusCode::OK {
            return Err(Error::Status {
                target,
                status: response.status(),
            });
        }
        Ok(HboneStream::new(send, response.into_body()))
    }
}
