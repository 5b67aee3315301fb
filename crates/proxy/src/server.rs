//! Listeners and connections: accept, serve HTTP/1.1 with keep-alive, route each request, and
//! drain in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, REFERER, STRICT_TRANSPORT_SECURITY, USER_AGENT};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::{HashMap, HashSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::access_log::{valid_request_id, AccessLog, Entry};
use crate::basic_auth::AuthCheck;
use crate::body::ProxyBody;
use crate::client_cert::ClientIdentity;
use crate::config::{Listener, ProxyConfig, Route, RouteTarget};
use crate::forward::{error_response, forward};
use crate::stall::WriteTimeout;
use crate::takeover::{self, Launch, Predecessor};
use crate::upstream::PoolState;
use crate::{admin, compression, health, redundancy, static_files};

const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for an accept loop to take its queue and close its listener.
const ACCEPTORS_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// At shutdown, how long an HTTP/1 connection is kept for the client's next request, which is
/// answered with `Connection: close`. Closing a kept-alive connection at once races the
/// request its client may be sending right then (a reset, which it can send again only if the
/// request is idempotent); a busy client sends its next one within milliseconds.
const KEEP_ALIVE_AT_SHUTDOWN: Duration = Duration::from_millis(1000);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One config at work: what every request reads, swapped whole on reload.
pub(crate) struct Runtime {
    pub config: ProxyConfig,
    pub pools: Vec<Arc<PoolState>>,
    /// One per listener of `config`, in its order; a listener whose address stays across a
    /// reload keeps its counters.
    pub listeners: Vec<Arc<ListenerStats>>,
    pub access_log: Option<AccessLog>,
}

/// What a listener has seen (HAProxy's frontend counters: current and total sessions,
/// requests, responses by class, SSL handshake failures). Every answer counts, the proxy's
/// own (404, 403, 429, 503…) included, so a site's error rate shows here even when no
/// request reached a server.
#[derive(Default)]
pub(crate) struct ListenerStats {
    pub open: OpenConnections,
    /// Open connections per client address, kept only with `max_connections_per_client`.
    per_client: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
    /// Connections closed for `max_connections_per_client`.
    pub refused_per_client: AtomicU64,
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    pub responses: [AtomicU64; 5],
    pub tls_failures: AtomicU64,
}

impl ListenerStats {
    fn count_response(&self, status: StatusCode) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// The listeners' counters of a (re)loaded config: those of an address already served are
/// carried over.
fn listener_stats(config: &ProxyConfig, old: Option<&Runtime>) -> Vec<Arc<ListenerStats>> {
    config
        .listeners
        .iter()
        .map(|l| {
            let kept = old.and_then(|o| {
                let i = o.config.listeners.iter().position(|x| x.bind == l.bind)?;
                o.listeners.get(i).cloned()
            });
            kept.unwrap_or_default()
        })
        .collect()
}

/// The running proxy: the current [`Runtime`], and what a reload changes (sockets, health
/// checkers), behind a lock only reloads take.
pub(crate) struct Proxy {
    current: ArcSwap<Runtime>,
    control: tokio::sync::Mutex<Control>,
    stop_rx: watch::Receiver<bool>,
    pub(crate) ha: Option<Arc<redundancy::HaStatus>>,
    pub(crate) process: crate::process::ProcessInfo,
    /// Set once shutdown begins: HTTP/1 answers then end their connection.
    stopping: std::sync::atomic::AtomicBool,
}

struct Control {
    /// One accept loop per bound address; kept across reloads while the address stays.
    acceptors: HashMap<SocketAddr, JoinHandle<()>>,
    checkers: Vec<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    /// Cloned into every connection task; shutdown drops it and waits for the clones.
    alive_tx: Option<mpsc::Sender<()>>,
}

/// What a bound address serves.
#[derive(Clone, Copy)]
enum Serves {
    Site,
    Admin,
}

/// Binds every listener of `config`, then serves until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish. A listener that cannot bind is an error
/// naming its address, before anything is served. SIGHUP (and `POST /reload` on the admin
/// listener) reloads the config file in place: listeners that stay are not rebound, and
/// connections and in-flight requests carry on.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    run_launched(config, Launch::default(), shutdown).await
}

