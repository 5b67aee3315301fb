//! The request path of a proxied request: pick a server, take or open a connection, rewrite
//! the headers, send, and stream the answer back. A request that could not be sent (connect
//! refused, a pooled connection found closed) goes to another server; once a request has been
//! sent it is never sent again.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::balancer::{self, Algorithm, Pick};
use crate::body::{ProxyBody, RequestBody, UpstreamBody};
use crate::cache::{self, Cache, Lookup};
use crate::client::{self, BodyWriteError, Connection, Framing, RequestFraming, ResponseHead};
use crate::config::Listener;
use crate::stall::{idle_for, Activity};
use crate::upstream::{InFlight, PoolState, Preface, ServerState};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// How many servers one request may be tried on before it fails (HAProxy's `retries 3` with
/// `option redispatch`).
const MAX_ATTEMPTS: usize = 3;

/// How many times one request may be sent again because a server did not process it (an
/// HTTP/2 stream refused, a connection going away). Apart from the attempts: such a request
/// did not fail, and a server that closes its connections every few streams refuses the
/// streams in flight each time.
const MAX_REFUSALS: usize = 8;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why a request got no answer from upstream; each maps to a status and a log line.
#[derive(Debug)]
enum Failure {
    NoServer,
    /// Every server that could take it stayed at its `maxconn` for the whole queue timeout.
    QueueTimeout,
    Connect(Arc<ServerState>, String),
    Upstream(Arc<ServerState>, String),
    Timeout(Arc<ServerState>),
    /// The client's body grew past the listener's limit while it streamed upstream.
    TooLarge(Arc<ServerState>),
    /// The client's fault (it went silent or away mid-upload): not held against the server.
    Client(Arc<ServerState>, StatusCode, String),
}

/// Sends `req` to a server of `pool`; returns the response and the index of the server that
/// gave it (`None` when the proxy answered itself: 502, 503, 504).
pub async fn forward(
    pool: &PoolState,
    mut req: Request<Incoming>,
    client: SocketAddr,
    listener: &Listener,
) -> (Response<ProxyBody>, Option<usize>) {
    if let Some(limit) = listener.max_body_bytes {
        if declared_length(req.headers()).is_some_and(|n| n > limit) {
            return (error_response(StatusCode::PAYLOAD_TOO_LARGE), None);
        }
    }
    // Held while this request fetches its entry for others waiting (the cache lock): dropped
    // when forward() returns, or once a streamed answer is stored.
    let (cache_key, mut filling) = match &pool.cache {
        None => (None, None),
        Some(cache) => match consult(cache, &req, listener.tls.is_some()).await {
            Lookup::Hit(response) => return (*response, None),
            Lookup::Miss(key, filling) => (Some(key), filling),
            Lookup::Wait(..) | Lookup::Bypass => (None, None),
        },
    };
    let key = request_key(&pool.config.algorithm, &req, client);
    let pinned = pool.config.sticky_cookie.as_deref().and_then(|name| pinned_server(pool, req.headers(), name));
    // WebSocket and other upgrades: the Upgrade header goes on, and the client's side of the
    // tunnel is taken before the request moves.
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    to_origin_form(&mut req);
    prepare_upstream_headers(req.headers_mut(), client, listener.trust_forwarded, listener.tls.is_some());
    if let Some(protocol) = &upgrade {
        req.headers_mut().insert(header::UPGRADE, protocol.clone());
        req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let method = req.method().clone();
    // Kept for the log line of a failure; cloning a Uri only bumps a reference count.
    let uri = req.uri().clone();
    pool.earn_retry();
    let replay = replayable(&req, pool, client_upgrade.is_some());
    let req = req.map(|body| {
        RequestBody::new(body, listener.max_body_bytes, listener.client_timeout, pool.request_bytes.clone())
    });
    let preface = pool.config.send_proxy.map(|version| Preface { version, client, destination: listener.bind });
    match send(pool, req, key, pinned, client_upgrade, replay, preface).await {
        Ok((index, mut response)) => {
            if is_server_error(response.status()) {
                if let Some(stale) = stale_answer(pool, cache_key.as_ref()) {
                    record_answer(pool, &pool.servers[index], response.status().as_u16());
                    tracing::info!(
                        pool = pool.config.name,
                        server = pool.servers[index].config.name,
                        status = response.status().as_u16(),
                        path = uri.path(),
                        "the server failed; a stale cached answer goes back"
                    );
                    return (stale, None);
                }
            }
            if let (Some(cache), Some(key)) = (&pool.cache, cache_key) {
                // Kept as the server sent it, before this proxy's own headers go on.
                response = keep_in_cache(cache, key, response, filling.take());
            }
            let server = &pool.servers[index];
            record_answer(pool, server, response.status().as_u16());
            if pool.config.intercepted.contains(&response.status()) {
                response = intercepted(response);
            }
            let headers = response.headers_mut();
            if pool.config.served_by_header {
                headers.insert(X_SERVED_BY.clone(), server.name_header.clone());
            }
            if let (Some(cookie), false) = (&pool.config.sticky_cookie, pinned == Some(index)) {
                let value = format!("{cookie}={}; Path=/; HttpOnly", server.config.name);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.append(header::SET_COOKIE, value);
                }
            }
            (response, Some(index))
        }
        Err(failure) => {
            if let Failure::NoServer = failure {
                pool.no_server_available.fetch_add(1, Ordering::Relaxed);
            }
            let (status, server, reason) = failure_answer(pool, &failure);
            count_failure(&failure, status);
            if let Some(stale) = stale_answer(pool, cache_key.as_ref()) {
                tracing::info!(pool = pool.config.name, server, %method, path = uri.path(), reason, "no server answered; a stale cached answer goes back");
                return (stale, None);
            }
            tracing::warn!(pool = pool.config.name, server, %method, path = uri.path(), status = status.as_u16(), reason, "request failed");
            (error_response(status), None)
        }
    }
}

