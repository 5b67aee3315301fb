//! Upstream servers at run time: health state, counters, and a pool of idle keep-alive
//! connections per server.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config;

/// Idle connections kept per server; more are closed when handed back.
const MAX_IDLE_PER_SERVER: usize = 256;

pub type Sender = SendRequest<Incoming>;

/// A pool of servers as the request path sees it.
#[derive(Debug)]
pub struct PoolState {
    pub config: config::Pool,
    pub servers: Vec<Arc<ServerState>>,
    pub next: AtomicUsize,
    pub no_server_available: AtomicU64,
}

impl PoolState {
    pub fn new(config: config::Pool) -> Self {
        let servers = config.servers.iter().map(|s| Arc::new(ServerState::new(s.clone()))).collect();
        PoolState { config, servers, next: AtomicUsize::new(0), no_server_available: AtomicU64::new(0) }
    }
}

/// One upstream server: whether it takes traffic, what it did, and its idle connections.
#[derive(Debug)]
pub struct ServerState {
    pub config: config::Server,
    up: AtomicBool,
    idle: Mutex<Vec<Sender>>,
    pub requests: AtomicU64,
    /// Responses by status class: index 0 for 1xx … 4 for 5xx.
    pub responses: [AtomicU64; 5],
    pub connect_failures: AtomicU64,
    pub retries: AtomicU64,
    pub active: AtomicU64,
}

impl ServerState {
    pub fn new(config: config::Server) -> Self {
        ServerState {
            config,
            up: AtomicBool::new(true),
            idle: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            connect_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            active: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if !up {
            // Connections to a server taken out are not reused when it comes back.
            self.lock_idle().clear();
        }
    }

    pub fn count_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender>> {
        // A poisoned lock only means another request panicked mid-push; the Vec is still sound.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open; the caller awaits
    /// `ready()` on it, as a connection handed back at the end of a body may still be
    /// finishing that response.
    pub fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.lock_idle();
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    pub fn put_idle(&self, sender: Sender) {
        if sender.is_closed() || !self.is_up() {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < MAX_IDLE_PER_SERVER {
            idle.push(sender);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    /// Opens a new HTTP/1.1 connection, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        let stream = connect_tcp(self.config.address, timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

pub async fn connect_tcp(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
