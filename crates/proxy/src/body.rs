//! The body of a response the proxy sends: streamed from an upstream (handing its connection
//! back to the pool when the body ends), or made here (error pages, static files, admin).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::{InFlight, Sender};

pub enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

/// An upstream response body. When it ends cleanly the connection goes back to the server's
/// idle pool; no task is spawned per request for that.
///
/// A body dropped before its end (the client went away) drops its connection too: it is
/// mid-response and cannot be reused.
pub struct UpstreamBody {
    inner: Incoming,
    flight: InFlight,
    sender: Option<Sender>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, flight: InFlight, sender: Sender) -> Self {
        UpstreamBody { inner, flight, sender: Some(sender) }
    }

    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.flight.server().put_idle(sender);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => up.release(),
                    Poll::Ready(Some(Ok(_))) if up.inner.is_end_stream() => up.release(),
                    Poll::Ready(Some(Err(_))) => drop(up.sender.take()),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}