/// As [`run`], started as `launch` says: taking over from a running proxy, writing a PID file.
pub async fn run_launched(config: ProxyConfig, launch: Launch, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let predecessor = match launch.take_over {
        Some(pid) => {
            let found = Predecessor::find(pid);
            if found.is_none() {
                tracing::warn!(pid, "no process {pid} to take over from; starting alone");
            }
            found
        }
        None => None,
    };
    if predecessor.is_some() && config.ha.is_some() {
        return Err(io::Error::other(
            "take-over is for a proxy without [ha]: a load-balancer pair is upgraded one node at a time, \
             its failover being the hand-over (stop the BACKUP, upgrade it, start it, then the other)",
        ));
    }
    // Read while the old proxy alone listens on the admin address: ours will take its connections.
    let snapshot = match (&predecessor, config.admin) {
        (Some(_), Some(admin)) => {
            let fetched = tokio::task::spawn_blocking(move || takeover::fetch_snapshot(admin)).await;
            match fetched.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(snapshot) => Some(snapshot),
                Err(e) => {
                    tracing::warn!(%admin, "servers' state not carried over (drain, weights, health): {e}");
                    None
                }
            }
        }
        (Some(_), None) => {
            tracing::warn!(
                "without an admin listener the servers' runtime state (drain, weights, health) is not carried over"
            );
            None
        }
        _ => None,
    };
    let access_log = open_access_log(&config, None)?;
    // Checked before any listener opens: once ours are open beside a predecessor's, failing
    // would reset the connections already steered to them.
    if let Some(path) = &launch.pid_file {
        takeover::check_pid_file(path)?;
    }
    // Joined: the addresses the predecessor listens on. Any other is bound as by a proxy alone,
    // so an address another process holds still fails ("address in use").
    let wanted = addresses(&config);
    let joined: HashSet<SocketAddr> = match predecessor.as_ref().map(Predecessor::listening) {
        None => HashSet::new(),
        Some(Some(listening)) => listening,
        Some(None) => {
            tracing::warn!("cannot read which addresses the running proxy listens on; joining every listener");
            wanted.iter().map(|(address, _)| *address).collect()
        }
    };
    let mut bound = Vec::new();
    for address in wanted {
        let socket = if joined.contains(&address.0) { join(address.0)? } else { bind(address.0).await? };
        bound.push((address, socket));
    }
    let pools: Vec<Arc<PoolState>> = config.pools.iter().map(|p| Arc::new(PoolState::new(p.clone()))).collect();
    if let Some(snapshot) = &snapshot {
        let matched = takeover::carry_over(snapshot, &pools);
        tracing::info!(servers = matched, "servers' runtime state carried over from the running proxy");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let listeners = listener_stats(&config, None);
    let runtime = Runtime { config, pools, listeners, access_log };
    let flusher = runtime.access_log.clone().map(|log| tokio::spawn(log.flush_every(Duration::from_millis(500))));
    let control = Control { acceptors: HashMap::new(), checkers: Vec::new(), flusher, alive_tx: Some(alive_tx) };
    let ha_config = runtime.config.ha.clone();
    let ha_status = ha_config.as_ref().map(|_| Arc::new(redundancy::HaStatus::default()));
    let proxy = Arc::new(Proxy {
        current: ArcSwap::from_pointee(runtime),
        control: tokio::sync::Mutex::new(control),
        stop_rx: stop_rx.clone(),
        ha: ha_status.clone(),
        process: crate::process::ProcessInfo::default(),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    {
        let mut control = proxy.control.lock().await;
        for ((address, serves), socket) in bound {
            proxy.spawn_acceptor(&mut control, address, serves, socket, true);
        }
        let runtime = proxy.current.load();
        control.checkers = spawn_checkers(&runtime.pools, runtime.config.resolvers.as_ref());
    }
    tracing::info!(name = proxy.current.load().config.name, "proxy is serving");
    if let Some(old) = &predecessor {
        match old.retire() {
            Ok(()) => tracing::warn!(pid = old.pid(), "took over; the old process finishes its requests and exits"),
            Err(e) => tracing::error!(pid = old.pid(), "took over its listeners but could not tell it to stop: {e}"),
        }
    }
    if let Some(path) = &launch.pid_file {
        if let Err(e) = takeover::write_pid_file(path) {
            tracing::error!("cannot write the PID file {}: {e}", path.display());
        }
    }

    let reloads = tokio::spawn(reload_on_sighup(proxy.clone()));
    let redundancy = match (ha_config, ha_status) {
        (Some(config), Some(status)) => Some(tokio::spawn(redundancy::run(proxy.clone(), config, status, stop_rx))),
        _ => None,
    };
    shutdown.await;
    reloads.abort();
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    proxy.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    // A MASTER hands the VIP over before it drains.
    if let Some(task) = redundancy {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let flusher = {
        let mut control = proxy.control.lock().await;
        // Each accept loop takes its listener's queued connections and closes it on `stop`.
        for (_, mut acceptor) in control.acceptors.drain() {
            if tokio::time::timeout(ACCEPTORS_STOP_TIMEOUT, &mut acceptor).await.is_err() {
                acceptor.abort();
            }
        }
        for c in control.checkers.drain(..) {
            c.abort();
        }
        control.alive_tx = None;
        control.flusher.take()
    };
    // Every connection task holds a clone of `alive_tx`; recv() ends when the last one is gone.
    let drain = proxy.current.load().config.shutdown_timeout;
    if tokio::time::timeout(drain, alive_rx.recv()).await.is_err() {
        tracing::warn!("some connections were still busy after {} ms (shutdown_timeout_ms)", drain.as_millis());
    }
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    if let Some(log) = &proxy.current.load().access_log {
        log.flush();
    }
    if let Some(path) = &launch.pid_file {
        takeover::remove_pid_file(path);
    }
    Ok(())
}

/// Every address a config listens on at all times, with what it serves: the VIP's listeners
/// are left to the redundancy task, which binds them while MASTER.
fn addresses(config: &ProxyConfig) -> Vec<(SocketAddr, Serves)> {
    let site = config.listeners.iter().filter(|l| !on_vip(config, l.bind)).map(|l| (l.bind, Serves::Site));
    site.chain(config.admin.map(|a| (a, Serves::Admin))).collect()
}

fn on_vip(config: &ProxyConfig, address: SocketAddr) -> bool {
    config.ha.as_ref().is_some_and(|h| address.ip() == std::net::IpAddr::V4(h.vip))
}

/// Opens the configured access log, reusing `previous` when the path and format are the same.
fn open_access_log(config: &ProxyConfig, previous: Option<&Runtime>) -> io::Result<Option<AccessLog>> {
    let Some(c) = &config.access_log else { return Ok(None) };
    if let Some(old) = previous {
        let same =
            old.config.access_log.as_ref().is_some_and(|o| o.destination == c.destination && o.format == c.format);
        if same {
            return Ok(old.access_log.clone());
        }
    }
    AccessLog::open(&c.destination, c.format.clone()).map(Some)
}

/// The health checks of every pool, and the DNS watch of every server named by host name
/// when the config has `[resolvers]`.
fn spawn_checkers(pools: &[Arc<PoolState>], resolvers: Option<&crate::config::Resolvers>) -> Vec<JoinHandle<()>> {
    let mut checkers = Vec::new();
    for pool in pools {
        if let Some(r) = resolvers {
            checkers.extend(spawn_dns_watches(pool, r));
        }
        if let Some(agent) = &pool.config.agent {
            for server in &pool.servers {
                let watch = crate::agent::watch(pool.clone(), server.clone(), agent.clone());
                checkers.push(tokio::spawn(watch));
            }
        }
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
    checkers
}

/// One DNS watch per server written with a host name, and one per server template.
fn spawn_dns_watches(pool: &PoolState, resolvers: &crate::config::Resolvers) -> Vec<JoinHandle<()>> {
    let mut watches = Vec::new();
    let mut templates: Vec<(&str, &str, Vec<Arc<crate::upstream::ServerState>>)> = Vec::new();
    for server in &pool.servers {
        let Some(host) = &server.config.host else { continue };
        match &server.config.template {
            None => {
                let (name, server, host, r) =
                    (pool.config.name.clone(), server.clone(), host.clone(), resolvers.clone());
                watches.push(tokio::spawn(crate::resolvers::watch_server(name, server, host, r)));
            }
            Some(t) => match templates.iter_mut().find(|(name, ..)| name == t) {
                Some((.., slots)) => slots.push(server.clone()),
                None => templates.push((t, host, vec![server.clone()])),
            },
        }
    }
    for (_, host, slots) in templates {
        let (name, host, r) = (pool.config.name.clone(), host.to_string(), resolvers.clone());
        watches.push(tokio::spawn(crate::resolvers::watch_template(name, slots, host, r)));
    }
    watches
}

async fn reload_on_sighup(proxy: Arc<Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
    while hangups.recv().await.is_some() {
        let _ = proxy.reload().await;
    }
}

impl Proxy {
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Binds the VIP's listeners (MASTER).
    pub(crate) async fn take_vip(self: &Arc<Self>) -> io::Result<()> {
        let mut control = self.control.lock().await;
        let runtime = self.runtime();
        for l in runtime.config.listeners.iter().filter(|l| on_vip(&runtime.config, l.bind)) {
            if !control.acceptors.contains_key(&l.bind) {
                // Opened while the old MASTER still listens, in a planned hand-over: no
                // connection is refused in between.
                let socket = listen(l.bind)?;
                // Closed by `release_vip`, not by shutdown: a MASTER that stops keeps the VIP's
                // listeners until its peer holds the VIP.
                self.spawn_acceptor(&mut control, l.bind, Serves::Site, socket, false);
            }
        }
        tracing::warn!("holding the VIP");
        Ok(())
    }

    /// Closes the VIP's listeners (no longer MASTER); connections already accepted finish.
    pub(crate) async fn release_vip(&self) {
        let mut control = self.control.lock().await;
        let runtime = self.runtime();
        let vip: Vec<SocketAddr> = control.acceptors.keys().filter(|a| on_vip(&runtime.config, **a)).copied().collect();
        for address in vip {
            if let Some(task) = control.acceptors.remove(&address) {
                task.abort();
            }
        }
        tracing::warn!("released the VIP");
    }

    /// A client gone: the connections that named it to servers (`send_proxy`) can serve no
    /// one else, so they are closed now, as HAProxy closes a session's private connections,
    /// rather than left for the server's idle timeout.
    fn release_private_connections(&self, client: SocketAddr, listener: SocketAddr) {
        let runtime = self.runtime();
        for pool in runtime.pools.iter().filter(|p| p.config.send_proxy.is_some()) {
            for server in &pool.servers {
                server.drop_idle_of((client, listener));
            }
        }
    }

    /// Whether this proxy can do its job: every pool has a server up.
    pub(crate) fn can_serve(&self) -> bool {
        self.runtime().pools.iter().all(|p| p.servers.iter().any(|s| s.is_up()))
    }

    fn spawn_acceptor(
        self: &Arc<Self>,
        control: &mut Control,
        address: SocketAddr,
        serves: Serves,
        socket: TcpListener,
        closes_on_stop: bool,
    ) {
        let Some(alive_tx) = control.alive_tx.clone() else { return };
        let task = tokio::spawn(accept_loop(
            socket,
            address,
            serves,
            self.clone(),
            self.stop_rx.clone(),
            alive_tx,
            closes_on_stop,
        ));
        control.acceptors.insert(address, task);
    }

    /// Reads the config file again and swaps it in. On any error the running config stays
    /// and the error is returned (and logged) whole.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let mut control = self.control.lock().await;
        let old = self.current.load_full();
        let Some(path) = old.config.source.clone() else {
            return Err("this proxy was not started from a config file; nothing to reload".into());
        };
        let result = async {
            // Off the event loop: resolving servers' host names may wait on DNS.
            let file = path.clone();
            let load = tokio::task::spawn_blocking(move || ProxyConfig::load(&file));
            let config = load.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            let access_log = open_access_log(&config, Some(&old)).map_err(|e| e.to_string())?;
            // Bind what is new before anything changes, so a busy address fails the reload whole.
            let mut fresh = Vec::new();
            for (address, serves) in addresses(&config) {
                if !control.acceptors.contains_key(&address) {
                    fresh.push((address, serves, bind(address).await.map_err(|e| e.to_string())?));
                }
            }
            let pools = config
                .pools
                .iter()
                .map(|p| {
                    let previous = old.pools.iter().find(|o| o.config.name == p.name);
                    Arc::new(PoolState::carried_over(p.clone(), previous.map(|o| o.as_ref())))
                })
                .collect();
            let listeners = listener_stats(&config, Some(&old));
            Ok::<_, String>((Runtime { config, pools, listeners, access_log }, fresh))
        }
        .await;
        let (runtime, fresh) = match result {
            Ok(ok) => ok,
            Err(e) => {
                tracing::error!("reload failed; the running config stays:\n{e}");
                self.process.record_reload(false);
                return Err(e);
            }
        };
        let wanted: Vec<SocketAddr> = addresses(&runtime.config).into_iter().map(|(a, _)| a).collect();
        let summary = format!(
            "reloaded {}: {} listeners, {} pools",
            path.display(),
            runtime.config.listeners.len(),
            runtime.pools.len()
        );
        let new_log = runtime.access_log.clone();
        let log_changed = !matches!((&old.access_log, &new_log), (Some(a), Some(b)) if a.same_sink(b));
        self.current.store(Arc::new(runtime));

        let vip_held = |a: &SocketAddr| on_vip(&self.current.load().config, *a);
        let gone: Vec<SocketAddr> =
            control.acceptors.keys().filter(|a| !wanted.contains(a) && !vip_held(a)).copied().collect();
        for address in gone {
            if let Some(task) = control.acceptors.remove(&address) {
                task.abort();
                tracing::info!(%address, "stopped listening (no longer in the config)");
            }
        }
        for (address, serves, socket) in fresh {
            tracing::info!(%address, "listening (new in the config)");
            self.spawn_acceptor(&mut control, address, serves, socket, true);
        }
        for c in control.checkers.drain(..) {
            c.abort();
        }
        let runtime = self.current.load();
        control.checkers = spawn_checkers(&runtime.pools, runtime.config.resolvers.as_ref());
        if log_changed {
            if let Some(f) = control.flusher.take() {
                f.abort();
            }
            if let Some(log) = &old.access_log {
                log.flush();
            }
            control.flusher = new_log.map(|log| tokio::spawn(log.flush_every(Duration::from_millis(500))));
        }
        tracing::info!("{summary}");
        self.process.record_reload(true);
        Ok(summary)
    }
}

/// A listener on an address no other socket listens on: refused as a plain bind is ("address
/// in use") even when the one there allows sharing, which only a successor may join.
async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    refuse_if_listened_on(address)?;
    listen(address)
}

/// A listener beside a predecessor's on the same address (a take-over): new connections come
/// here from now on.
fn join(address: SocketAddr) -> io::Result<TcpListener> {
    listen(address).map_err(|e| {
        io::Error::new(e.kind(), format!("{e}; a take-over joins only listeners that a webstack proxy opened"))
    })
}

/// Binding a probe fails while a socket listens on `address`, even one opened with
/// SO_REUSEPORT (the probe does not ask to share).
fn refuse_if_listened_on(address: SocketAddr) -> io::Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    let probe = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&address.into()).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            "; another process listens there (a running webstack proxy is replaced with `--take-over PID`)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("cannot listen on {address}: {e}{hint}"))
    })
}

