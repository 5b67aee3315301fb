//! The body of a response the proxy sends: streamed from an upstream (handing its connection
//! back to the pool when the body ends), or made here (error pages, static files, admin).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client::{Connection, Framing};
use crate::upstream::InFlight;

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream { #[pin] body: UpstreamBody },
        Full { bytes: Option<Bytes> },
        File { file: Box<crate::static_files::FileBody> },
        Compressed { body: Box<crate::compression::CompressedBody> },
        Caching { body: Box<crate::cache::CachingBody> },
        H2 { body: Box<H2Body> },
    }
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full { bytes: Some(bytes.into()) }
    }

    pub fn empty() -> Self {
        ProxyBody::Full { bytes: None }
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ProxyBody::Upstream { body }
    }

    pub fn compressed(body: crate::compression::CompressedBody) -> Self {
        ProxyBody::Compressed { body: Box::new(body) }
    }

    /// An HTTP/2 server's body; silence longer than `idle` mid-body ends it with an error.
    pub fn h2(body: Incoming, flight: InFlight, idle: Duration) -> Self {
        let silence = crate::stall::StallClock::new(idle);
        ProxyBody::H2 { body: Box::new(H2Body { body, flight: Some(flight), silence }) }
    }

    pub fn caching(body: crate::cache::CachingBody) -> Self {
        ProxyBody::Caching { body: Box::new(body) }
    }

    pub fn file(file: crate::static_files::FileBody) -> Self {
        ProxyBody::File { file: Box::new(file) }
    }
}

/// An upstream response body, read from its connection as the client takes it. When it ends
/// cleanly the connection goes back to the server's idle pool, with no task spawned per
/// request for that. A body dropped before its end (the client went away) drops its
/// connection too: it is mid-response and cannot be reused. Silence longer than the pool's
/// idle timeout ends the response with an error.
pub struct UpstreamBody {
    connection: Option<Box<Connection>>,
    framing: Framing,
    keep_alive: bool,
    flight: InFlight,
    idle_timeout: Duration,
}

impl UpstreamBody {
    pub fn new(
        mut connection: Box<Connection>,
        framing: Framing,
        keep_alive: bool,
        flight: InFlight,
        idle_timeout: Duration,
    ) -> Self {
        connection.arm_idle_timer(idle_timeout);
        UpstreamBody { connection: Some(connection), framing, keep_alive, flight, idle_timeout }
    }

