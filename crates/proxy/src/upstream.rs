//! Upstream servers at run time: health state, counters, and a pool of idle keep-alive
//! connections per server.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::balancer::{self, Balancer};
use crate::client::Connection;
use crate::config;

/// Idle connections kept per server; more are closed when handed back.
const MAX_IDLE_PER_SERVER: usize = 256;

/// A pool of servers as the request path sees it.
#[derive(Debug)]
pub struct PoolState {
    pub config: config::Pool,
    pub servers: Vec<Arc<ServerState>>,
    /// Rebuilt when a weight changes; requests read it without a lock.
    pub balancer: ArcSwap<Balancer>,
    pub next: AtomicUsize,
    pub no_server_available: AtomicU64,
    /// Request body bytes sent upstream through this pool.
    pub request_bytes: Arc<AtomicU64>,
    /// Retry budget in tenths of a retry: each request adds two, each retry of a request that
    /// was already sent takes ten; so such retries stay under 20% of requests.
    retry_tenths: AtomicU64,
    /// Signalled when a server with a `maxconn` finishes a request: the queue's turn.
    pub freed: Arc<Notify>,
    /// Requests waiting for a server under its `maxconn` (HAProxy's queue), now.
    pub queued: AtomicU64,
    /// Requests answered 503 after waiting the whole queue timeout.
    pub queue_timeouts: AtomicU64,
    /// Answers kept for the pool (`[pools.P.cache]`).
    pub cache: Option<Arc<crate::cache::Cache>>,
}

const RETRY_TENTHS_PER_REQUEST: u64 = 2;
const RETRY_TENTHS_PER_RETRY: u64 = 10;
/// Up to ten retries saved up for a burst of failures.
const RETRY_TENTHS_MAX: u64 = 100;

impl PoolState {
    pub fn new(config: config::Pool) -> Self {
        let freed = Arc::new(Notify::new());
        let servers = config.servers.iter().map(|s| Arc::new(ServerState::new(s.clone(), freed.clone()))).collect();
        let cache = config.cache.clone().map(|c| Arc::new(crate::cache::Cache::new(c)));
        Self::with_servers(config, servers, freed, cache)
    }

    fn with_servers(
        config: config::Pool,
        servers: Vec<Arc<ServerState>>,
        freed: Arc<Notify>,
        cache: Option<Arc<crate::cache::Cache>>,
    ) -> Self {
        let balancer = ArcSwap::from_pointee(build_balancer(&config, &servers));
        PoolState {
            cache,
            config,
            servers,
            balancer,
            next: AtomicUsize::new(0),
            no_server_available: AtomicU64::new(0),
            request_bytes: Arc::new(AtomicU64::new(0)),
            retry_tenths: AtomicU64::new(RETRY_TENTHS_MAX),
            freed,
            queued: AtomicU64::new(0),
            queue_timeouts: AtomicU64::new(0),
        }
    }

    /// Whether a server that could take the request (not `tried`) is only at its `maxconn`:
    /// then the request waits in the queue rather than failing.
    pub fn only_full(&self, tried: &[usize]) -> bool {
        self.servers.iter().enumerate().any(|(i, s)| !tried.contains(&i) && s.takes_new_requests() && !s.has_room())
    }