/// A server's error answer, its body and headers put aside for the proxy's own answer of
/// that status, which the operator's error page then replaces (nginx's
/// `proxy_intercept_errors`): the headers a client needs to act on the status stay.
fn intercepted(server_answer: Response<ProxyBody>) -> Response<ProxyBody> {
    let mut response = error_response(server_answer.status());
    for name in [header::WWW_AUTHENTICATE, header::PROXY_AUTHENTICATE, header::RETRY_AFTER, header::ALLOW] {
        for value in server_answer.headers().get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// The statuses a stale cached answer stands in for (nginx's `http_500 http_502 http_503
/// http_504`).
fn is_server_error(status: StatusCode) -> bool {
    crate::config::SERVER_FAILURES.contains(&status.as_u16())
}

/// A stale entry of the pool's cache that may answer for servers that failed.
fn stale_answer(pool: &PoolState, key: Option<&cache::Key>) -> Option<Response<ProxyBody>> {
    pool.cache.as_ref()?.stale_answer(key?)
}

/// The proxy's own answer to a failure, the server it concerns and why.
fn failure_answer(pool: &PoolState, failure: &Failure) -> (StatusCode, String, String) {
    match failure {
        Failure::NoServer => (StatusCode::SERVICE_UNAVAILABLE, "-".to_string(), "no server is up".to_string()),
        Failure::QueueTimeout => (
            StatusCode::SERVICE_UNAVAILABLE,
            "-".to_string(),
            format!("every server is at its maxconn; waited {} ms in the queue", pool.config.queue_timeout.as_millis()),
        ),
        Failure::Connect(s, e) => (StatusCode::BAD_GATEWAY, s.config.name.clone(), format!("connect: {e}")),
        Failure::TooLarge(s) => {
            (StatusCode::PAYLOAD_TOO_LARGE, s.config.name.clone(), "request body over the limit".into())
        }
        Failure::Upstream(s, e) => (StatusCode::BAD_GATEWAY, s.config.name.clone(), e.clone()),
        Failure::Client(s, status, e) => (*status, s.config.name.clone(), e.clone()),
        Failure::Timeout(s) => (
            StatusCode::GATEWAY_TIMEOUT,
            s.config.name.clone(),
            format!("no response within {} ms", pool.config.first_byte_timeout.as_millis()),
        ),
    }
}

/// Counts a failure among its server's answers. A client's fault is not an answer of the
/// server's: its counters do not see it.
fn count_failure(failure: &Failure, status: StatusCode) {
    if let Failure::Connect(s, _) | Failure::Upstream(s, _) | Failure::Timeout(s) | Failure::TooLarge(s) = failure {
        s.count_response(status.as_u16());
    }
}

/// The cache's word on a request; when another request is fetching its entry (the cache
/// lock), after waiting for that one.
async fn consult<B>(cache: &Arc<Cache>, req: &Request<B>, https: bool) -> Lookup {
    match cache.lookup(req, https, true) {
        Lookup::Wait(key, notify) => {
            // Boxed: rare, and its timer would grow every request's future.
            Box::pin(cache.wait_for(&key, notify)).await;
            cache.lookup(req, https, false)
        }
        lookup => lookup,
    }
}

/// Stores a storable answer: at once when its body came whole, else as it streams by.
fn keep_in_cache(
    cache: &Arc<Cache>,
    key: cache::Key,
    response: Response<ProxyBody>,
    filling: Option<cache::Filling>,
) -> Response<ProxyBody> {
    let Some(lifetime) = cache.lifetime(response.status(), response.headers()) else { return response };
    let (parts, body) = response.into_parts();
    let body = match body {
        ProxyBody::Full { bytes } => {
            let whole = bytes.clone().unwrap_or_default();
            cache.store(key, parts.status, parts.headers.clone(), whole, lifetime);
            ProxyBody::Full { bytes }
        }
        ProxyBody::Upstream { body } => {
            let (status, headers) = (parts.status, parts.headers.clone());
            let pending = cache::Pending { cache: cache.clone(), key, status, headers, lifetime, filling };
            ProxyBody::caching(cache::CachingBody::new(body, pending))
        }
        other => other,
    };
    Response::from_parts(parts, body)
}

/// Passive health, when the pool has it: counts a failure, and takes the server out after
/// `passive.failures` in a row. The active check brings it back; without one, the cooldown does.
fn note_failure(pool: &PoolState, server: &Arc<ServerState>, reason: &str) {
    let Some(passive) = &pool.config.passive else { return };
    if !server.record_failure(passive.failures) {
        return;
    }
    server.record_check(format!(
        "taken out by passive health: {} failures in a row, the last: {reason}",
        passive.failures
    ));
    tracing::warn!(
        pool = pool.config.name,
        server = server.config.name,
        reason,
        "server is DOWN (passive: {} failures in a row)",
        passive.failures
    );
    if pool.config.health.is_none() {
        let (server, cooldown, pool_name) = (server.clone(), passive.cooldown, pool.config.name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(cooldown).await;
            server.set_up(true);
            tracing::warn!(pool = pool_name, server = server.config.name, "server is UP again after its cooldown");
        });
    }
}

/// The hash of what a hashing algorithm balances on; `None` when the request lacks it.
fn request_key<B>(algorithm: &Algorithm, req: &Request<B>, client: SocketAddr) -> Option<u64> {
    match algorithm {
        Algorithm::Source => Some(match client.ip() {
            std::net::IpAddr::V4(ip) => balancer::hash_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => balancer::hash_bytes(&ip.octets()),
        }),
        Algorithm::Uri => Some(balancer::hash_bytes(req.uri().path().as_bytes())),
        Algorithm::Header(name) => req.headers().get(name.as_str()).map(|v| balancer::hash_bytes(v.as_bytes())),
        Algorithm::Cookie(name) => cookie_value(req.headers(), name).map(|v| balancer::hash_bytes(v.as_bytes())),
        _ => None,
    }
}

/// The value of the cookie `name` the request carries.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The server a sticky cookie names, if it can take the request (drained servers still do).
fn pinned_server(pool: &PoolState, headers: &HeaderMap, cookie: &str) -> Option<usize> {
    let name = cookie_value(headers, cookie)?;
    pool.servers.iter().position(|s| s.config.name == name && s.takes_pinned_requests())
}

/// Whether a request may be sent again after it failed once sent: only idempotent requests
/// without a body (RFC 9110 §9.2.2), while the pool's retry budget lasts. The request itself
/// comes back from the failed attempt (its head was only encoded, not consumed), so nothing
/// is copied for this up front.
fn replayable(req: &Request<Incoming>, pool: &PoolState, upgrading: bool) -> bool {
    let idempotent = matches!(
        *req.method(),
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    );
    idempotent && !upgrading && req.body().is_end_stream() && pool.can_retry()
}

/// Logs why a request goes to a server again.
fn note_retry(pool: &PoolState, server: &ServerState, reason: &str, what: &'static str) {
    tracing::info!(pool = pool.config.name, server = server.config.name, reason, "{what}");
}

/// Counts a server's answer and tells passive health about it.
#[inline]
fn record_answer(pool: &PoolState, server: &Arc<ServerState>, status: u16) {
    server.count_response(status);
    if pool.config.passive.is_some() {
        if status >= 500 {
            note_failure(pool, server, &format!("answered {status}"));
        } else {
            server.record_success();
        }
    }
}

async fn send(
    pool: &PoolState,
    req: Request<RequestBody>,
    key: Option<u64>,
    pinned: Option<usize>,
    client_upgrade: Option<OnUpgrade>,
    replay: bool,
    preface: Option<Preface>,
) -> Result<(usize, Response<ProxyBody>), Failure> {
    // An answer the pool retries on, held while another server is tried: when none does
    // better, it is the client's (as nginx's proxy_next_upstream gives the last answer).
    let mut held: Option<(usize, Box<Response<ProxyBody>>)> = None;
    let mut client_upgrade = client_upgrade;
    let mut req = req;
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut last_failure = Failure::NoServer;
    let mut refusals = 0;
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        let (index, flight) = match reserve(pool, &tried, key, pinned.filter(|_| attempt == 0)).await {
            Ok(reserved) => reserved,
            Err(Some(failure)) => return settle(pool, Err(failure), held),
            Err(None) => break,
        };
        tried[attempt] = index;
        let server = &pool.servers[index];
        if attempt + refusals > 0 {
            server.retries.fetch_add(1, Ordering::Relaxed);
        }
        server.requests.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        // Whether a request that reached the server may go to another one.
        let may_go_again = replay && attempt + 1 < MAX_ATTEMPTS;
        match send_to(pool, server, req, flight, &mut client_upgrade, preface).await {
            Ok(response) => {
                server.latency.observe(sent_at.elapsed());
                return settle(pool, Ok((index, response)), held);
            }
            Err(SendError::NotSent(back, reason)) => {
                server.connect_failures.fetch_add(1, Ordering::Relaxed);
                note_failure(pool, server, &reason);
                note_retry(pool, server, &reason, "could not send; trying another server");
                last_failure = Failure::Connect(server.clone(), reason);
                req = back;
            }
            Err(SendError::Refused(None, reason)) => {
                return settle(pool, Err(Failure::Upstream(server.clone(), reason)), held)
            }
            Err(SendError::Refused(Some(back), reason)) => {
                note_retry(pool, server, &reason, "the server did not process the request; sending it again");
                last_failure = Failure::Upstream(server.clone(), reason);
                if refusals == MAX_REFUSALS {
                    break;
                }
                refusals += 1;
                // Not an attempt used up: the same server may take it again, on a new
                // connection after a GOAWAY.
                tried[attempt] = usize::MAX;
                req = back;
                continue;
            }
            Err(SendError::Answered(answered)) => {
                let (response, back) = *answered;
                server.latency.observe(sent_at.elapsed());
                if !(may_go_again && pool.spend_retry()) {
                    return settle(pool, Ok((index, response)), held);
                }
                let status = response.status().as_u16();
                tracing::info!(
                    pool = pool.config.name,
                    server = server.config.name,
                    status,
                    "answered with a status the pool retries on; trying another server"
                );
                if let Some((before, answer)) = held.replace((index, Box::new(response))) {
                    record_answer(pool, &pool.servers[before], answer.status().as_u16());
                }
                req = back;
            }
            Err(SendError::Failed(reason, back)) => {
                note_failure(pool, server, &reason);
                match back {
                    Some(back) if may_go_again && pool.spend_retry() => {
                        note_retry(
                            pool,
                            server,
                            &reason,
                            "idempotent request failed once sent; retrying on another server",
                        );
                        last_failure = Failure::Upstream(server.clone(), reason);
                        req = back;
                    }
                    _ => return settle(pool, Err(Failure::Upstream(server.clone(), reason)), held),
                }
            }
            Err(SendError::TimedOut(back)) => match back {
                Some(back) if may_go_again && pool.spend_retry() => {
                    let reason = format!("no response within {} ms", pool.config.first_byte_timeout.as_millis());
                    server.count_response(StatusCode::GATEWAY_TIMEOUT.as_u16());
                    note_failure(pool, server, &reason);
                    note_retry(pool, server, &reason, "no response in time; trying another server");
                    last_failure = Failure::Timeout(server.clone());
                    req = back;
                }
                _ => return settle(pool, Err(Failure::Timeout(server.clone())), held),
            },
            Err(SendError::TooLarge) => return settle(pool, Err(Failure::TooLarge(server.clone())), held),
            Err(SendError::Client(status, reason)) => {
                return settle(pool, Err(Failure::Client(server.clone(), status, reason)), held)
            }
        }
        attempt += 1;
    }
    settle(pool, Err(last_failure), held)
}