/// A listening socket, open to a successor (SO_REUSEPORT) and taking every new connection
/// from a predecessor it joins. Not HAProxy's tcp-smart-accept (TCP_QUICKACK off on the
/// listener, which accepted sockets inherit): measured here it no longer helped new TLS
/// connections once the session tickets ride with the first answer, and it raised the p99 of
/// keep-alive proxying by about a quarter (7 of 8 interleaved A/B pairs; see bench/RESULTS.md).
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into()).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?;
    socket.listen(1024)?;
    steer_new_connections_here(&socket);
    TcpListener::from_std(socket.into())
}

/// Makes the newest listener of an SO_REUSEPORT group take every new connection.
///
/// During a planned hand-over (a new MASTER of the VIP, a process taking over) the new
/// listener opens while the old one still listens, and the kernel spreads new connections over
/// both; when the old one closes its listener, the
/// connections waiting in its accept queue are reset (a failed request now and then). This
/// classic BPF program picks the group's second socket — the one bound last, since the kernel
/// appends sockets to the group — so the old listener gets nothing new and has nothing queued
/// when it closes. Alone in the group, the index is out of range and the kernel falls back
/// to its usual choice. A kernel that refuses it only leaves the old behaviour.
fn steer_new_connections_here(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    // BPF_RET | BPF_K: return 1, the index of the socket to use.
    let mut program = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 1 }];
    let fprog = libc::sock_fprog { len: 1, filter: program.as_mut_ptr() };
    // SAFETY: a valid socket, and a program that outlives the call (the kernel copies it).
    let attached = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if attached != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_ATTACH_REUSEPORT_CBPF refused");
    }
}