    /// The pool of a reloaded config, keeping what the running one knows about its servers:
    /// a server unchanged in the file keeps its state whole (health, counters, idle
    /// connections); a changed one keeps its health, its admin state and a weight set at run
    /// time. Changes made through the runtime API thus survive a reload. A change of the
    /// pool's TLS leaves the old idle connections behind.
    pub fn carried_over(config: config::Pool, old: Option<&PoolState>) -> Self {
        // Servers kept whole still signal the old pool's queue: it carries over too.
        let freed = old.map(|o| o.freed.clone()).unwrap_or_default();
        // Idle connections were made with the old pool's TLS (or none): kept only if it is the same.
        let same_tls = old.is_some_and(|o| o.config.tls == config.tls);
        let servers = config
            .servers
            .iter()
            .map(|s| {
                // Matched on where it is now: DNS at run time may have moved it since its load.
                let previous =
                    old.and_then(|o| o.servers.iter().find(|x| x.config.name == s.name && x.address() == s.address));
                match previous {
                    Some(p) if same_but_address(&p.config, s) && same_tls => {
                        // Resolved again at this load: it has an address, whatever DNS said before.
                        if !s.unresolved {
                            p.follow_addresses(&[s.address.ip()], s.address.port());
                        }
                        p.clone()
                    }
                    Some(p) => Arc::new(ServerState::new(s.clone(), freed.clone()).with_state_of(p)),
                    None => Arc::new(ServerState::new(s.clone(), freed.clone())),
                }
            })
            .collect();
        // A cache whose limits stay keeps its entries: a reload is no reason to go cold.
        let cache = match (old.and_then(|o| o.cache.clone()), &config.cache) {
            (Some(kept), Some(wanted)) if kept.config == *wanted => Some(kept),
            (_, wanted) => wanted.clone().map(|c| Arc::new(crate::cache::Cache::new(c))),
        };
        Self::with_servers(config, servers, freed, cache)
    }

    /// Adds one request's share to the retry budget.
    pub fn earn_retry(&self) {
        if self.retry_tenths.load(Ordering::Relaxed) < RETRY_TENTHS_MAX {
            self.retry_tenths.fetch_add(RETRY_TENTHS_PER_REQUEST, Ordering::Relaxed);
        }
    }

    pub fn can_retry(&self) -> bool {
        self.retry_tenths.load(Ordering::Relaxed) >= RETRY_TENTHS_PER_RETRY
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn spend_retry(&self) -> bool {
        self.retry_tenths
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(RETRY_TENTHS_PER_RETRY))
            .is_ok()
    }

    /// Rebuilds the balancing structures after a weight change.
    pub fn rebalance(&self) {
        self.balancer.store(Arc::new(build_balancer(&self.config, &self.servers)));
    }

    /// The servers as the balancer sees them for one request, `tried` ones excluded.
    pub fn view<'a>(&'a self, tried: &'a [usize]) -> ServersView<'a> {
        ServersView { servers: &self.servers, tried }
    }
}

/// Whether two configs of a server differ at most in the address loaded (the live one was
/// compared already).
fn same_but_address(a: &config::Server, b: &config::Server) -> bool {
    *a == config::Server { address: a.address, ..b.clone() }
}

fn build_balancer(config: &config::Pool, servers: &[Arc<ServerState>]) -> Balancer {
    let names: Vec<&str> = servers.iter().map(|s| s.config.name.as_str()).collect();
    let weights: Vec<u32> = servers.iter().map(|s| s.weight()).collect();
    Balancer::new(config.algorithm.clone(), &names, &weights)
}

pub struct ServersView<'a> {
    servers: &'a [Arc<ServerState>],
    tried: &'a [usize],
}

impl balancer::Servers for ServersView<'_> {
    fn count(&self) -> usize {
        self.servers.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.servers[i].takes_new_requests() && self.servers[i].has_room() && !self.tried.contains(&i)
    }
    fn is_backup(&self, i: usize) -> bool {
        self.servers[i].config.backup
    }
    fn load(&self, i: usize) -> u64 {
        self.servers[i].in_flight.load(Ordering::Relaxed)
    }
    fn weight(&self, i: usize) -> u32 {
        self.servers[i].weight()
    }
}