/// The outcome, or the answer held back when no server did better (a better answer counts
/// the held one among its server's).
#[inline]
fn settle(
    pool: &PoolState,
    outcome: Result<(usize, Response<ProxyBody>), Failure>,
    held: Option<(usize, Box<Response<ProxyBody>>)>,
) -> Result<(usize, Response<ProxyBody>), Failure> {
    match held {
        None => outcome,
        Some((index, answer)) => settle_held(pool, outcome, index, *answer),
    }
}

#[cold]
fn settle_held(
    pool: &PoolState,
    outcome: Result<(usize, Response<ProxyBody>), Failure>,
    index: usize,
    answer: Response<ProxyBody>,
) -> Result<(usize, Response<ProxyBody>), Failure> {
    match outcome {
        Err(failure) => {
            let (status, server, reason) = failure_answer(pool, &failure);
            count_failure(&failure, status);
            tracing::info!(pool = pool.config.name, server, reason, "no server did better; the last answer goes back");
            Ok((index, answer))
        }
        Ok(better) => {
            record_answer(pool, &pool.servers[index], answer.status().as_u16());
            Ok(better)
        }
    }
}

/// How often a queued request looks again without being told a slot was freed: a freed slot
/// wakes one waiter, and this bounds what a waiter can miss (a server coming back up).
const QUEUE_RECHECK: Duration = Duration::from_millis(50);

