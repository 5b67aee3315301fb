//! Listeners and connections: accept, serve HTTP/1.1 with keep-alive, route each request, and
//! drain in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, REFERER, USER_AGENT};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::access_log::{valid_request_id, AccessLog, Entry};
use crate::body::ProxyBody;
use crate::config::{Listener, ProxyConfig, RouteTarget};
use crate::forward::{error_response, forward};
use crate::upstream::PoolState;
use crate::{admin, health, static_files};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long shutdown waits for in-flight requests before it gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    config: ProxyConfig,
    pools: Vec<Arc<PoolState>>,
    access_log: Option<AccessLog>,
}

/// Binds every listener of `config`, then serves until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish. A listener that cannot bind is an error
/// naming its address, before anything is served.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let access_log = match &config.access_log {
        Some(c) => Some(AccessLog::open(&c.path, c.format)?),
        None => None,
    };
    let mut bound = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        bound.push((Some(i), bind(l.bind).await?));
    }
    if let Some(admin) = config.admin {
        bound.push((None, bind(admin).await?));
    }
    let pools: Vec<Arc<PoolState>> = config.pools.iter().map(|p| Arc::new(PoolState::new(p.clone()))).collect();
    let flusher = access_log.clone().map(|log| tokio::spawn(log.flush_every(Duration::from_millis(500))));
    let shared = Arc::new(Shared { config, pools, access_log });

    let mut checkers = Vec::new();
    for pool in &shared.pools {
        if let Some(h) = &pool.config.health {
            let count = pool.servers.len();
            for (i, server) in pool.servers.iter().enumerate() {
                let (name, server, h) = (pool.config.name.clone(), server.clone(), h.clone());
                let delay = health::stagger(i, count, h.interval);
                checkers.push(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    health::watch(name, server, h).await
                }));
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut acceptors = Vec::new();
    for (listener_index, socket) in bound {
        let shared = shared.clone();
        let stop_rx = stop_rx.clone();
        let alive_tx = alive_tx.clone();
        acceptors.push(tokio::spawn(accept_loop(socket, listener_index, shared, stop_rx, alive_tx)));
    }
    drop(alive_tx);
    tracing::info!(name = shared.config.name, "proxy is serving");

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for a in acceptors {
        a.abort();
    }
    for c in checkers {
        c.abort();
    }
    // Every connection task holds a clone of `alive_tx`; recv() ends when the last one is gone.
    if tokio::time::timeout(DRAIN_TIMEOUT, alive_rx.recv()).await.is_err() {
        tracing::warn!("some connections were still busy after {} s", DRAIN_TIMEOUT.as_secs());
    }
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    if let Some(log) = &shared.access_log {
        log.flush();
    }
    Ok(())
}

async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))
}

async fn accept_loop(
    socket: TcpListener,
    listener_index: Option<usize>,
    shared: Arc<Shared>,
    stop_rx: watch::Receiver<bool>,
    alive_tx: mpsc::Sender<()>,
) {
    loop {
        let (stream, client) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut stop_rx = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, listener_index, client, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .writev(false)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %client, "client connection ended with an error");
                    }
                }
                _ = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(
    shared: &Shared,
    listener_index: Option<usize>,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(index) = listener_index else {
        return admin::handle(&shared.config.name, &shared.pools, &req);
    };
    let started = Instant::now();
    let listener: &Listener = &shared.config.listeners[index];
    let request_id = ensure_request_id(req.headers_mut());
    // What the log line needs, kept before the request moves on (clones of shared buffers).
    let logged = shared.access_log.as_ref().map(|_| {
        let h = req.headers();
        (req.method().clone(), req.uri().clone(), req.version(), h.get(REFERER).cloned(), h.get(USER_AGENT).cloned())
    });
    let path = req.uri().path();
    let (response, pool, server) = match listener.routes.iter().find(|r| path.starts_with(&r.prefix)) {
        None => (error_response(StatusCode::NOT_FOUND), None, None),
        Some(route) => match &route.target {
            RouteTarget::Pool(p) => {
                let pool = &shared.pools[*p];
                let (response, server) = forward(pool, req, client, listener.trust_forwarded).await;
                (response, Some(pool), server.map(|s| &pool.servers[s]))
            }
            RouteTarget::Static(root) => (static_files::serve(root, &route.prefix, &req).await, None, None),
        },
    };
    if let (Some(log), Some((method, uri, version, referer, user_agent))) = (&shared.access_log, logged) {
        log.write(&Entry {
            client,
            listener: &listener.name,
            method: &method,
            uri: &uri,
            version,
            referer: referer.as_ref().and_then(|v| v.to_str().ok()),
            user_agent: user_agent.as_ref().and_then(|v| v.to_str().ok()),
            status: response.status(),
            bytes: http_body::Body::size_hint(response.body()).exact(),
            duration: started.elapsed(),
            pool: pool.map(|p| p.config.name.as_str()),
            server: server.map(|s| s.config.name.as_str()),
            request_id: request_id.to_str().unwrap_or("-"),
        });
    }
    response
}

/// The request's id: the client's `X-Request-Id` when it is a safe one, else a new one; it
/// goes upstream and into the access log.
fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        if valid_request_id(id.as_bytes()) {
            return id.clone();
        }
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// 16 hex digits; random per process and counted, so ids do not repeat within a run.
fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
        t.unwrap_or(0) ^ ((std::process::id() as u64) << 40)
    });
    let n = base.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}