/// A listener's client connections now, for its `max_connections`: while at the limit it
/// accepts nothing, and the kernel's backlog holds new connections (HAProxy's frontend maxconn).
#[derive(Default)]
pub(crate) struct OpenConnections {
    pub count: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

impl OpenConnections {
    fn enter(stats: &Arc<ListenerStats>) -> OpenConnection {
        stats.open.count.fetch_add(1, Ordering::AcqRel);
        OpenConnection(stats.clone())
    }

    async fn wait_below(&self, limit: usize, address: SocketAddr) {
        if self.count.load(Ordering::Acquire) < limit {
            return;
        }
        tracing::warn!(%address, limit, "listener at max_connections; new connections wait in the backlog");
        while self.count.load(Ordering::Acquire) >= limit {
            // Registered before the check below, so a close in between is not missed.
            let closed = self.closed.notified();
            if self.count.load(Ordering::Acquire) < limit {
                break;
            }
            closed.await;
        }
    }
}

/// One connection of a client address counted while this lives.
struct ClientConnection(Arc<ListenerStats>, std::net::IpAddr);

impl ClientConnection {
    /// Counts a connection of `client`; `None` when it already has `max` open.
    fn enter(stats: &Arc<ListenerStats>, client: std::net::IpAddr, max: u32) -> Option<ClientConnection> {
        let mut counts = stats.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientConnection(stats.clone(), client))
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let mut counts = self.0.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// One client connection counted while this lives.
struct OpenConnection(Arc<ListenerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.count.fetch_sub(1, Ordering::AcqRel);
        self.0.open.closed.notify_one();
    }
}

async fn accept_loop(
    socket: TcpListener,
    address: SocketAddr,
    serves: Serves,
    proxy: Arc<Proxy>,
    stop_rx: watch::Receiver<bool>,
    alive_tx: mpsc::Sender<()>,
    closes_on_stop: bool,
) {
    // The runtime's counters for this address (kept across reloads), or the admin's own.
    let stats = match serves {
        Serves::Site => {
            let runtime = proxy.runtime();
            let i = runtime.config.listeners.iter().position(|l| l.bind == address);
            i.and_then(|i| runtime.listeners.get(i).cloned()).unwrap_or_default()
        }
        Serves::Admin => Arc::default(),
    };
    // Read once per connection: a reload applies to the connections that follow it (the limit
    // from the next one on).
    let settings_now = || match serves {
        Serves::Site => proxy.runtime().config.listeners.iter().find(|l| l.bind == address).map(|l| {
            let tls = l.tls.as_ref().map(|t| t.acceptor.clone());
            let limits = ClientLimits {
                max_header_bytes: l.max_header_bytes,
                max_headers: l.max_headers,
                client_timeout: l.client_timeout,
                accept_proxy: l.accept_proxy,
                per_client: l.max_connections_per_client,
            };
            (limits, tls, l.max_connections)
        }),
        Serves::Admin => None,
    };
    let mut limit = settings_now().and_then(|(_, _, limit)| limit);
    let mut socket = Some(socket);
    let mut stop = stop_rx.clone();
    // At shutdown: the connections that were waiting in the listener's queue.
    let mut queued: Option<std::vec::IntoIter<(tokio::net::TcpStream, SocketAddr)>> = None;
    loop {
        let (mut stream, mut client) = match (queued.as_mut(), socket.as_ref()) {
            (Some(rest), _) => match rest.next() {
                Some(connection) => connection,
                None => return,
            },
            (None, None) => return,
            (None, Some(listener)) => {
                let accepted = tokio::select! {
                    accepted = accept_below(listener, limit, &stats, address) => accepted,
                    _ = stop.wait_for(|stop| *stop), if closes_on_stop => {
                        queued = socket.take().map(|l| take_queued(l, address).into_iter());
                        continue;
                    }
                };
                match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let settings = settings_now();
        limit = settings.as_ref().and_then(|(_, _, limit)| *limit);
        let proxy = proxy.clone();
        let stop_rx = stop_rx.clone();
        let alive = alive_tx.clone();
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let slot = OpenConnections::enter(&stats);
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            let (limits, tls, _) = settings.unwrap_or((ClientLimits::ADMIN, None, None));
            if limits.accept_proxy {
                match crate::proxy_protocol::read(&mut stream, limits.client_timeout.min(PROXY_HEADER_TIMEOUT)).await {
                    Ok(Some(source)) => client = source,
                    Ok(None) => {}
                    Err(e) => return tracing::info!(%client, error = %e, "connection closed"),
                }
            }
            // Counted once the client is known (after a PROXY header, the one it names).
            let _client_slot = match limits.per_client {
                None => None,
                Some(max) => match ClientConnection::enter(&_slot.0, client.ip(), max) {
                    Some(counted) => Some(counted),
                    None => {
                        _slot.0.refused_per_client.fetch_add(1, Ordering::Relaxed);
                        return tracing::debug!(%client, max, "connection closed: max_connections_per_client");
                    }
                },
            };
            let after = proxy.clone();
            // On a listener that verifies clients, each request carries what its client's
            // certificate says (the `$ssl_client_*` variables).
            let service = move |identity: Option<Arc<ClientIdentity>>| {
                service_fn(move |mut req: Request<Incoming>| {
                    if let Some(identity) = &identity {
                        req.extensions_mut().insert(identity.clone());
                    }
                    let proxy = proxy.clone();
                    async move {
                        let http1 = req.version() < http::Version::HTTP_2;
                        let mut response = match serves {
                            // Boxed: the admin answer's future is large and rare; unboxed it would
                            // make every proxied request's future (moved per request) as large.
                            Serves::Admin => Box::pin(admin::handle(&proxy, req, client.ip())).await,
                            Serves::Site => route(&proxy.runtime(), address, client, req).await,
                        };
                        if http1 && proxy.stopping.load(Ordering::Relaxed) {
                            close_after(&mut response);
                        }
                        Ok::<_, Infallible>(response)
                    }
                })
            };
            // TLS listeners: the handshake first, then ALPN says h2 or HTTP/1.1.
            if let Some(tls) = tls {
                let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    failed => {
                        _slot.0.tls_failures.fetch_add(1, Ordering::Relaxed);
                        if let Ok(Err(e)) = failed {
                            tracing::debug!(error = %e, %client, "TLS handshake failed");
                        }
                        return;
                    }
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let identity = tls.verifies_clients().then(|| Arc::new(client_identity(stream.get_ref().1)));
                let stream = WriteTimeout::new(stream, limits.client_timeout);
                serve(TokioIo::new(stream), h2, service(identity), stop_rx, client, limits).await;
            } else {
                // HTTP/2 when the client opens with its preface (h2c, prior knowledge), else
                // HTTP/1.1. Deciding here keeps HTTP/1.1 connections on hyper's plain path,
                // which costs less per request than a connection that could still switch.
                let h2 = starts_with_h2_preface(&stream).await;
                let stream = WriteTimeout::new(stream, limits.client_timeout);
                serve(TokioIo::new(stream), h2, service(None), stop_rx, client, limits).await;
            }
            if let Serves::Site = serves {
                after.release_private_connections(client, address);
            }
        });
    }
}

/// The next connection, once the listener is below its `max_connections`.
async fn accept_below(
    listener: &TcpListener,
    limit: Option<usize>,
    stats: &ListenerStats,
    address: SocketAddr,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    if let Some(limit) = limit {
        stats.open.wait_below(limit, address).await;
    }
    listener.accept().await
}

/// The most connections taken from a listener's queue at shutdown (its backlog).
const QUEUE_AT_SHUTDOWN_MAX: usize = 1024;

/// The connections waiting in a listener's queue at shutdown, taken (with real accept calls,
/// not the reactor's view of them) so that they are served rather than reset when the listener
/// closes — which it does when this returns. With a successor (a take-over) the queue holds
/// only what came before it opened its listener; new connections go to it.
fn take_queued(listener: TcpListener, address: SocketAddr) -> Vec<(tokio::net::TcpStream, SocketAddr)> {
    let Ok(listener) = listener.into_std() else { return Vec::new() };
    let mut queued = Vec::new();
    while queued.len() < QUEUE_AT_SHUTDOWN_MAX {
        let Ok((stream, client)) = listener.accept() else { break };
        let stream = stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            queued.push((stream, client));
        }
    }
    if !queued.is_empty() {
        tracing::info!(%address, connections = queued.len(), "serving the connections queued at shutdown");
    }
    queued
}