/// A server for the request and its slot there (`pinned`: that server, for a sticky cookie).
/// When every server that could take it is at its `maxconn`, the request waits in the pool's
/// queue for up to the queue timeout, as in HAProxy. `Err(None)`: no server can take it at all.
async fn reserve(
    pool: &PoolState,
    tried: &[usize; MAX_ATTEMPTS],
    key: Option<u64>,
    pinned: Option<usize>,
) -> Result<(usize, InFlight), Option<Failure>> {
    let mut deadline = None;
    loop {
        match pinned.or_else(|| choose(pool, tried, key)) {
            Some(index) => {
                if let Some(flight) = InFlight::reserve(&pool.servers[index]) {
                    return Ok((index, flight));
                }
            }
            None if !pool.only_full(tried) => return Err(None),
            None => {}
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + pool.config.queue_timeout);
        let now = Instant::now();
        if now >= deadline {
            pool.queue_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(Some(Failure::QueueTimeout));
        }
        // Boxed: rarely waited on, and its timer would grow every request's future.
        Box::pin(wait_in_queue(pool, (deadline - now).min(QUEUE_RECHECK))).await;
    }
}

/// Waits in the pool's queue until a slot is freed or `at_most` has passed.
async fn wait_in_queue(pool: &PoolState, at_most: Duration) {
    let _in_queue = Queued::join(pool);
    let _ = tokio::time::timeout(at_most, pool.freed.notified()).await;
}

/// A request counted in its pool's queue while this lives.
struct Queued<'a>(&'a PoolState);