    /// The body is read whole: its connection can serve the next request.
    fn finish(&mut self) {
        if let Some(connection) = self.connection.take() {
            if self.keep_alive {
                self.flight.server().put_idle(connection);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
        match connection.poll_body(&mut this.framing, this.idle_timeout, cx) {
            Poll::Ready(Ok(Some(data))) => {
                this.flight.server().bytes_out.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if this.framing.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.connection = None;
                tracing::warn!(server = this.flight.server().config.name, error = %e, "response body failed; closing");
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBodyProj::Upstream { body } => body.poll_frame(cx),
            ProxyBodyProj::File { file } => match file.poll_chunk(cx) {
                Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ProxyBodyProj::Compressed { body } => body.poll_frame(cx),
            ProxyBodyProj::Caching { body } => Pin::new(&mut **body).poll_frame(cx),
            ProxyBodyProj::H2 { body } => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { bytes } => bytes.is_none(),
            ProxyBody::Upstream { body } => body.is_end_stream(),
            ProxyBody::File { file } => file.remaining() == 0,
            ProxyBody::Compressed { body } => body.is_end_stream(),
            ProxyBody::Caching { body } => body.is_end_stream(),
            ProxyBody::H2 { body } => body.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { bytes: Some(b) } => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full { bytes: None } => SizeHint::with_exact(0),
            ProxyBody::Upstream { body } => body.size_hint(),
            ProxyBody::File { file } => SizeHint::with_exact(file.remaining()),
            ProxyBody::Compressed { body } => body.size_hint(),
            ProxyBody::Caching { body } => body.size_hint(),
            ProxyBody::H2 { body } => body.body.size_hint(),
        }
    }
}

/// A response body from an HTTP/2 server: frames as they come, trailers included (gRPC's
/// status is in them). The request counts as in flight on its server until the body ends.
pub struct H2Body {
    body: Incoming,
    flight: Option<InFlight>,
    /// The pool's idle timeout, as for HTTP/1.1 bodies.
    silence: crate::stall::StallClock,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Pending if this.silence.waited_too_long(cx) => {
                this.flight = None;
                let idle = this.silence.limit().as_millis();
                return Poll::Ready(Some(Err(format!("upstream sent nothing for {idle} ms mid-response").into())));
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.silence.progress();
                if let (Some(data), Some(flight)) = (frame.data_ref(), &this.flight) {
                    flight.server().bytes_out.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                if this.body.is_end_stream() {
                    this.flight = None;
                }
            }
            Poll::Ready(_) => this.flight = None,
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body on its way upstream: the client's, cut off past the listener's size limit,
/// or none (a request replayed on another server after a failure), or a copy kept of one
/// sent before (a stream an HTTP/2 server refused).
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    /// The pool's count of request body bytes, added to when the body is done.
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Longest silence from the client before the body fails with [`ClientStalled`].
    silence: crate::stall::StallClock,
    /// Only on the HTTP/2 path: a copy kept of what goes out, or the copy going out again.
    copy: Option<Box<BodyCopy>>,
}

enum BodyCopy {
    /// What the client's body has given so far.
    Keeping(std::sync::Arc<std::sync::Mutex<KeptBody>>),
    /// A kept body, sent again.
    Replaying(std::collections::VecDeque<Bytes>, Option<http::HeaderMap>),
}

/// A copy of a request body as it went out, up to a size.
#[derive(Debug, Default)]
pub struct KeptBody {
    chunks: Vec<Bytes>,
    size: usize,
    trailers: Option<http::HeaderMap>,
    /// The body ended, whole, within the size.
    complete: bool,
    /// Past the size, or failed: nothing to send again.
    lost: bool,
}

impl KeptBody {
    /// A body read whole before it went out.
    pub fn whole(chunks: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> KeptBody {
        let size = chunks.iter().map(Bytes::len).sum();
        KeptBody { chunks, size, trailers, complete: true, lost: false }
    }

    /// The body to send again, when the whole of it was kept.
    pub fn replay(&self) -> Option<RequestBody> {
        if !self.complete || self.lost {
            return None;
        }
        let mut body = RequestBody::empty();
        body.copy = Some(Box::new(BodyCopy::Replaying(self.chunks.iter().cloned().collect(), self.trailers.clone())));
        Some(body)
    }

    fn keep(&mut self, frame: &Frame<Bytes>, limit: usize) {
        if self.lost {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.size += data.len();
            if self.size > limit {
                self.lost = true;
                self.chunks = Vec::new();
                return;
            }
            self.chunks.push(data.clone());
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }
}

/// What a body gave, for its kept copy.
enum Kept<'a> {
    Frame(&'a Frame<Bytes>),
    End,
    Failed,
}

/// The most of a request body kept to send again (HAProxy's L7 retries keep what fits its
/// 16 KiB buffer; a unary gRPC call or a form fits).
pub const KEPT_BODY_LIMIT: usize = 64 * 1024;

impl RequestBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        silence: std::time::Duration,
        counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        RequestBody {
            inner: Some(inner),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            counter: Some(counter),
            silence: crate::stall::StallClock::new(silence),
            copy: None,
        }
    }

    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            limit: 0,
            seen: 0,
            counter: None,
            silence: crate::stall::StallClock::new(std::time::Duration::MAX),
            copy: None,
        }
    }

    /// Keeps a copy of what this body gives from now on (up to [`KEPT_BODY_LIMIT`]), to
    /// send again if the server refuses the stream it went with.
    pub fn keep_copy(&mut self) -> std::sync::Arc<std::sync::Mutex<KeptBody>> {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(KeptBody::default()));
        self.copy = Some(Box::new(BodyCopy::Keeping(kept.clone())));
        kept
    }

    /// Adds what the body just gave to the copy being kept, if one is.
    fn note_kept(&self, event: Kept<'_>) {
        let Some(copy) = &self.copy else { return };
        let BodyCopy::Keeping(kept) = &**copy else { return };
        let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Kept::Frame(frame) => {
                kept.keep(frame, KEPT_BODY_LIMIT);
                // hyper stops polling a body that says it has ended.
                kept.complete |= self.inner.as_ref().is_some_and(|b| b.is_end_stream());
            }
            Kept::End => kept.complete = true,
            Kept::Failed => kept.lost = true,
        }
    }

    fn poll_replay(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.copy.as_deref_mut() {
            Some(BodyCopy::Replaying(chunks, trailers)) => match chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            _ => Poll::Ready(None),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let (Some(counter), true) = (&self.counter, self.seen > 0) {
            counter.fetch_add(self.seen, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The request body grew past the listener's `max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

/// The client sent nothing of its body for the listener's `client_timeout_ms`.
#[derive(Debug)]
pub struct ClientStalled(pub std::time::Duration);

impl std::fmt::Display for ClientStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent no body data for {} ms", self.0.as_millis())
    }
}

impl std::error::Error for ClientStalled {}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return this.poll_replay() };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.silence.progress();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.note_kept(Kept::Failed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                this.note_kept(Kept::Frame(&frame));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.note_kept(Kept::Failed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.note_kept(Kept::End);
                Poll::Ready(None)
            }
            Poll::Pending if this.silence.waited_too_long(cx) => {
                Poll::Ready(Some(Err(Box::new(ClientStalled(this.silence.limit())))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.inner, self.copy.as_deref()) {
            (Some(inner), _) => inner.is_end_stream(),
            (None, Some(BodyCopy::Replaying(chunks, trailers))) => chunks.is_empty() && trailers.is_none(),
            (None, _) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.copy.as_deref()) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(BodyCopy::Replaying(chunks, _))) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
            (None, _) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_body_goes_again_whole_with_its_trailers_and_length() {
        use http_body_util::BodyExt;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        let kept = KeptBody::whole(vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo")], Some(trailers));
        let body = kept.replay().expect("whole");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let collected = rt.block_on(body.collect()).expect("a replay never fails");
        assert_eq!(collected.trailers().map(|t| t["grpc-timeout"].clone()), Some(http::HeaderValue::from_static("1S")));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
        // What was not kept whole does not go again.
        let mut partial = KeptBody::default();
        partial.keep(&Frame::data(Bytes::from_static(b"hel")), KEPT_BODY_LIMIT);
        assert!(partial.replay().is_none(), "not ended");
        partial.complete = true;
        partial.keep(&Frame::data(Bytes::from(vec![0u8; KEPT_BODY_LIMIT])), KEPT_BODY_LIMIT);
        assert!(partial.replay().is_none(), "past the size kept");
    }
}