/// What the client's certificate says; rustls verified it in the handshake.
fn client_identity(connection: &rustls::ServerConnection) -> ClientIdentity {
    match connection.peer_certificates().and_then(|chain| chain.first()) {
        // A verified certificate this reader cannot describe is still verified.
        Some(leaf) => ClientIdentity::Verified(crate::client_cert::describe(leaf).unwrap_or_default()),
        None => ClientIdentity::None,
    }
}

/// The answer for a client the route turns away: 403 outside its `allow`/`deny`, else 429
/// over its rate (with when it may come back); `None` lets the request on. A refused
/// client's requests do not count against its rate.
fn refusal(
    route: &crate::config::Route,
    client: std::net::IpAddr,
    headers: &http::HeaderMap,
) -> Option<Response<ProxyBody>> {
    if route.access.as_ref().is_some_and(|a| !a.permits(client)) {
        return Some(error_response(StatusCode::FORBIDDEN));
    }
    let wait = route.rate_limit.as_ref()?.check(client, headers).err()?;
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds.max(1)));
    Some(response)
}

/// How long a connection may take to send its PROXY protocol header (HAProxy bounds it by
/// `timeout client`): the balancer in front writes it at once.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client connection is held to, from its listener as it was when it was accepted.
#[derive(Debug, Clone, Copy)]
struct ClientLimits {
    max_header_bytes: usize,
    max_headers: usize,
    /// hyper's header read timeout: a request's headers, and the wait for the next request
    /// on an idle keep-alive connection.
    client_timeout: Duration,
    /// Each connection opens with a PROXY protocol header naming the client.
    accept_proxy: bool,
    /// At most this many connections from one client address.
    per_client: Option<u32>,
}