/// What an operator set on a server (HAProxy's admin states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Takes requests when up.
    Ready = 0,
    /// Finishes what it has; no new requests except those pinned by a sticky cookie.
    Drain = 1,
    /// Takes nothing (HAProxy's maintenance).
    Maint = 2,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// The state a name (`ready`, `drain`, `maint`) stands for, as the runtime API takes it.
    pub fn from_name(name: &str) -> Option<AdminState> {
        match name {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// One request in flight on a server: counted while this lives (its slot under `maxconn`).
#[derive(Debug)]
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    /// Takes a slot on `server`; `None` when it is at its `maxconn`.
    pub fn reserve(server: &Arc<ServerState>) -> Option<InFlight> {
        match server.config.maxconn {
            None => {
                server.in_flight.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                let below = |n: u64| (n < u64::from(max)).then_some(n + 1);
                server.in_flight.fetch_update(Ordering::AcqRel, Ordering::Relaxed, below).ok()?;
            }
        }
        Some(InFlight(server.clone()))
    }

    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
        if self.0.config.maxconn.is_some() {
            self.0.freed.notify_one();
        }
    }
}

/// Milliseconds since the process started: a clock that fits an atomic.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One upstream server: whether it takes traffic, what it did, and its idle connections.
#[derive(Debug)]
pub struct ServerState {
    pub config: config::Server,
    /// The name as a header value, made once: X-Served-By costs no allocation per response.
    pub name_header: http::HeaderValue,
    /// Where connections go: the config's address, until DNS at run time says otherwise.
    address: ArcSwap<SocketAddr>,
    /// Bumped when the address changes: a connection opened before is not kept idle.
    address_generation: AtomicU32,
    /// False while DNS says the server's name has no address: it takes no requests.
    resolved: AtomicBool,
    up: AtomicBool,
    admin: AtomicU8,
    weight: AtomicU32,
    /// When it last came up (see [`now_ms`]), for slow start.
    up_since_ms: AtomicU64,
    /// Requests sent and not yet answered in full: least-connections' load.
    pub in_flight: AtomicU64,
    /// Connect failures and 5xx answers in a row, for passive health.
    failures_in_row: AtomicU32,
    /// Boxed once when opened: every request moves a connection from here into the request,
    /// into its response's body and back, and moving a pointer is cheaper than moving the
    /// connection itself (184 bytes).
    #[allow(clippy::vec_box, reason = "each connection moves out of the vector for every request")]
    idle: Mutex<Vec<Box<Connection>>>,
    /// The HTTP/2 connection of an h2c pool's server, shared by every request.
    h2: Mutex<Option<H2Connection>>,
    /// Held while one is opened, so requests that find none wait for it instead of each
    /// opening their own.
    h2_opening: tokio::sync::Mutex<()>,
    pub requests: AtomicU64,
    /// Responses by status class: index 0 for 1xx … 4 for 5xx.
    pub responses: [AtomicU64; 5],
    pub connect_failures: AtomicU64,
    pub retries: AtomicU64,
    /// Time from sending a request to its response's headers.
    pub latency: LatencyHistogram,
    /// Response body bytes streamed from this server to clients.
    pub bytes_out: AtomicU64,
    /// The pool's queue, told when a request ends here (only with a `maxconn`).
    freed: Arc<Notify>,
    /// What the last health check found, or why passive health took the server out
    /// (HAProxy's LastChk): the stats page says why a server is DOWN.
    last_check: Mutex<String>,
}

