//! One CONNECT stream as a byte stream: `AsyncRead` from the peer's DATA
//! frames, `AsyncWrite` as DATA frames within HTTP/2 flow control, and
//! shutdown as END_STREAM (a TCP half-close carried through the tunnel).

use std::{
    fmt, io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A tunneled TCP connection: both ends of one HBONE CONNECT stream.
///
/// Dropping it before both directions ended resets the stream (CANCEL).
pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read; its flow-control capacity is released
    /// as it is read, so a slow reader slows the sender.
    unread: Bytes,
    end_sent: bool,
}

impl HboneStream {
    pub(super) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            end_sent: false,
        }
    }

    /// Aborts the stream with RST_STREAM.
    pub(super) fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }

    /// The io error for a stream the peer reset or that can no longer send.
    fn poll_send_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => Poll::Ready(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the HBONE stream was reset: {reason}"),
            )),
            Err(error) => Poll::Ready(to_io(error)),
        }
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
                // END_STREAM: the peer half-closed.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        // Only fails once the stream is gone, which the next read reports.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.end_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown of the HBONE stream",
            )));
        }
        // Send no more than the peer's window allows: h2 would otherwise
        // buffer without bound.
        this.send.reserve_capacity(buf.len());
        let mut capacity = this.send.capacity();
        if capacity == 0 {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => capacity = n,
                Some(Err(_)) | None => return this.poll_send_error(cx).map(Err),
            }
        }
        let n = capacity.min(buf.len());
        match this
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => this.poll_send_error(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The h2 connection task writes frames out as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.end_sent {
            return Poll::Ready(Ok(()));
        }
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.end_sent = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => this.poll_send_error(cx).map(Err),
        }
    }
}

impl fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneStream")
            .field("stream_id", &self.send.stream_id())
            .field("unread", &self.unread.len())
            .field("end_sent", &self.end_sent)
            .finish()
    }
}

fn to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HBONE connection I/O error"));
    }
    let kind = match error.reason() {
        Some(_) if error.is_reset() || error.is_go_away() => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}