impl ClientLimits {
    /// The admin listener's.
    const ADMIN: ClientLimits = ClientLimits {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        client_timeout: Duration::from_secs(30),
        accept_proxy: false,
        per_client: None,
    };
}

/// Serves one connection, HTTP/2 or HTTP/1.1, until it ends or shutdown asks it to finish.
async fn serve<I, S>(
    io: I,
    h2: bool,
    service: S,
    stop_rx: watch::Receiver<bool>,
    client: SocketAddr,
    limits: ClientLimits,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    if h2 {
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).max_concurrent_streams(256).max_header_list_size(limits.max_header_bytes as u32);
        let requests = Arc::new(AtomicU64::new(0));
        let service = Counting { inner: service, requests: requests.clone() };
        let idle = Some(IdleClose { requests, after: limits.client_timeout });
        // Nothing to wait for at shutdown: HTTP/2's GOAWAY tells the client which streams
        // were not processed, and it sends them again.
        drive(http2.serve_connection(io, service), stop_rx, client, Watch { idle, keep_at_shutdown: false }).await;
    } else {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .keep_alive(true)
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.client_timeout)
            .max_buf_size(limits.max_header_bytes);
        // Setting max_headers makes hyper allocate the header array per request; at its
        // default (100) it stays on the stack.
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
        let watch = Watch { idle: None, keep_at_shutdown: true };
        drive(http1.serve_connection(io, service).with_upgrades(), stop_rx, client, watch).await;
    }
}

/// Counts the requests a connection's service is called for, and boxes each request's future:
/// hyper spawns one task per HTTP/2 stream and moves the future several times on the way in
/// (2% of an HTTP/2 request's instructions when moved whole, against one allocation boxed).
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    requests: Arc<AtomicU64>,
}

impl<S: hyper::service::Service<Request<Incoming>>> hyper::service::Service<Request<Incoming>> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Box::pin(self.inner.call(req))
    }
}

/// What [`drive`] watches on a connection besides shutdown.
struct Watch {
    idle: Option<IdleClose>,
    /// At shutdown, keeps the connection for [`KEEP_ALIVE_AT_SHUTDOWN`] before closing it.
    keep_at_shutdown: bool,
}

/// Closes an HTTP/2 connection (GOAWAY; streams in flight finish) once a whole `after` went by
/// without a new request: browsers keep HTTP/2 connections open, and the proxy would otherwise
/// hold every one for ever (nginx's http2_idle_timeout, HAProxy's timeout http-keep-alive).
/// HTTP/1.1's idle connections end on hyper's header read timeout instead.
struct IdleClose {
    requests: Arc<AtomicU64>,
    after: Duration,
}

/// Serves a connection until it ends, until shutdown asks it to finish what it has, or, with
/// `watch.idle`, until it went quiet.
async fn drive<C>(conn: C, mut stop_rx: watch::Receiver<bool>, client: SocketAddr, watch: Watch)
where
    C: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    tokio::pin!(conn);
    let idle = watch.idle.as_ref();
    let mut ticker = idle.map(|i| tokio::time::interval_at(tokio::time::Instant::now() + i.after, i.after));
    let mut seen = 0;
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(ticker) => {
                    ticker.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The connection first: a request it can read now is read before a stop is seen.
            biased;
            result = conn.as_mut() => return log_end(result, client),
            _ = stop_rx.wait_for(|stop| *stop) => break,
            _ = tick => {
                let now = idle.map_or(0, |i| i.requests.load(Ordering::Relaxed));
                if now == seen {
                    break;
                }
                seen = now;
            }
        }
    }
    // Shutting down: the answer to the client's next request says `Connection: close` (see
    // `close_after`) and the connection ends after it; one that sends nothing is closed when
    // the time is up.
    if *stop_rx.borrow() && watch.keep_at_shutdown {
        tokio::select! {
            biased;
            result = conn.as_mut() => return log_end(result, client),
            _ = tokio::time::sleep(KEEP_ALIVE_AT_SHUTDOWN) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Marks an HTTP/1 answer given while shutting down as its connection's last, so the client
/// sends its next request on a new connection (to the successor, after a take-over) rather
/// than into one about to close. hyper closes the connection after it.
fn close_after(response: &mut Response<ProxyBody>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

fn log_end(result: hyper::Result<()>, client: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(error = %e, %client, "client connection ended with an error");
    }
}

/// hyper's HTTP/1 and HTTP/2 connections share no trait for it.
trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// Waits for the first bytes of a connection and tells whether they open HTTP/2.
async fn starts_with_h2_preface(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 4];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
        match peeked {
            Ok(Ok(n)) if n >= 4 || n == 0 => return n >= 4 && &first == b"PRI ",
            // Fewer than four bytes so far: only "PRI " can still be HTTP/2.
            Ok(Ok(n)) if b"PRI "[..n] != first[..n] => return false,
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => return false,
        }
    }
}

/// The host a request is for (Host, or the authority of an HTTP/2 request), as routes name
/// hosts.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    match req.headers().get(http::header::HOST) {
        Some(value) => crate::config::host_name(value.to_str().ok()?),
        None => crate::config::host_name(req.uri().host()?),
    }
}

