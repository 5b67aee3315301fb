//! Listeners and connections: accept, serve HTTP/1.1 with keep-alive, route each request, and
//! drain in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::body::ProxyBody;
use crate::config::{Listener, ProxyConfig, RouteTarget};
use crate::forward::{error_response, forward};
use crate::upstream::PoolState;
use crate::{admin, health, static_files};

/// How long shutdown waits for in-flight requests before it gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    config: ProxyConfig,
    pools: Vec<Arc<PoolState>>,
}

/// Binds every listener of `config`, then serves until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish. A listener that cannot bind is an error
/// naming its address, before anything is served.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let mut bound = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        bound.push((Some(i), bind(l.bind).await?));
    }
    if let Some(admin) = config.admin {
        bound.push((None, bind(admin).await?));
    }
    let pools: Vec<Arc<PoolState>> = config.pools.iter().map(|p| Arc::new(PoolState::new(p.clone()))).collect();
    let shared = Arc::new(Shared { config, pools });

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
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(index) = listener_index else {
        return admin::handle(&shared.config.name, &shared.pools, &req);
    };
    let listener: &Listener = &shared.config.listeners[index];
    let path = req.uri().path();
    let Some(route) = listener.routes.iter().find(|r| path.starts_with(&r.prefix)) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    match &route.target {
        RouteTarget::Pool(pool) => forward(&shared.pools[*pool], req, client, listener.trust_forwarded).await,
        RouteTarget::Static(root) => static_files::serve(root, &route.prefix, &req).await,
    }
}
