//! Peers that stop moving. [`StallClock`] runs only while an operation waits on a peer and
//! says when it waited too long; [`WriteTimeout`] uses it for a client connection that must
//! keep taking what the proxy writes: a client that stops reading (its window closed, the
//! socket full) for longer than its listener's `client_timeout_ms` gets its connection closed,
//! as HAProxy's `timeout client` does, instead of holding the response's upstream connection
//! for ever. The request body uses it for a client that stops sending. The common path (no
//! wait) costs one branch. [`Activity`] and [`idle_for`] end a tunnel (an upgraded
//! connection) that went silent both ways.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A clock for one kind of wait on a peer: started by the first wait after progress, stopped
/// by progress.
#[derive(Debug)]
pub struct StallClock {
    limit: Duration,
    /// Made the first time something waits; reused after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Something waits and the timer runs for it.
    waiting: bool,
}

impl StallClock {
    pub fn new(limit: Duration) -> StallClock {
        StallClock { limit, timer: None, waiting: false }
    }

    /// The peer moved: the next wait starts a fresh clock.
    pub fn progress(&mut self) {
        self.waiting = false;
    }

    /// Called when an operation could not proceed: true once the wait passed the limit (the
    /// waker is registered for that moment otherwise).
    pub fn waited_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        // `checked_add`: an unbounded limit (Duration::MAX) never fires.
        let deadline = now.checked_add(self.limit).unwrap_or(now + Duration::from_secs(86_400 * 365));
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            timer.as_mut().reset(deadline);
            self.waiting = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

pub struct WriteTimeout<S> {
    inner: S,
    clock: StallClock,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> WriteTimeout<S> {
        WriteTimeout { inner, clock: StallClock::new(limit) }
    }

    /// Runs `op`; while it waits, the clock runs.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(&mut self.inner, cx) {
            Poll::Pending if self.clock.waited_too_long(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} ms", self.clock.limit().as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
            done => {
                self.clock.progress();
                done
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.timed(cx, |s, cx| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |s, cx| Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, |s, cx| Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |s, cx| Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One side of a tunnel, counting the bytes read from it into a count both sides share.
pub struct Activity<S> {
    inner: S,
    moved: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    pub fn new(inner: S, moved: Arc<AtomicU64>) -> Activity<S> {
        Activity { inner, moved }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Returns once `moved` has not changed for `limit` (looked at every quarter of it, so a
/// silent tunnel ends between 1 and 1.25 times the limit: one timer per tunnel, no clock read
/// per byte).
pub async fn idle_for(moved: &AtomicU64, limit: Duration) {
    let step = limit / 4;
    let mut last = moved.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    while quiet < limit {
        tokio::time::sleep(step).await;
        let now = moved.load(Ordering::Relaxed);
        match now == last {
            true => quiet += step,
            false => (last, quiet) = (now, Duration::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_peer_that_reads_nothing_fails_the_write_after_the_limit_and_one_that_reads_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let mut ours = WriteTimeout::new(ours, Duration::from_millis(200));
        let chunk = vec![0u8; 1 << 20];
        let started = std::time::Instant::now();
        let mut written = 0usize;
        let err = loop {
            match ours.write(&chunk).await {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(written < 1 << 30, "the socket never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
        drop(peer);
    }
}