/// Where a request goes once the synchronous part of routing is done.
enum Target<'a, F> {
    /// Answered already: no route, refused, a redirect or a fixed answer.
    Answer(Response<ProxyBody>),
    /// On its way to a pool's server (the forwarding future, boxed: it is kilobytes).
    Forward(std::pin::Pin<Box<F>>, &'a PoolState),
    /// A file from a static route.
    Static(&'a crate::config::StaticRoute, &'a str, Request<Incoming>),
    /// A password to check (off the event loop) before routing goes on.
    Verify(
        &'a Arc<crate::basic_auth::BasicAuth>,
        crate::basic_auth::Pending,
        &'a Listener,
        &'a Route,
        Request<Incoming>,
    ),
}

/// What forwarding ends with: the answer, and the index of the server that gave it.
type Forwarded = (Response<ProxyBody>, Option<usize>);

/// What the log line needs, kept before the request moves on (clones of shared buffers).
type Logged =
    (http::Method, http::Uri, http::Version, Option<HeaderValue>, Option<HeaderValue>, Option<Arc<ClientIdentity>>);

/// Answers one request of a site listener. Everything before the wait (the route, the
/// access rules, the headers) is decided here, synchronously, and the future returned holds
/// only what finishing the answer needs: a request's future is moved whole into hyper's slot
/// (HTTP/1.1) or a task of its own (each HTTP/2 stream), so every byte of it is copied per
/// request (and under glibc's malloc a task over its per-thread cache size, 1,032 bytes,
/// costs a slow allocation). As one `async fn` it was 1,320 bytes; this way it is under half
/// of that.
fn route<'a>(
    shared: &'a Runtime,
    address: SocketAddr,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    let started = Instant::now();
    crate::preemption::count_request();
    let index = shared.config.listeners.iter().position(|l| l.bind == address);
    let listener = index.map(|i| &shared.config.listeners[i]);
    let stats = index.and_then(|i| shared.listeners.get(i));
    // A listener that only redirects to HTTPS routes nothing: no id, log fields or encoding.
    let routing = listener.filter(|l| l.redirect_https_port.is_none());
    let request_id = routing.map(|_| ensure_request_id(req.headers_mut()));
    let logged: Option<Box<Logged>> = shared.access_log.as_ref().and(routing).map(|_| {
        let h = req.headers();
        Box::new((
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            h.get(REFERER).cloned(),
            h.get(USER_AGENT).cloned(),
            req.extensions().get::<Arc<ClientIdentity>>().cloned(),
        ))
    });
    let compress = match routing.is_some_and(|l| l.compress) {
        true => compression::negotiate(req.headers()).map(|e| (e, req.method().clone())),
        false => None,
    };
    let (target, chosen) = match listener {
        // A connection opened before a reload removed its listener.
        None => (Target::Answer(error_response(StatusCode::SERVICE_UNAVAILABLE)), None),
        Some(listener) => match listener.redirect_https_port {
            Some(port) => (Target::Answer(redirect_to_https(&req, port)), None),
            None => match admit(listener, client, req) {
                (Admission::Answer(response), route) => (Target::Answer(response), route),
                (Admission::Verify(auth, pending, route, req), chosen) => {
                    (Target::Verify(auth, pending, listener, route, req), chosen)
                }
                (Admission::Pass(route, req), chosen) => (target_of(shared, listener, route, client, req), chosen),
            },
        },
    };
    async move {
        let mut target = target;
        let (mut response, pool, server) = loop {
            match target {
                Target::Answer(response) => break (response, None, None),
                Target::Forward(forwarding, pool) => {
                    let (response, server) = forwarding.await;
                    break (response, Some(pool), server.map(|s| &pool.servers[s]));
                }
                Target::Static(files, prefix, ref req) => {
                    break (static_files::serve(files, prefix, req).await, None, None)
                }
                Target::Verify(auth, pending, listener, route, req) => {
                    // Boxed: rare, and it would grow every request's future.
                    if !Box::pin(auth.verify(pending)).await {
                        break (auth.challenge(), None, None);
                    }
                    // Let through: on to what the route answers with (its rate and
                    // access rules were applied already).
                    target = target_of(shared, listener, route, client, req);
                }
            }
        };
        // The redirect to HTTPS is the listener's whole job: nothing else applies to it.
        if let (Some(listener), Some(request_id)) = (routing, &request_id) {
            crate::forward::apply_error_page(&shared.config.error_pages, &mut response);
            response = match compress {
                Some((encoding, method)) => {
                    compression::maybe_compress(&method, Some(encoding), listener.compress_min_bytes, response)
                }
                None => response,
            };
            if let Some(hsts) = listener.tls.as_ref().and_then(|t| t.hsts.clone()) {
                response.headers_mut().insert(STRICT_TRANSPORT_SECURITY, hsts);
            }
            // Last, so that what the route sets is what the client gets.
            if let Some(rules) = chosen.and_then(|r| r.headers.as_deref()) {
                rules.apply_to_response(response.headers_mut());
            }
            if let (Some(log), Some(logged)) = (&shared.access_log, logged) {
                let (method, uri, version, referer, user_agent, identity) = *logged;
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
                    client_certificate: identity.as_deref(),
                });
            }
        }
        if let Some(stats) = stats {
            stats.count_response(response.status());
        }
        response
    }
}

/// What the routing of a request decided before its target is looked at.
enum Admission<'a> {
    /// Answered already: no route, refused, or asked for credentials.
    Answer(Response<ProxyBody>),
    /// Credentials to check before the route's target.
    Verify(&'a Arc<crate::basic_auth::BasicAuth>, crate::basic_auth::Pending, &'a Route, Request<Incoming>),
    /// On to the route's target.
    Pass(&'a Route, Request<Incoming>),
}

/// The synchronous part of routing on a listener that routes: the route, and whether it
/// turns the client away or asks for credentials. The route comes back with a refusal too,
/// so its response header rules apply to that answer as to any other.
fn admit<'a>(listener: &'a Listener, client: SocketAddr, req: Request<Incoming>) -> (Admission<'a>, Option<&'a Route>) {
    let host = match listener.virtual_hosts {
        true => request_host(&req),
        false => None,
    };
    let Some(route) = listener.route_for(host.as_deref(), req.uri().path(), req.method(), req.headers()) else {
        return (Admission::Answer(error_response(StatusCode::NOT_FOUND)), None);
    };
    if let Some(refused) = refusal(route, client.ip(), req.headers()) {
        return (Admission::Answer(refused), Some(route));
    }
    if let Some(auth) = &route.basic_auth {
        match auth.check(req.headers()) {
            AuthCheck::Admitted => {}
            AuthCheck::Refused => return (Admission::Answer(auth.challenge()), Some(route)),
            AuthCheck::Verify(pending) => return (Admission::Verify(auth, pending, route, req), Some(route)),
        }
    }
    (Admission::Pass(route, req), Some(route))
}

