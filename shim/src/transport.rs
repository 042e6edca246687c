//! A byte-stream filter in front of the ttrpc server so that a request for an unknown
//! *service* answers `Unimplemented`, as one for an unknown method does.
//!
//! ttrpc-rust 0.10 looks services up in an exact-match map and answers an unregistered one with
//! `InvalidArgument` ("... service does not exist"), before any code of ours runs, and it has no
//! fallback-service hook. So each accepted connection is wrapped: request frames (at most
//! ttrpc's 4 MiB) are decoded, and one naming a service we do not serve is re-addressed to
//! [`FALLBACK_SERVICE`] with a method name no service has (`/<service>/<method>`), which
//! ttrpc answers with `Unimplemented`. Every other byte — other frame types, oversized frames
//! (ttrpc refuses them itself), undecodable envelopes, a truncated tail — passes unchanged.
//! Only the read side is filtered; writes go straight through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use protobuf::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// ttrpc frame header: length u32 BE, stream id u32 BE, type u8, flags u8.
const HEADER_LEN: usize = 10;
/// ttrpc's largest payload; bigger frames pass through for ttrpc to refuse.
const MAX_PAYLOAD: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;
const READ_CHUNK: usize = 16 << 10;

/// Where requests for unknown services are sent (any served service name works).
pub const FALLBACK_SERVICE: &str = crate::task::SERVICE_NAMES[0];

/// Rewrites a request envelope that names a service not in `known`; `None` keeps it as is.
fn readdress(payload: &[u8], known: &[&str]) -> Option<Vec<u8>> {
    let mut req = ttrpc::Request::parse_from_bytes(payload).ok()?;
    if known.contains(&req.service.as_str()) {
        return None;
    }
    tracing::debug!(service = %req.service.escape_debug(), method = %req.method.escape_debug(), "request for an unknown service");
    req.method = format!("/{}/{}", req.service, req.method);
    req.service = FALLBACK_SERVICE.to_owned();
    let out = req.write_to_bytes().ok()?;
    (out.len() <= MAX_PAYLOAD).then_some(out)
}

/// A connection whose inbound request frames are re-addressed by [`readdress`].
#[derive(Debug)]
pub struct ServiceFilter<S> {
    inner: S,
    known: &'static [&'static str],
    /// Bytes read from `inner`, not yet examined.
    pending: Vec<u8>,
    /// Examined bytes ready for the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Body bytes of the current pass-through frame still to forward unexamined.
    passthrough: usize,
    eof: bool,
}

impl<S> ServiceFilter<S> {
    /// Wraps `inner`; requests for services outside `known` are re-addressed.
    pub fn new(inner: S, known: &'static [&'static str]) -> Self {
        ServiceFilter { inner, known, pending: Vec::new(), out: Vec::new(), out_pos: 0, passthrough: 0, eof: false }
    }

    fn emit_pending(&mut self, n: usize) {
        self.out.extend(self.pending.drain(..n));
    }

    /// Moves what can be decided from `pending` to `out`; false if more input is needed.
    fn process(&mut self) -> bool {
        if self.passthrough > 0 {
            let n = self.passthrough.min(self.pending.len());
            if n == 0 {
                return false;
            }
            self.emit_pending(n);
            self.passthrough -= n;
            return true;
        }
        let Some(header) = self.pending.get(..HEADER_LEN) else { return false };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = header[8];
        if kind != TYPE_REQUEST || len > MAX_PAYLOAD {
            self.emit_pending(HEADER_LEN);
            self.passthrough = len;
            return true;
        }
        let Some(body) = self.pending.get(HEADER_LEN..HEADER_LEN + len) else { return false };
        match readdress(body, self.known) {
            None => self.emit_pending(HEADER_LEN + len),
            Some(new_body) => {
                let mut header: [u8; HEADER_LEN] = [0; HEADER_LEN];
                header.copy_from_slice(&self.pending[..HEADER_LEN]);
                // Fits: readdress keeps it within MAX_PAYLOAD.
                header[..4].copy_from_slice(&u32::try_from(new_body.len()).unwrap_or(u32::MAX).to_be_bytes());
                self.pending.drain(..HEADER_LEN + len);
                self.out.extend_from_slice(&header);
                self.out.extend(new_body);
            }
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ServiceFilter<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.process() {
                continue;
            }
            if this.eof {
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // A truncated tail: hand it over as is; ttrpc sees the early EOF.
                let n = this.pending.len();
                this.emit_pending(n);
                continue;
            }
            // Uninitialized: zeroing 16 KiB on every read was a third of the shim's
            // instructions per exec (callgrind); the reader initializes what it fills.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
            } else {
                this.pending.extend_from_slice(rb.filled());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ServiceFilter<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KNOWN: &[&str] = &["containerd.task.v3.Task"];

    fn frame(stream: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        f.extend(stream.to_be_bytes());
        f.extend([kind, 0]);
        f.extend(payload);
        f
    }

    fn request(service: &str, method: &str) -> Vec<u8> {
        let mut r = ttrpc::Request::new();
        r.service = service.into();
        r.method = method.into();
        r.payload = b"payload".to_vec();
        r.write_to_bytes().unwrap()
    }

    /// Feeds `input` through the filter in `chunk`-byte writes and returns what it reads.
    async fn filtered(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for c in input.chunks(chunk) {
                tx.write_all(c).await.unwrap();
            }
        });
        let mut f = ServiceFilter::new(rx, KNOWN);
        let mut out = Vec::new();
        f.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn known_services_and_other_frames_pass_unchanged() {
        let mut input = frame(1, TYPE_REQUEST, &request(KNOWN[0], "State"));
        input.extend(frame(3, 3, b"data"));
        input.extend(frame(5, TYPE_REQUEST, &[0xff, 0xff, 0xff]));
        input.extend(frame(7, 0x7f, b"odd type"));
        // A truncated tail passes as is.
        input.extend(&frame(11, TYPE_REQUEST, &request("x.Y", "Z"))[..12]);
        for chunk in [1, 7, 4096] {
            assert_eq!(filtered(input.clone(), chunk).await, input, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn oversized_frames_pass_unexamined() {
        let mut input = u32::try_from(MAX_PAYLOAD + 1).unwrap().to_be_bytes().to_vec();
        input.extend([0, 0, 0, 9, TYPE_REQUEST, 0]);
        input.extend(vec![7u8; MAX_PAYLOAD + 1]);
        input.extend(frame(11, TYPE_REQUEST, &request(KNOWN[0], "State")));
        assert!(filtered(input.clone(), 64 << 10).await == input);
    }

    #[tokio::test]
    async fn unknown_services_are_readdressed() {
        let mut input = frame(1, TYPE_REQUEST, &request("no.such.Service", "State"));
        input.extend(frame(3, TYPE_REQUEST, &request(KNOWN[0], "State")));
        for chunk in [1, 5, 4096] {
            let out = filtered(input.clone(), chunk).await;
            let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
            assert_eq!(out[4..10], input[4..10], "stream id and type kept");
            let r = ttrpc::Request::parse_from_bytes(&out[10..10 + len]).unwrap();
            assert_eq!(
                (r.service.as_str(), r.method.as_str(), r.payload.as_slice()),
                (FALLBACK_SERVICE, "/no.such.Service/State", b"payload".as_slice())
            );
            assert_eq!(out[10 + len..], frame(3, TYPE_REQUEST, &request(KNOWN[0], "State"))[..]);
        }
    }
}