impl<'a> Queued<'a> {
    fn join(pool: &'a PoolState) -> Self {
        pool.queued.fetch_add(1, Ordering::Relaxed);
        Queued(pool)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The balancer's choice, with slow start: a server still ramping up after coming back is
/// passed over in proportion to how far it has to go, when another server can take the request.
fn choose(pool: &PoolState, tried: &[usize; MAX_ATTEMPTS], key: Option<u64>) -> Option<usize> {
    let balancer = pool.balancer.load();
    let random = random_u64();
    let pick = Pick { cursor: pool.next.fetch_add(1, Ordering::Relaxed), key, random };
    let index = balancer.pick(&pool.view(tried), pick)?;
    let ramp = pool.servers[index].ramp(pool.config.slow_start);
    if ramp < 1.0 && ((random >> 11) as f64 / (1u64 << 53) as f64) >= ramp {
        let mut without = *tried;
        if let Some(slot) = without.iter_mut().find(|t| **t == usize::MAX) {
            *slot = index;
            if let Some(other) = balancer.pick(&pool.view(&without), pick) {
                return Some(other);
            }
        }
    }
    Some(index)
}

/// A fast per-thread xorshift generator: balancing needs spread, not secrecy.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
                ^ (std::process::id() as u64) << 32)
                | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

// The request rides back in `NotSent` so it can go to another server; boxing it would cost
// an allocation on every failed attempt for no gain.
#[allow(clippy::large_enum_variant)]
enum SendError {
    /// Nothing reached the server; the request comes back for another try.
    NotSent(Request<RequestBody>, String),
    /// Sent, and failed; the request comes back when it had no body, for a replay.
    Failed(String, Option<Request<RequestBody>>),
    /// The server did not process it (an HTTP/2 stream refused, a connection going away):
    /// it counts against no one's health, and the request comes back to go again, whatever
    /// its method, unless its body went out with it.
    Refused(Option<Request<RequestBody>>, String),
    /// No response head in time; the request comes back when the pool retries on that.
    TimedOut(Option<Request<RequestBody>>),
    /// An answer whose status the pool retries on, and the request (without a body) that
    /// may go to another server. Boxed: rare, and every request's result would grow.
    Answered(Box<(Response<ProxyBody>, Request<RequestBody>)>),
    TooLarge,
    /// The client's body failed: the answer for the client, and why.
    Client(StatusCode, String),
}

async fn send_to(
    pool: &PoolState,
    server: &Arc<ServerState>,
    req: Request<RequestBody>,
    flight: InFlight,
    client_upgrade: &mut Option<OnUpgrade>,
    preface: Option<Preface>,
) -> Result<Response<ProxyBody>, SendError> {
    if pool.config.http2 {
        // Boxed: its state would make the HTTP/1.1 path's future larger (and slower to move).
        return Box::pin(send_h2(pool, server, req, flight, client_upgrade.is_some())).await;
    }
    let mut req = req;
    let framing = RequestFraming::of(&req);
    // A pooled connection may have been closed by the server since it was idle: then try the
    // next one, and at last a new connection. Only a failed connect counts against the server.
    let mut connection = loop {
        if let Some(mut connection) = server.take_idle(Preface::owner(preface)) {
            if connection.write_head(&req, framing).await.is_ok() {
                break connection;
            }
            continue;
        }
        // Boxed: a new connection is rare with keep-alive, and its connect and TLS handshake
        // would make every request's future larger (and slower to move).
        let connecting = Box::pin(server.connect(pool.config.connect_timeout, pool.config.tls.as_ref(), preface));
        let mut connection = match connecting.await {
            Ok(connection) => connection,
            Err(e) => return Err(SendError::NotSent(req, e.to_string())),
        };
        if let Err(e) = connection.write_head(&req, framing).await {
            return Err(SendError::NotSent(req, e.to_string()));
        }
        break connection;
    };
    let mut body_failure = None;
    if framing.has_body() {
        let body = std::mem::replace(req.body_mut(), RequestBody::empty());
        // Boxed: most requests have no body, and this future would grow every request's state.
        match Box::pin(connection.write_body(body, framing, pool.config.idle_timeout)).await {
            Ok(()) => {}
            Err(BodyWriteError::TooLarge) => return Err(SendError::TooLarge),
            Err(BodyWriteError::Client(e)) => {
                return Err(SendError::Client(StatusCode::BAD_REQUEST, format!("client body: {e}")))
            }
            Err(BodyWriteError::ClientStalled(silence)) => {
                let reason = format!("the client sent no body data for {} ms", silence.as_millis());
                return Err(SendError::Client(StatusCode::REQUEST_TIMEOUT, reason));
            }
            // The server may have answered early and stopped reading (a 413 before the end of
            // an upload): its answer, if any, is what the client gets.
            Err(BodyWriteError::Upstream(e)) => body_failure = Some(e),
        }
    }
    let head_request = req.method() == http::Method::HEAD;
    let head = match connection.read_head(head_request, pool.config.first_byte_timeout).await {
        Ok(head) => head,
        Err(client::Error::TimedOut) => {
            let again = !framing.has_body() && pool.config.retry_on.response_timeout;
            return Err(SendError::TimedOut(again.then_some(req)));
        }
        Err(e) => {
            let reason = match body_failure {
                Some(write) => format!("sending the body: {write}"),
                None => e.to_string(),
            };
            return Err(SendError::Failed(reason, (!framing.has_body()).then_some(req)));
        }
    };
    let keep_alive = head.keep_alive && body_failure.is_none();
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return match client_upgrade.take() {
            Some(client_side) => Ok(tunnel(head, connection, client_side, flight, pool.config.tunnel_timeout)),
            None => Err(SendError::Failed("101 answer to a request that asked no upgrade".into(), None)),
        };
    }
    let retry = !framing.has_body() && pool.config.retry_on.status(head.status);
    let response = into_client_response(head, connection, keep_alive, flight, pool.config.idle_timeout);
    match retry {
        true => Err(SendError::Answered(Box::new((response, req)))),
        false => Ok(response),
    }
}