/// What answers a request its route let through.
fn target_of<'a>(
    shared: &'a Runtime,
    listener: &'a Listener,
    route: &'a Route,
    client: SocketAddr,
    mut req: Request<Incoming>,
) -> Target<'a, impl Future<Output = Forwarded> + Send + 'a> {
    match &route.target {
        RouteTarget::Pool(p) => {
            let pool = &shared.pools[*p];
            if let Some(rules) = &route.headers {
                rules.apply_to_request(req.headers_mut());
                if !rules.request_templates.is_empty() {
                    let values = rules.templated_values(|name| request_variable(name, &req, client, listener));
                    for (name, value) in values {
                        req.headers_mut().insert(name, value);
                    }
                }
            }
            if let Some(to) = &route.replace_prefix {
                if crate::forward::replace_path_prefix(&mut req, route.path.len(), to).is_err() {
                    return Target::Answer(error_response(StatusCode::BAD_REQUEST));
                }
            }
            Target::Forward(Box::pin(forward(pool, req, client, listener)), pool)
        }
        RouteTarget::Static(files) => Target::Static(files, &route.path, req),
        RouteTarget::Redirect { to, status } => Target::Answer(redirect(to, *status, &req, client, listener)),
        RouteTarget::Respond { status, body, content_type } => {
            let mut response = Response::new(ProxyBody::full(body.clone()));
            *response.status_mut() = *status;
            response.headers_mut().insert(http::header::CONTENT_TYPE, content_type.clone());
            Target::Answer(response)
        }
    }
}

/// A route's redirect, its `$variables` taken from the request; 400 for a request whose host
/// cannot go into a Location.
fn redirect<B>(
    to: &str,
    status: StatusCode,
    req: &Request<B>,
    client: SocketAddr,
    listener: &Listener,
) -> Response<ProxyBody> {
    let location = match to.contains('$') {
        false => HeaderValue::from_str(to),
        true => match crate::config::expand_redirect(to, |name| request_variable(name, req, client, listener)) {
            Ok(location) => HeaderValue::from_str(&location),
            Err(_) => return error_response(StatusCode::BAD_REQUEST),
        },
    };
    let Ok(location) = location else { return error_response(StatusCode::BAD_REQUEST) };
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::LOCATION, location);
    response
}

/// A variable of a redirect or a request header rule, from the request (nginx's names).
fn request_variable<'r, B>(
    name: &str,
    req: &'r Request<B>,
    client: SocketAddr,
    listener: &Listener,
) -> Option<std::borrow::Cow<'r, str>> {
    let uri = req.uri();
    Some(match name {
        "request_uri" => uri.path_and_query().map_or("/", |p| p.as_str()).into(),
        "uri" => uri.path().into(),
        "args" => uri.query().unwrap_or("").into(),
        "scheme" => if listener.tls.is_some() { "https" } else { "http" }.into(),
        "remote_addr" => client.ip().to_string().into(),
        "remote_port" => client.port().to_string().into(),
        "server_port" => listener.bind.port().to_string().into(),
        "ssl_client_verify" => req.extensions().get::<Arc<ClientIdentity>>().map_or("NONE", |i| i.verify()).into(),
        "ssl_client_s_dn" => client_certificate(req).map_or("", |c| &c.subject).into(),
        "ssl_client_i_dn" => client_certificate(req).map_or("", |c| &c.issuer).into(),
        "ssl_client_serial" => client_certificate(req).map_or("", |c| &c.serial).into(),
        "ssl_client_fingerprint" => client_certificate(req).map_or("", |c| &c.fingerprint).into(),
        _ => safe_host(req)?.into(),
    })
}

/// The verified certificate of the request's client, on a listener that asks for one.
fn client_certificate<B>(req: &Request<B>) -> Option<&crate::client_cert::ClientCertificate> {
    req.extensions().get::<Arc<ClientIdentity>>()?.certificate()
}

/// The request's host without its port, if it can go into a Location as it is.
fn safe_host<B>(req: &Request<B>) -> Option<&str> {
    let host = match req.uri().host() {
        Some(h) => Some(h),
        None => req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(host_without_port),
    };
    host.filter(|h| !h.is_empty() && !h.contains(['/', '@', ' ', '\\']))
}

/// HTTP to HTTPS: 301 for GET and HEAD, 308 for the rest (so a POST stays a POST).
fn redirect_to_https<B>(req: &Request<B>, port: u16) -> Response<ProxyBody> {
    let Some(host) = safe_host(req) else {
        return error_response(StatusCode::BAD_REQUEST);
    };
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = match port {
        443 => format!("https://{host}{path}"),
        _ => format!("https://{host}:{port}{path}"),
    };
    let status = match *req.method() {
        http::Method::GET | http::Method::HEAD => StatusCode::MOVED_PERMANENTLY,
        _ => StatusCode::PERMANENT_REDIRECT,
    };
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = status;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    response
}

/// `www.foobar.com:8080` → `www.foobar.com`; `[::1]:8080` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|end| &host[..=end]).unwrap_or(host);
    }
    host.split_once(':').map(|(h, _)| h).unwrap_or(host)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_bound_last_on_a_vip_takes_every_new_connection() {
        let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let old = listen(address).unwrap();
        let address = old.local_addr().unwrap();
        let new = listen(address).unwrap();
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        for _ in 0..32 {
            let accepted = tokio::time::timeout(Duration::from_secs(2), new.accept()).await;
            assert!(matches!(accepted, Ok(Ok(_))), "the new listener missed a connection");
        }
        let stray = tokio::time::timeout(Duration::from_millis(50), old.accept()).await;
        assert!(stray.is_err(), "the old listener got a connection: it would be reset when it closes");
        // Once the old one is gone, the new one still takes everything (the index falls back).
        drop(old);
        let _late = tokio::net::TcpStream::connect(address).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(2), new.accept()).await.is_ok());
    }
}