/// Bucket bounds of [`LatencyHistogram`], in seconds (Prometheus `le` labels).
pub const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A Prometheus histogram without locks: one counter per bucket (not cumulative; summed when
/// exported), the count and the sum in microseconds.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    pub count: AtomicU64,
    pub sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

impl ServerState {
    pub fn new(config: config::Server, freed: Arc<Notify>) -> Self {
        let state = ServerState {
            freed,
            weight: AtomicU32::new(config.weight),
            // Validated names are header-safe; the fallback only guards against a future change.
            name_header: http::HeaderValue::from_str(&config.name).unwrap_or(http::HeaderValue::from_static("-")),
            address: ArcSwap::from_pointee(config.address),
            address_generation: AtomicU32::new(0),
            resolved: AtomicBool::new(!config.unresolved),
            config,
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready as u8),
            up_since_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_opening: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            connect_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            bytes_out: AtomicU64::new(0),
            last_check: Mutex::new(String::new()),
        };
        if state.config.unresolved {
            state.record_check("DNS: no address for this slot yet".into());
        }
        state
    }

    /// Records what the last check (or passive health) found.
    pub fn record_check(&self, outcome: String) {
        *self.last_check.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = outcome;
    }

    /// What the last check found; empty before the first.
    pub fn last_check(&self) -> String {
        self.last_check.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Up by its checks, and with an address.
    /// Where it is, as the stats page and `/api/servers` show it: `-` for a template's slot
    /// that DNS has not filled.
    pub fn shown_address(&self) -> String {
        if let Some(path) = &self.config.unix {
            return format!("unix:{}", path.display());
        }
        let address = self.address();
        if !self.is_resolved() && address.ip().is_unspecified() {
            return "-".into();
        }
        address.to_string()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.resolved.load(Ordering::Relaxed)
    }

    /// The address connections go to now.
    pub fn address(&self) -> SocketAddr {
        **self.address.load()
    }

    /// Where connections to it go: its (live) address, or its Unix socket.
    pub fn endpoint(&self) -> crate::client::Endpoint<'_> {
        match &self.config.unix {
            Some(path) => crate::client::Endpoint::Unix(path),
            None => crate::client::Endpoint::Tcp(self.address()),
        }
    }

    /// False while DNS says the server's name has no address.
    pub fn is_resolved(&self) -> bool {
        self.resolved.load(Ordering::Relaxed)
    }

    /// Follows a DNS answer: keeps the current address if it is among `ips`, else takes the
    /// first (with `port`) and lets go of connections to the old one. Returns the old address
    /// when it changed.
    pub fn follow_addresses(&self, ips: &[std::net::IpAddr], port: u16) -> Option<SocketAddr> {
        self.resolved.store(true, Ordering::Relaxed);
        let current = self.address();
        let first = *ips.first()?;
        if ips.contains(&current.ip()) && current.port() == port {
            return None;
        }
        self.address.store(Arc::new(SocketAddr::new(first, port)));
        self.address_generation.fetch_add(1, Ordering::Relaxed);
        self.lock_idle().clear();
        *self.lock_h2() = None;
        Some(current)
    }

    /// DNS says the name has no address: no requests until it has one. Returns true when
    /// this takes the server out.
    pub fn lose_address(&self, why: String) -> bool {
        let was = self.resolved.swap(false, Ordering::Relaxed);
        if was {
            self.lock_idle().clear();
            self.record_check(why);
        }
        was
    }

    /// Below its `maxconn` (always, without one).
    pub fn has_room(&self) -> bool {
        self.config.maxconn.is_none_or(|max| self.in_flight.load(Ordering::Relaxed) < u64::from(max))
    }

    fn with_state_of(self, old: &ServerState) -> Self {
        self.up.store(old.up.load(Ordering::Relaxed), Ordering::Relaxed);
        self.record_check(old.last_check());
        self.set_admin(old.admin());
        if old.weight() != old.config.weight {
            self.set_weight(old.weight());
        }
        self
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn set_admin(&self, state: AdminState) {
        self.admin.store(state as u8, Ordering::Relaxed);
    }

    /// Up, and neither drained nor in maintenance.
    pub fn takes_new_requests(&self) -> bool {
        self.is_up() && self.admin() == AdminState::Ready
    }

    /// Up and not in maintenance: may take a request pinned to it by a sticky cookie.
    pub fn takes_pinned_requests(&self) -> bool {
        self.is_up() && self.admin() != AdminState::Maint
    }

    /// Passive health: a failure (connect error or 5xx). Returns true when this one takes the
    /// server out: `failures` in a row, while it was up.
    pub fn record_failure(&self, failures: u32) -> bool {
        let n = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= failures && self.is_up() {
            self.set_up(false);
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        // Only write when there is something to reset: the common case stays read-only.
        if self.failures_in_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// Between 0 and 1: how far through its slow start a server that came back is.
    pub fn ramp(&self, slow_start: Duration) -> f64 {
        let since = self.up_since_ms.load(Ordering::Relaxed);
        if slow_start.is_zero() || since == 0 {
            return 1.0;
        }
        ((now_ms().saturating_sub(since)) as f64 / slow_start.as_millis() as f64).min(1.0)
    }

    pub fn set_up(&self, up: bool) {
        let was_up = self.up.swap(up, Ordering::Relaxed);
        if up && !was_up {
            self.up_since_ms.store(now_ms().max(1), Ordering::Relaxed);
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
        if !up {
            // Connections to a server taken out are not reused when it comes back.
            self.lock_idle().clear();
            *self.lock_h2() = None;
        }
    }

    pub fn count_response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    #[allow(clippy::vec_box, reason = "see `idle`")]
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Box<Connection>>> {
        // A poisoned lock only means another request panicked mid-push; the Vec is still sound.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<H2Connection>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server's HTTP/2 connection, opened (within `timeout`) when there is none or the
    /// last one closed; requests that find none meanwhile wait for that one.
    pub async fn h2_connection(
        &self,
        timeout: Duration,
        tls: Option<&crate::tls::UpstreamTls>,
    ) -> io::Result<H2Connection> {
        match self.open_h2() {
            Some(connection) => Ok(connection),
            // Boxed: its connect and handshake would make every request's future larger.
            None => Box::pin(self.new_h2_connection(timeout, tls)).await,
        }
    }

    /// The server's HTTP/2 connection, when one is open.
    fn open_h2(&self) -> Option<H2Connection> {
        self.lock_h2().as_ref().filter(|c| !c.sender.is_closed()).cloned()
    }

    async fn new_h2_connection(
        &self,
        timeout: Duration,
        tls: Option<&crate::tls::UpstreamTls>,
    ) -> io::Result<H2Connection> {
        let _opening = self.h2_opening.lock().await;
        if let Some(connection) = self.open_h2() {
            return Ok(connection);
        }
        let tls = tls.map(crate::tls::UpstreamTls::http2);
        let stream =
            crate::client::connect(self.endpoint(), self.config.host.as_deref(), timeout, tls.as_ref(), None).await?;
        if tls.is_some() && !stream.negotiated_h2() {
            return Err(io::Error::other("the server did not agree to HTTP/2 in TLS (ALPN h2)"));
        }
        let handshake = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream));
        let (sender, connection) = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(io::Error::other(format!("HTTP/2 handshake: {e}"))),
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 handshake timed out")),
        };
        let name = self.config.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::info!(server = name, error = %e, "HTTP/2 connection to the server ended");
            }
        });
        static OPENED: AtomicU64 = AtomicU64::new(0);
        let connection = H2Connection { number: OPENED.fetch_add(1, Ordering::Relaxed), sender };
        *self.lock_h2() = Some(connection.clone());
        Ok(connection)
    }

    /// Stops handing out `connection` (the server is closing it with a GOAWAY): the next
    /// request opens a new one. A newer connection in its place stays.
    pub fn forget_h2(&self, connection: &H2Connection) {
        let mut slot = self.lock_h2();
        if slot.as_ref().is_some_and(|c| c.number == connection.number) {
            *slot = None;
        }
    }

    /// The most recently used idle connection of `owner` (`None`: shared ones) that the
    /// server has not closed. Shared connections are all alike, so the last one matches at
    /// once; a client's own connections (PROXY protocol) are looked for.
    pub fn take_idle(&self, owner: Option<(SocketAddr, SocketAddr)>) -> Option<Box<Connection>> {
        let mut idle = self.lock_idle();
        while let Some(at) = idle.iter().rposition(|c| c.owner == owner) {
            let mut connection = idle.remove(at);
            if !connection.is_stale() {
                return Some(connection);
            }
        }
        None
    }

    /// Closes the idle connections that belong to `owner` (a client that has left).
    pub fn drop_idle_of(&self, owner: (SocketAddr, SocketAddr)) {
        self.lock_idle().retain(|c| c.owner != Some(owner));
    }

    /// Hands back a connection whose last response ended cleanly.
    pub fn put_idle(&self, connection: Box<Connection>) {
        let moved = connection.generation != self.address_generation.load(Ordering::Relaxed);
        if !connection.is_clean() || !self.is_up() || moved {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() >= MAX_IDLE_PER_SERVER {
            // The oldest goes: it is the likeliest to be closed by the server soon, or to be
            // a connection of a client that has left.
            idle.remove(0);
        }
        idle.push(connection);
    }

    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    /// Opens a new connection, within `timeout` (and TLS, for a pool with `tls`); with
    /// `preface`, it opens with a PROXY header naming that client and belongs to it.
    pub async fn connect(
        &self,
        timeout: Duration,
        tls: Option<&crate::tls::UpstreamTls>,
        preface: Option<Preface>,
    ) -> io::Result<Box<Connection>> {
        let generation = self.address_generation.load(Ordering::Relaxed);
        let header = preface.map(|p| crate::proxy_protocol::encode(p.version, Some((p.client, p.destination))));
        let host = self.config.host.as_deref();
        let mut connection = Connection::open(self.endpoint(), host, timeout, tls, header.as_deref()).await?;
        connection.generation = generation;
        connection.owner = preface.map(|p| (p.client, p.destination));
        Ok(Box::new(connection))
    }
}