/// A request on the server's HTTP/2 connection (an h2 or h2c pool). Once sent, hyper owns
/// it: a request without a body is copied first, to go again when the server says it never
/// processed it (RFC 9113 §8.7) or, idempotent, within the retry budget.
async fn send_h2(
    pool: &PoolState,
    server: &Arc<ServerState>,
    mut req: Request<RequestBody>,
    flight: InFlight,
    upgrade: bool,
) -> Result<Response<ProxyBody>, SendError> {
    if upgrade {
        return Err(SendError::Failed("an upgrade (WebSocket) cannot go to an HTTP/2 server".into(), None));
    }
    let connection = match server.h2_connection(pool.config.connect_timeout, pool.config.tls.as_ref()).await {
        Ok(connection) => connection,
        Err(e) => return Err(SendError::NotSent(req, e.to_string())),
    };
    let mut sender = connection.sender.clone();
    if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
        server.forget_h2(&connection);
        return Err(SendError::Refused(Some(req), format!("HTTP/2 connection closed: {e}")));
    }
    into_http2_form(&mut req, if pool.config.tls.is_some() { "https" } else { "http" });
    // What goes again with a refused stream: the head, and the body when it was kept — read
    // whole first when it is small and says so (a form, a JSON call: nginx reads every body
    // first), else copied as it goes, up to a size (a gRPC call, whose length is not said).
    let mut again = req.body().is_end_stream().then(|| head_copy(&req));
    let mut kept = None;
    if again.is_none() {
        if small_body(req.body()) {
            // Boxed: its state would grow every HTTP/2 request's future.
            let whole = Box::pin(read_whole(req.body_mut())).await.map_err(client_body_failure)?;
            *req.body_mut() = whole.replay().unwrap_or_else(RequestBody::empty);
            again = whole.replay().map(|body| head_copy(&req).map(|_| body));
        } else {
            kept = Some((req.body_mut().keep_copy(), head_copy(&req)));
        }
    }
    match tokio::time::timeout(pool.config.first_byte_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(SendError::TimedOut(again.filter(|_| pool.config.retry_on.response_timeout))),
        Ok(Err(mut e)) => {
            // Handed back unsent: the connection closed before taking it.
            if let Some(req) = e.take_message() {
                server.forget_h2(&connection);
                return Err(SendError::Refused(Some(req), format!("HTTP/2 connection closed: {}", e.error())));
            }
            match refusal(e.error()) {
                Some(refusal) => {
                    if refusal == Refusal::GoingAway {
                        server.forget_h2(&connection);
                    }
                    let reason = match refusal {
                        Refusal::Stream => "the server refused the HTTP/2 stream (REFUSED_STREAM)",
                        Refusal::GoingAway => "the server closed the HTTP/2 connection (GOAWAY) before the stream",
                    };
                    Err(SendError::Refused(again.or_else(|| with_kept_body(kept)), reason.into()))
                }
                None => Err(SendError::Failed(h2_failure(e.error()), again)),
            }
        }
        Ok(Ok(response)) => {
            let response = response.map(|body| ProxyBody::h2(body, flight, pool.config.idle_timeout));
            match again {
                Some(req) if pool.config.retry_on.status(response.status()) => {
                    Err(SendError::Answered(Box::new((response, req))))
                }
                _ => Ok(response),
            }
        }
    }
}

/// How an HTTP/2 server said it never processed a stream.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// RST_STREAM with REFUSED_STREAM: the stream alone, the connection goes on.
    Stream,
    /// A GOAWAY whose last stream came before this one (or before it was opened): the
    /// server is closing the connection.
    GoingAway,
}

fn refusal(error: &hyper::Error) -> Option<Refusal> {
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        Some(Refusal::GoingAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Refusal::Stream)
    } else {
        None
    }
}

/// What went wrong, with the HTTP/2 layer's own words (hyper's alone say "http2 error").
fn h2_failure(error: &hyper::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("HTTP/2: {cause}"),
        None => format!("HTTP/2: {error}"),
    }
}

/// Whether a request body says it is small enough to read whole before it goes.
fn small_body(body: &RequestBody) -> bool {
    http_body::Body::size_hint(body).upper().is_some_and(|n| n <= crate::body::KEPT_BODY_LIMIT as u64)
}