/// Sends requests on a server's HTTP/2 connection (h2c pools).
pub type H2Sender = hyper::client::conn::http2::SendRequest<crate::body::RequestBody>;

/// A server's shared HTTP/2 connection, numbered so that a request that found it going away
/// forgets that one and not a newer one.
#[derive(Clone, Debug)]
pub struct H2Connection {
    number: u64,
    pub sender: H2Sender,
}

/// What a connection to a pool with `send_proxy` opens with: the client and where it
/// connected to.
#[derive(Debug, Clone, Copy)]
pub struct Preface {
    pub version: crate::proxy_protocol::Version,
    pub client: SocketAddr,
    pub destination: SocketAddr,
}

impl Preface {
    /// The owner its connections carry in the idle pool.
    pub fn owner(preface: Option<Preface>) -> Option<(SocketAddr, SocketAddr)> {
        preface.map(|p| (p.client, p.destination))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named_server() -> ServerState {
        let config = config::Server {
            name: "web".into(),
            address: "198.18.0.1:8080".parse().unwrap(),
            host: Some("web.internal".into()),
            weight: 1,
            backup: false,
            maxconn: None,
            template: None,
            unresolved: false,
            unix: None,
        };
        ServerState::new(config, Arc::new(Notify::new()))
    }

    #[test]
    fn a_server_keeps_its_address_while_dns_gives_it_and_moves_when_not() {
        let s = named_server();
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(s.follow_addresses(&[ip("198.18.0.2"), ip("198.18.0.1")], 8080), None, "still among them");
        assert_eq!(s.address(), "198.18.0.1:8080".parse().unwrap());
        assert_eq!(
            s.follow_addresses(&[ip("198.18.0.3"), ip("198.18.0.2")], 8080),
            Some("198.18.0.1:8080".parse().unwrap())
        );
        assert_eq!(s.address(), "198.18.0.3:8080".parse().unwrap(), "the first given");
        assert_eq!(s.config.address, "198.18.0.1:8080".parse().unwrap(), "the config keeps what was loaded");
    }

    #[test]
    fn a_name_without_address_takes_the_server_out_until_it_has_one() {
        let s = named_server();
        assert!(s.takes_new_requests());
        assert!(s.lose_address("DNS: web.internal: no such name".into()));
        assert!(!s.lose_address("again".into()), "taken out once");
        assert!(!s.is_up() && !s.takes_new_requests() && !s.takes_pinned_requests());
        assert_eq!(s.last_check(), "DNS: web.internal: no such name", "the stats page says why");
        s.follow_addresses(&["198.18.0.1".parse().unwrap()], 8080);
        assert!(s.takes_new_requests(), "back with its address, health unchanged");
    }
}