/// The client's whole body, read before it goes out.
async fn read_whole(body: &mut RequestBody) -> Result<crate::body::KeptBody, crate::body::BodyError> {
    use http_body_util::BodyExt;
    let mut chunks = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => chunks.push(data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(crate::body::KeptBody::whole(chunks, trailers))
}

/// A client body that failed before it went out, as the answer the client gets.
fn client_body_failure(e: crate::body::BodyError) -> SendError {
    match BodyWriteError::from_client(e) {
        BodyWriteError::TooLarge => SendError::TooLarge,
        BodyWriteError::ClientStalled(silence) => {
            let reason = format!("the client sent no body data for {} ms", silence.as_millis());
            SendError::Client(StatusCode::REQUEST_TIMEOUT, reason)
        }
        BodyWriteError::Client(e) => SendError::Client(StatusCode::BAD_REQUEST, format!("client body: {e}")),
        BodyWriteError::Upstream(e) => SendError::Client(StatusCode::BAD_REQUEST, format!("client body: {e}")),
    }
}

/// The request again with the copy kept of its body, when the whole body was kept (it ended
/// within the size kept, before the stream was refused).
fn with_kept_body(
    kept: Option<(std::sync::Arc<std::sync::Mutex<crate::body::KeptBody>>, Request<RequestBody>)>,
) -> Option<Request<RequestBody>> {
    let (kept, mut req) = kept?;
    let body = kept.lock().unwrap_or_else(|p| p.into_inner()).replay()?;
    *req.body_mut() = body;
    Some(req)
}

/// A bodiless request's head, to send again.
fn head_copy(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// HTTP/2 names the target in `:scheme` and `:authority`: the URI becomes absolute (from
/// the Host header, which then goes), and the version says HTTP/2. A request handed back
/// unsent is in this form already, and stays so.
fn into_http2_form<B>(req: &mut Request<B>, scheme: &str) {
    let host = req.headers_mut().remove(header::HOST);
    let authority = match host.as_ref().and_then(|h| h.to_str().ok()) {
        Some(host) => host.to_string(),
        None => req.uri().authority().map_or_else(|| "localhost".to_string(), |a| a.to_string()),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("{scheme}://{authority}{path}").parse() {
        *req.uri_mut() = uri;
    }
    // The one TE HTTP/2 allows, and what gRPC servers look for: this proxy passes trailers on.
    req.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
    *req.version_mut() = http::Version::HTTP_2;
}

/// A 101 answer: the client and the server now talk their own protocol (WebSocket) through
/// a tunnel that copies bytes both ways until either side closes. The upstream connection
/// is the tunnel's, never pooled again.
fn tunnel(
    head: ResponseHead,
    connection: Box<Connection>,
    client_side: OnUpgrade,
    flight: InFlight,
    idle_limit: Duration,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if let Some(protocol) = head.upgrade {
        response.headers_mut().insert(header::UPGRADE, protocol);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    tokio::spawn(async move {
        let _flight = flight;
        let (server, early) = connection.into_tunnel();
        let mut client = match client_side.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => return tracing::info!(error = %e, "upgrade failed"),
        };
        // Bytes the server sent right after its 101 head belong to the new protocol.
        if !early.is_empty() {
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &early).await {
                return tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut client = Activity::new(client, moved.clone());
        let mut server = Activity::new(server, moved.clone());
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut server) => if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended");
            },
            () = idle_for(&moved, idle_limit) => {
                tracing::info!(silent_ms = idle_limit.as_millis() as u64, "upgraded connection closed: silent both ways");
            }
        }
    });
    response
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade: …`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Replaces the first `matched` bytes of the request's path (what its route matched) with
/// `replacement`, keeping the query. Where a replacement ending in / meets a rest starting
/// with one, one slash stays: `/api` → `/` makes `/api/users` `/users`, not `//users`.
pub fn replace_path_prefix<B>(req: &mut Request<B>, matched: usize, replacement: &str) -> Result<(), http::Error> {
    let rest = req.uri().path().get(matched..).unwrap_or("");
    let rest = match replacement.ends_with('/') {
        true => rest.strip_prefix('/').unwrap_or(rest),
        false => rest,
    };
    let query = req.uri().query();
    let mut path = String::with_capacity(replacement.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    path.push_str(replacement);
    path.push_str(rest);
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(path.parse()?);
    *req.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

/// An HTTP/2 request names its target in absolute form and its host in :authority; an
/// HTTP/1.1 upstream wants origin form and a Host header.
fn to_origin_form<B>(req: &mut Request<B>) {
    if req.version() != http::Version::HTTP_2 && req.uri().authority().is_none() {
        return;
    }
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
}

fn into_client_response(
    head: ResponseHead,
    mut connection: Box<Connection>,
    keep_alive: bool,
    flight: InFlight,
    idle_timeout: std::time::Duration,
) -> Response<ProxyBody> {
    let body = match head.framing {
        // Nothing to stream (HEAD, 204, 304, an empty body): the connection is free now.
        Framing::Empty | Framing::Length(0) => {
            if keep_alive {
                flight.server().put_idle(connection);
            }
            ProxyBody::empty()
        }
        Framing::Length(length) => match connection.take_buffered(length) {
            // The whole body came with the head, as small answers do: no streaming state.
            Some(data) => {
                let server = flight.server();
                server.bytes_out.fetch_add(length, Ordering::Relaxed);
                if keep_alive {
                    server.put_idle(connection);
                }
                ProxyBody::full(data)
            }
            None => ProxyBody::upstream(UpstreamBody::new(
                connection,
                Framing::Length(length),
                keep_alive,
                flight,
                idle_timeout,
            )),
        },
        framing => ProxyBody::upstream(UpstreamBody::new(connection, framing, keep_alive, flight, idle_timeout)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and sets X-Forwarded-For/-Proto, in one pass
/// over the headers named by `Connection`.
pub fn prepare_upstream_headers(headers: &mut HeaderMap, client: SocketAddr, trust_forwarded: bool, https: bool) {
    strip_hop_by_hop(headers);
    let mut buffer = [0u8; 48];
    let ip = format_ip(client.ip(), &mut buffer);
    let value = match headers.get(&X_FORWARDED_FOR) {
        Some(previous) if trust_forwarded => {
            let mut joined = Vec::with_capacity(previous.len() + 2 + ip.len());
            joined.extend_from_slice(previous.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip);
            HeaderValue::from_bytes(&joined)
        }
        _ => HeaderValue::from_bytes(ip),
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !trust_forwarded || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if https { "https" } else { "http" }));
    }
}

/// The address as text in `buffer`, without the formatting machinery (this runs per request).
fn format_ip(ip: std::net::IpAddr, buffer: &mut [u8; 48]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buffer[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buffer[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buffer[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buffer[len] = b'0' + octet % 10;
                len += 1;
            }
            &buffer[..len]
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buffer[..]);
            let _ = write!(cursor, "{v6}");
            let len = cursor.position() as usize;
            &buffer[..len]
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these but Connection: one scan over the names costs less
    // than seven hashed lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.remove(header::CONNECTION) {
        if let Ok(names) = connection.to_str() {
            for name in names.split(',') {
                let name = name.trim();
                if !name.is_empty() && !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                    headers.remove(name);
                }
            }
        }
    }
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
}

/// A short, clear page for statuses the proxy makes itself.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let detail = match status {
        StatusCode::BAD_GATEWAY => "The server behind this proxy could not be reached or gave no valid answer.",
        StatusCode::SERVICE_UNAVAILABLE => "No server is available to handle this request.",
        StatusCode::GATEWAY_TIMEOUT => "The server behind this proxy did not answer in time.",
        StatusCode::NOT_FOUND => "There is nothing at this address.",
        StatusCode::FORBIDDEN => "Access to this address is not allowed.",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests from your address; try again in a moment.",
        StatusCode::BAD_REQUEST => "The request could not be understood.",
        StatusCode::METHOD_NOT_ALLOWED => "This method is not allowed here.",
        _ => "",
    };
    let body = format!(
        "<!doctype html>\n<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1><p>{detail}</p></body></html>\n",
        code = status.as_u16()
    );
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(OwnError);
    response
}

/// Marks an answer the proxy made itself, which an operator's error page may replace.
#[derive(Debug, Clone, Copy)]
pub struct OwnError;

/// Puts the operator's page for its status in place of the proxy's own (`[error_pages]`).
pub fn apply_error_page(pages: &[(StatusCode, crate::config::ErrorPage)], response: &mut Response<ProxyBody>) {
    if pages.is_empty() || response.extensions().get::<OwnError>().is_none() {
        return;
    }
    if let Some((_, page)) = pages.iter().find(|(status, _)| *status == response.status()) {
        *response.body_mut() = ProxyBody::full(page.body.clone());
        response.headers_mut().insert(header::CONTENT_TYPE, page.content_type.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_an_http2_server_names_its_target_once_and_keeps_it_when_handed_back() {
        let mut req = Request::get("/pkg.Service/Call?x=1").header("host", "api.foobar.com").body(()).unwrap();
        into_http2_form(&mut req, "https");
        assert_eq!(req.uri(), "https://api.foobar.com/pkg.Service/Call?x=1");
        assert!(req.headers().get(header::HOST).is_none(), ":authority says it");
        assert_eq!(req.headers()[header::TE], "trailers");
        assert_eq!(req.version(), http::Version::HTTP_2);
        // Unsent and handed back, it goes to the next server as it is.
        into_http2_form(&mut req, "https");
        assert_eq!(req.uri(), "https://api.foobar.com/pkg.Service/Call?x=1");
    }

    #[test]
    fn an_intercepted_answer_keeps_only_what_its_status_needs_and_takes_the_page() {
        let server_answer = Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer realm=\"api\"")
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_LENGTH, "812")
            .header("x-debug", "stack trace")
            .body(ProxyBody::full(bytes::Bytes::from_static(b"\x1f\x8b...")))
            .unwrap();
        let answer = intercepted(server_answer);
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        for gone in [header::CONTENT_ENCODING, header::CONTENT_LENGTH, HeaderName::from_static("x-debug")] {
            assert!(!answer.headers().contains_key(&gone), "{gone}");
        }
        assert!(answer.extensions().get::<OwnError>().is_some(), "an error page may replace it");
    }

    #[test]
    fn a_copy_to_send_again_is_the_same_request_in_http2_form() {
        let req = Request::delete("/items/7").header("host", "api").header("x-request-id", "r1");
        let mut req = req.body(RequestBody::empty()).unwrap();
        into_http2_form(&mut req, "http");
        let copy = head_copy(&req);
        assert_eq!(
            (copy.method(), copy.uri(), copy.version()),
            (&http::Method::DELETE, req.uri(), http::Version::HTTP_2)
        );
        assert_eq!(copy.headers(), req.headers());
        assert!(copy.body().is_end_stream());
    }

    #[test]
    fn a_routes_prefix_is_replaced_keeping_the_rest_and_the_query() {
        let replaced = |uri: &str, matched: &str, to: &str| {
            let mut req = Request::builder().uri(uri).body(()).unwrap();
            replace_path_prefix(&mut req, matched.len(), to).unwrap();
            req.uri().to_string()
        };
        assert_eq!(replaced("/api/users?page=2", "/api/", "/"), "/users?page=2");
        assert_eq!(replaced("/api/users", "/api", "/"), "/users", "one slash where they meet");
        assert_eq!(replaced("/api", "/api", "/"), "/");
        assert_eq!(replaced("/old/a/b", "/old/", "/new/"), "/new/a/b");
        assert_eq!(replaced("/status", "/status", "/healthz"), "/healthz");
        assert_eq!(replaced("/v1/x", "/v1", "/v2"), "/v2/x");
        // HTTP/2's absolute form keeps its scheme and authority.
        assert_eq!(replaced("https://shop.example/api/cart", "/api/", "/"), "https://shop.example/cart");
    }

    #[test]
    fn strips_hop_by_hop_and_sets_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(header::HOST, HeaderValue::from_static("www.foobar.com"));
        prepare_upstream_headers(&mut h, "127.0.0.9:5000".parse().unwrap(), false, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h["x-forwarded-for"], "127.0.0.9", "an untrusted client's X-Forwarded-For is replaced");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h[header::HOST], "www.foobar.com");
    }

    #[test]
    fn formats_addresses() {
        let mut b = [0u8; 48];
        for ip in ["0.0.0.0", "127.0.2.1", "10.20.255.199", "::1", "2001:db8::7"] {
            assert_eq!(format_ip(ip.parse().unwrap(), &mut b), ip.as_bytes());
        }
    }

    #[test]
    fn a_trusted_proxy_s_forwarded_headers_are_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.18.0.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare_upstream_headers(&mut h, "127.0.1.1:5000".parse().unwrap(), true, false);
        assert_eq!(h["x-forwarded-for"], "198.18.0.7, 127.0.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
