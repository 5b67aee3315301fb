//! A pool's answers kept in memory and served again while fresh: HAProxy's `cache` section
//! (`http-request cache-use`, `http-response cache-store`), nginx's `proxy_cache`. A shared
//! cache in RFC 9111's sense, as careful as HAProxy's:
//! - stored: answers 200 to a GET without `Authorization`, that say how long they stay fresh
//!   (`s-maxage`, `max-age`, `Expires`) or carry a validator (`ETag`, `Last-Modified`; then
//!   fresh for `max_age`), without `no-store`, `private`, `no-cache`, `Set-Cookie`, and
//!   varying on `Accept-Encoding` at most; up to `max_object_bytes` each;
//! - freshness is capped at `max_age` (HAProxy's `max-age`), minus the `Age` it arrived with;
//! - the key is the scheme, host, path and query, and which encodings the client takes, so a
//!   gzip answer never reaches a client that did not ask for one;
//! - a hit answers GET and HEAD with an `Age`, and 304 to a conditional request whose
//!   `If-None-Match` or `If-Modified-Since` the entry satisfies;
//! - a request with `Cache-Control: no-cache` (or `Pragma: no-cache`) goes to the servers and
//!   refreshes the entry; `no-store` is neither served nor stored; a POST, PUT, PATCH or
//!   DELETE to a path drops its entries (RFC 9111 §4.4);
//! - past `max_bytes`, the least recently used entries go;
//! - with `stale_if_error`, an entry past its freshness is kept that much longer and answers
//!   when the servers cannot (a 500, 502, 503 or 504, or no answer at all): nginx's
//!   `proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504`, RFC 5861's
//!   stale-if-error; never an entry whose server said `must-revalidate`, `proxy-revalidate`
//!   or `s-maxage` (RFC 9111 §4.2.4);
//! - with `lock_timeout`, one request at a time fetches a missing entry: others for it wait
//!   (up to that long) and are answered from what it stored, so a popular page expiring
//!   sends one request to the servers, not one per client (nginx's `proxy_cache_lock`,
//!   Varnish's request coalescing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use crate::body::ProxyBody;

/// A pool's `[pools.P.cache]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// All entries together, bodies and headers (HAProxy's `total-max-size`).
    pub max_bytes: usize,
    /// One answer's body (HAProxy's `max-object-size`).
    pub max_object_bytes: usize,
    /// The longest an entry is served (HAProxy's `max-age`).
    pub max_age: Duration,
    /// How long past its freshness an entry may still answer when the servers fail.
    pub stale_if_error: Duration,
    /// How long a request waits for another one fetching the same entry; zero: no waiting.
    pub lock_timeout: Duration,
}

/// What a cache lookup decided for a request.
pub enum Lookup {
    /// Answered from the cache.
    Hit(Box<Response<ProxyBody>>),
    /// To the servers; the answer may be stored under this key. With the lock on, this
    /// request fetches it for the others that come meanwhile, while its [`Filling`] lives.
    Miss(Key, Option<Filling>),
    /// Another request is fetching this entry: wait for it ([`Cache::wait_for`]), then look
    /// again.
    Wait(Key, Arc<Notify>),
    /// To the servers, and the answer is not stored.
    Bypass,
}

/// Which entry a request maps to.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Key {
    https: bool,
    /// Host and path with query, lowercased host.
    target: Box<str>,
    /// The content codings the client accepts, as bits.
    encodings: u8,
}

struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
    /// The `Age` it had when it arrived, in seconds.
    age_at_store: u64,
    fresh_until: Instant,
    /// Its server allows it served stale (no must-revalidate, proxy-revalidate, s-maxage).
    may_go_stale: bool,
    size: usize,
}

struct Slot {
    entry: Arc<Entry>,
    /// When it was last used, for least-recently-used eviction.
    tick: u64,
}

#[derive(Default)]
struct Store {
    entries: HashMap<Key, Slot>,
    /// Entries a request is fetching now, and how the requests waiting for it are woken.
    filling: HashMap<Key, Arc<Notify>>,
    by_use: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

impl Store {
    fn remove(&mut self, key: &Key) {
        if let Some(slot) = self.entries.remove(key) {
            self.by_use.remove(&slot.tick);
            self.bytes -= slot.entry.size;
        }
    }

    fn touch(&mut self, key: &Key) -> Option<Arc<Entry>> {
        self.tick += 1;
        let slot = self.entries.get_mut(key)?;
        self.by_use.remove(&slot.tick);
        slot.tick = self.tick;
        self.by_use.insert(self.tick, key.clone());
        Some(slot.entry.clone())
    }
}

/// One pool's cache.
pub struct Cache {
    pub config: CacheConfig,
    store: Mutex<Store>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Answers given from stale entries because the servers failed.
    pub stale_hits: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Cache {
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            store: Mutex::new(Store::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic elsewhere mid-update leaves sizes and maps consistent enough to go on.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries and the bytes they take, now.
    pub fn usage(&self) -> (usize, usize) {
        let store = self.lock();
        (store.entries.len(), store.bytes)
    }

    /// Looks `req` up: a fresh entry answers it; otherwise whether its answer may be stored,
    /// and (with the lock, when `may_wait`) whether another request is fetching it already.
    pub fn lookup<B>(self: &Arc<Self>, req: &Request<B>, https: bool, may_wait: bool) -> Lookup {
        let method = req.method();
        let Some(key) = key_of(req, https) else { return Lookup::Bypass };
        if method != Method::GET && method != Method::HEAD {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
                self.invalidate(&key);
            }
            return Lookup::Bypass;
        }
        let headers = req.headers();
        let directives = request_directives(headers);
        if headers.contains_key(header::AUTHORIZATION) || directives.no_store {
            return Lookup::Bypass;
        }
        let mut store = self.lock();
        if !directives.no_cache {
            let now = Instant::now();
            match store.touch(&key) {
                Some(entry) if now < entry.fresh_until => {
                    drop(store);
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Hit(Box::new(answer_from(&entry, req)));
                }
                // Kept for the servers' failures while it may still stand in for them.
                Some(entry) if self.may_stand_in(&entry, now) => {}
                Some(_) => store.remove(&key),
                None => {}
            }
        }
        // A HEAD's answer has no body to keep; its GET will fill the entry.
        if method == Method::HEAD {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Bypass;
        }
        if self.config.lock_timeout.is_zero() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(key, None);
        }
        if let Some(notify) = store.filling.get(&key) {
            if may_wait {
                return Lookup::Wait(key, notify.clone());
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(key, None);
        }
        let notify = Arc::new(Notify::new());
        store.filling.insert(key.clone(), notify.clone());
        self.misses.fetch_add(1, Ordering::Relaxed);
        let filling = Filling { cache: self.clone(), key: key.clone(), notify };
        Lookup::Miss(key, Some(filling))
    }

    /// Waits until the request fetching `key` is done with it, or the lock timeout passes.
    pub async fn wait_for(&self, key: &Key, notify: Arc<Notify>) {
        let woken = notify.notified();
        tokio::pin!(woken);
        // Registered before looking, so the fetch cannot end unseen in between.
        woken.as_mut().enable();
        let still_filling = self.lock().filling.get(key).is_some_and(|n| Arc::ptr_eq(n, &notify));
        if still_filling {
            let _ = tokio::time::timeout(self.config.lock_timeout, woken).await;
        }
    }

    fn may_stand_in(&self, entry: &Entry, now: Instant) -> bool {
        entry.may_go_stale && now < entry.fresh_until + self.config.stale_if_error
    }

    /// The stale entry under `key` as an answer, when it may stand in for servers that
    /// failed (a full 200 with its `Age`: the request's conditions are not looked at).
    pub fn stale_answer(&self, key: &Key) -> Option<Response<ProxyBody>> {
        if self.config.stale_if_error.is_zero() {
            return None;
        }
        let entry = self.lock().touch(key)?;
        if !self.may_stand_in(&entry, Instant::now()) {
            return None;
        }
        self.stale_hits.fetch_add(1, Ordering::Relaxed);
        let age = entry.age_at_store + entry.stored_at.elapsed().as_secs();
        let mut response = Response::new(ProxyBody::full(entry.body.clone()));
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response.headers_mut().insert(header::AGE, HeaderValue::from(age));
        Some(response)
    }

    /// Drops every entry, or those whose path starts with `path_prefix` (any host); how many
    /// went. For the runtime API, after a deploy.
    pub fn purge(&self, path_prefix: Option<&str>) -> usize {
        let mut store = self.lock();
        let path_of = |k: &Key| k.target.find('/').map_or("", |at| &k.target[at..]).to_string();
        let gone: Vec<Key> = store
            .entries
            .keys()
            .filter(|k| path_prefix.is_none_or(|prefix| path_of(k).starts_with(prefix)))
            .cloned()
            .collect();
        for k in &gone {
            store.remove(k);
        }
        gone.len()
    }

    /// Drops the entries of a path, whichever encodings they were for.
    fn invalidate(&self, key: &Key) {
        let mut store = self.lock();
        let gone: Vec<Key> =
            store.entries.keys().filter(|k| k.https == key.https && k.target == key.target).cloned().collect();
        for k in gone {
            store.remove(&k);
        }
    }

    /// How long an answer with this status and these headers may be kept; `None`: not at all.
    pub fn lifetime(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) || !varies_on_encoding_at_most(headers)
        {
            return None;
        }
        if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
            if length > self.config.max_object_bytes as u64 {
                return None;
            }
        }
        let directives = directives(headers);
        if directives.no_store || directives.private || directives.no_cache {
            return None;
        }
        let validator = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let stated =
            directives.s_maxage.or(directives.max_age).map(Duration::from_secs).or_else(|| expires_in(headers));
        let lifetime = match stated {
            Some(stated) => stated.min(self.config.max_age),
            None if validator => self.config.max_age,
            None => return None,
        };
        let age = Duration::from_secs(age_of(headers));
        lifetime.checked_sub(age).filter(|left| !left.is_zero())
    }

    /// Keeps an answer whose [`Cache::lifetime`] was `lifetime`, making room for it.
    pub fn store(&self, key: Key, status: StatusCode, headers: HeaderMap, body: Bytes, lifetime: Duration) {
        if body.len() > self.config.max_object_bytes {
            return;
        }
        let size = body.len() + headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum::<usize>();
        if size > self.config.max_bytes {
            return;
        }
        let now = Instant::now();
        let revalidate = directives(&headers);
        let entry = Entry {
            status,
            age_at_store: age_of(&headers),
            may_go_stale: !revalidate.must_revalidate && revalidate.s_maxage.is_none(),
            headers,
            body,
            stored_at: now,
            fresh_until: now + lifetime,
            size,
        };
        let mut store = self.lock();
        store.remove(&key);
        while store.bytes + size > self.config.max_bytes {
            let Some((_, oldest)) = store.by_use.pop_first() else { break };
            if let Some(slot) = store.entries.remove(&oldest) {
                store.bytes -= slot.entry.size;
            }
        }
        store.tick += 1;
        let tick = store.tick;
        store.by_use.insert(tick, key.clone());
        store.bytes += size;
        store.entries.insert(key, Slot { entry: Arc::new(entry), tick });
    }
}

/// A request fetching an entry for the others waiting on it (the cache lock); they are
/// woken when it is dropped: once its answer is stored, or found not worth storing, or lost.
pub struct Filling {
    cache: Arc<Cache>,
    key: Key,
    notify: Arc<Notify>,
}

impl Drop for Filling {
    fn drop(&mut self) {
        {
            let mut store = self.cache.lock();
            if store.filling.get(&self.key).is_some_and(|n| Arc::ptr_eq(n, &self.notify)) {
                store.filling.remove(&self.key);
            }
        }
        self.notify.notify_waiters();
    }
}

impl std::fmt::Debug for Filling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filling").field("key", &self.key).finish_non_exhaustive()
    }
}

/// What is needed to store an answer once its body has been read whole.
pub struct Pending {
    pub cache: Arc<Cache>,
    pub key: Key,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub lifetime: Duration,
    /// The lock this request holds on its key, let go once the answer is stored (or not).
    pub filling: Option<Filling>,
}

/// An upstream body on its way to the client, kept as it goes; stored when it ends within
/// `max_object_bytes`. A body cut short (the client left, the server failed) is not stored.
pub struct CachingBody {
    inner: crate::body::UpstreamBody,
    kept: bytes::BytesMut,
    pending: Option<Pending>,
}

impl CachingBody {
    pub fn new(inner: crate::body::UpstreamBody, pending: Pending) -> Self {
        CachingBody { inner, kept: bytes::BytesMut::new(), pending: Some(pending) }
    }

    fn keep(&mut self, data: &Bytes) {
        let Some(pending) = &self.pending else { return };
        if self.kept.len() + data.len() > pending.cache.config.max_object_bytes {
            self.pending = None;
            self.kept = bytes::BytesMut::new();
            return;
        }
        self.kept.extend_from_slice(data);
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            let body = std::mem::take(&mut self.kept).freeze();
            p.cache.store(p.key, p.status, p.headers, body, p.lifetime);
        }
    }
}

impl http_body::Body for CachingBody {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                }
                // The client's side may stop polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.pending = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The key of a request: its scheme, host, path and query, and the codings it accepts.
fn key_of<B>(req: &Request<B>, https: bool) -> Option<Key> {
    let host = req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST)?.to_str().ok())?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = format!("{}{path}", host.to_ascii_lowercase()).into_boxed_str();
    Some(Key { https, target, encodings: accepted_encodings(req.headers()) })
}

/// The content codings a client takes (`q=0` excluded), as bits: what an origin chooses its
/// encoding from.
pub fn accepted_encodings(headers: &HeaderMap) -> u8 {
    let mut bits = 0;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .is_some_and(|q| q.trim_end_matches('0') == "0." || q == "0")
            });
            if refused {
                continue;
            }
            bits |= match coding.to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" => 1,
                "br" => 2,
                "zstd" => 4,
                "deflate" => 8,
                "*" => 16,
                _ => 0,
            };
        }
    }
    bits
}

#[derive(Default)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    must_revalidate: bool,
}

fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let (name, arg) = match item.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (item.trim(), None),
            };
            let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                // `no-cache="field"` only restricts those fields; taken whole here, to be safe.
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "max-age" => d.max_age = seconds().or(Some(0)),
                "s-maxage" => d.s_maxage = seconds().or(Some(0)),
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                _ => {}
            }
        }
    }
    d
}

fn request_directives(headers: &HeaderMap) -> Directives {
    let mut d = directives(headers);
    let pragma = headers.get(header::PRAGMA).and_then(|v| v.to_str().ok());
    if pragma.is_some_and(|p| p.to_ascii_lowercase().contains("no-cache"))
        && !headers.contains_key(header::CACHE_CONTROL)
    {
        d.no_cache = true;
    }
    // `max-age=0` from a client (a browser's reload) asks for a fresh answer.
    if d.max_age == Some(0) {
        d.no_cache = true;
    }
    d
}

/// `Vary` absent, or naming only Accept-Encoding (which the key already holds).
fn varies_on_encoding_at_most(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').map(str::trim).all(|f| f.is_empty() || f.eq_ignore_ascii_case("accept-encoding"))
        })
    })
}

/// Freshness from `Expires` (against `Date`, else now); an invalid `Expires` means already
/// stale (RFC 9111 §5.3).
fn expires_in(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(header::DATE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

fn age_of(headers: &HeaderMap) -> u64 {
    headers.get(header::AGE).and_then(|v| v.to_str().ok()?.trim().parse().ok()).unwrap_or(0)
}

/// The cached answer for `req`: the entry whole (no body for HEAD), or 304 when the client's
/// validators match it.
fn answer_from<B>(entry: &Entry, req: &Request<B>) -> Response<ProxyBody> {
    let age = entry.age_at_store + entry.stored_at.elapsed().as_secs();
    if not_modified(entry, req.headers()) {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        for name in
            [header::ETAG, header::LAST_MODIFIED, header::CACHE_CONTROL, header::EXPIRES, header::VARY, header::DATE]
        {
            for value in entry.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::AGE, HeaderValue::from(age));
        return response;
    }
    let body = if req.method() == Method::HEAD { ProxyBody::empty() } else { ProxyBody::full(entry.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(header::AGE, HeaderValue::from(age));
    response
}

/// RFC 9110 §13.2.2: `If-None-Match` decides when present, else `If-Modified-Since`.
fn not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    if let Some(wanted) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = entry.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return wanted.split(',').any(|t| t.trim() == "*" || opaque(t) == opaque(etag));
    }
    let since = request.get(header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    let modified =
        entry.headers.get(header::LAST_MODIFIED).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<Cache> {
        Arc::new(Cache::new(CacheConfig {
            max_bytes: 4096,
            max_object_bytes: 1024,
            max_age: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            lock_timeout: Duration::ZERO,
        }))
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(path).header("host", "www.example.org");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn answer(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn fill(c: &Arc<Cache>, path: &str, headers: &[(&str, &str)], body: &str) {
        let Lookup::Miss(key, _) = c.lookup(&get(path, &[]), false, true) else { panic!("expected a miss") };
        let h = answer(headers);
        let lifetime = c.lifetime(StatusCode::OK, &h).expect("storable");
        c.store(key, StatusCode::OK, h, Bytes::from(body.to_string()), lifetime);
    }

    #[test]
    fn what_is_stored_and_for_how_long() {
        let c = cache();
        let life = |h: &[(&str, &str)]| c.lifetime(StatusCode::OK, &answer(h));
        assert_eq!(life(&[("cache-control", "public, max-age=10")]), Some(Duration::from_secs(10)));
        assert_eq!(
            life(&[("cache-control", "max-age=10, s-maxage=20")]),
            Some(Duration::from_secs(20)),
            "s-maxage first"
        );
        assert_eq!(life(&[("cache-control", "max-age=3600")]), Some(Duration::from_secs(60)), "capped at max_age");
        assert_eq!(life(&[("cache-control", "max-age=10"), ("age", "4")]), Some(Duration::from_secs(6)));
        assert_eq!(life(&[("etag", "\"v1\"")]), Some(Duration::from_secs(60)), "a validator alone: max_age");
        assert_eq!(life(&[]), None, "nothing says it may be kept");
        for no in ["no-store", "private, max-age=10", "no-cache", "max-age=0"] {
            assert_eq!(life(&[("cache-control", no)]), None, "{no}");
        }
        assert_eq!(life(&[("cache-control", "max-age=10"), ("set-cookie", "a=b")]), None);
        assert_eq!(life(&[("cache-control", "max-age=10"), ("vary", "Cookie")]), None);
        assert!(life(&[("cache-control", "max-age=10"), ("vary", "Accept-Encoding")]).is_some());
        assert_eq!(life(&[("cache-control", "max-age=10"), ("content-length", "2048")]), None, "over max_object_bytes");
        assert_eq!(life(&[("expires", "garbage")]), None, "an invalid Expires is already stale");
        let (date, later) = ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:30 GMT");
        assert_eq!(life(&[("date", date), ("expires", later)]), Some(Duration::from_secs(30)));
        assert_eq!(c.lifetime(StatusCode::NOT_FOUND, &answer(&[("cache-control", "max-age=10")])), None);
    }

    #[test]
    fn a_fresh_entry_answers_get_head_and_conditional_requests() {
        let c = cache();
        let validators = [("cache-control", "max-age=30"), ("etag", "W/\"v1\""), ("content-length", "5")];
        fill(&c, "/a.css", &validators, "hello");
        let Lookup::Hit(r) = c.lookup(&get("/a.css", &[]), false, true) else { panic!("no hit") };
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["age"], "0");
        let Lookup::Hit(r) = c.lookup(&get("/a.css", &[("if-none-match", "\"v0\", \"v1\"")]), false, true) else {
            panic!()
        };
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()["etag"], "W/\"v1\"");
        let head = Request::head("/a.css").header("host", "www.example.org").body(()).unwrap();
        assert!(matches!(c.lookup(&head, false, true), Lookup::Hit(_)));
        assert_eq!((c.hits.load(Ordering::Relaxed), c.misses.load(Ordering::Relaxed)), (3, 1));

        assert!(matches!(c.lookup(&get("/a.css", &[]), true, true), Lookup::Miss(..)), "https is another entry");
        assert!(matches!(c.lookup(&get("/a.css", &[("accept-encoding", "gzip")]), false, true), Lookup::Miss(..)));
        assert!(matches!(c.lookup(&get("/a.css?v=2", &[]), false, true), Lookup::Miss(..)));
        assert!(matches!(c.lookup(&get("/a.css", &[("authorization", "Basic eDp5")]), false, true), Lookup::Bypass));
        assert!(matches!(c.lookup(&get("/a.css", &[("cache-control", "no-cache")]), false, true), Lookup::Miss(..)));
        assert!(matches!(c.lookup(&get("/a.css", &[("cache-control", "no-store")]), false, true), Lookup::Bypass));
    }

    #[test]
    fn a_stale_entry_stands_in_only_within_its_window_and_when_its_server_allows() {
        let c =
            Arc::new(Cache::new(CacheConfig { stale_if_error: Duration::from_millis(600), ..cache().config.clone() }));
        let key = |path: &str| key_of(&get(path, &[]), false).unwrap();
        let h = answer(&[("cache-control", "max-age=30")]);
        c.store(key("/a"), StatusCode::OK, h.clone(), Bytes::from_static(b"a"), Duration::from_millis(20));
        let strict = answer(&[("cache-control", "max-age=30, proxy-revalidate")]);
        c.store(key("/strict"), StatusCode::OK, strict, Bytes::from_static(b"s"), Duration::from_millis(20));
        let shared = answer(&[("cache-control", "s-maxage=30")]);
        c.store(key("/shared"), StatusCode::OK, shared, Bytes::from_static(b"s"), Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(40));
        // Past freshness: a miss, but kept for the servers' failures.
        assert!(matches!(c.lookup(&get("/a", &[]), false, true), Lookup::Miss(..)));
        let stale = c.stale_answer(&key("/a")).expect("within the window");
        assert_eq!((stale.status(), stale.headers().contains_key("age")), (StatusCode::OK, true));
        assert!(c.stale_answer(&key("/strict")).is_none(), "proxy-revalidate");
        assert!(c.stale_answer(&key("/shared")).is_none(), "s-maxage implies proxy-revalidate");
        std::thread::sleep(Duration::from_millis(650));
        assert!(c.stale_answer(&key("/a")).is_none(), "past the window");
        assert_eq!(c.stale_hits.load(Ordering::Relaxed), 1);
        let off = cache();
        off.store(key("/a"), StatusCode::OK, h, Bytes::from_static(b"a"), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(off.stale_answer(&key("/a")).is_none(), "off by default");
    }

    #[test]
    fn with_the_lock_one_request_fetches_and_the_others_wait_for_what_it_stores() {
        let c =
            Arc::new(Cache::new(CacheConfig { lock_timeout: Duration::from_millis(1000), ..cache().config.clone() }));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let Lookup::Miss(key, Some(filling)) = c.lookup(&get("/hot", &[]), false, true) else { panic!("the fetcher") };
        let Lookup::Wait(waited, notify) = c.lookup(&get("/hot", &[]), false, true) else { panic!("a waiter") };
        assert_eq!(waited, key);
        // The fetcher stores its answer and lets go: the waiter wakes at once and hits.
        let waiting = {
            let c = c.clone();
            rt.spawn(async move {
                let started = Instant::now();
                c.wait_for(&waited, notify).await;
                started.elapsed()
            })
        };
        rt.block_on(tokio::task::yield_now());
        let h = answer(&[("cache-control", "max-age=30")]);
        c.store(key, StatusCode::OK, h, Bytes::from_static(b"hot"), Duration::from_secs(30));
        drop(filling);
        let waited_for = rt.block_on(waiting).unwrap();
        assert!(waited_for < Duration::from_millis(1000), "woken by the fetch, not the timeout: {waited_for:?}");
        assert!(matches!(c.lookup(&get("/hot", &[]), false, false), Lookup::Hit(_)));

        // A fetcher that never lets go holds the others for the lock timeout only, and then
        // they go on their own (without waiting again).
        let Lookup::Miss(_, Some(_stuck)) = c.lookup(&get("/cold", &[]), false, true) else { panic!() };
        let Lookup::Wait(key, notify) = c.lookup(&get("/cold", &[]), false, true) else { panic!() };
        rt.block_on(c.wait_for(&key, notify));
        assert!(matches!(c.lookup(&get("/cold", &[]), false, false), Lookup::Miss(_, None)));
        // Without the lock, every miss fetches.
        assert!(matches!(cache().lookup(&get("/x", &[]), false, true), Lookup::Miss(_, None)));
    }

    #[test]
    fn a_purge_drops_everything_or_a_path_prefix_on_every_host() {
        let c = cache();
        for path in ["/static/a.css", "/static/b.js", "/index.html"] {
            fill(&c, path, &[("cache-control", "max-age=30")], "x");
        }
        assert_eq!(c.purge(Some("/static/")), 2);
        assert!(matches!(c.lookup(&get("/static/a.css", &[]), false, true), Lookup::Miss(..)));
        assert!(matches!(c.lookup(&get("/index.html", &[]), false, true), Lookup::Hit(_)));
        assert_eq!(c.purge(None), 1);
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn unsafe_methods_drop_the_entries_of_their_path() {
        let c = cache();
        fill(&c, "/item", &[("cache-control", "max-age=30")], "v1");
        let post = Request::post("/item").header("host", "www.example.org").body(()).unwrap();
        assert!(matches!(c.lookup(&post, false, true), Lookup::Bypass));
        assert!(matches!(c.lookup(&get("/item", &[]), false, true), Lookup::Miss(..)));
    }

    #[test]
    fn the_least_recently_used_entries_make_room() {
        let c = cache();
        let body = "x".repeat(900);
        for path in ["/1", "/2", "/3", "/4"] {
            fill(&c, path, &[("cache-control", "max-age=30")], &body);
        }
        assert!(matches!(c.lookup(&get("/1", &[]), false, true), Lookup::Hit(_)), "used: kept");
        fill(&c, "/5", &[("cache-control", "max-age=30")], &body);
        let (entries, bytes) = c.usage();
        assert!(bytes <= 4096 && entries == 4, "{entries} entries, {bytes} bytes");
        assert!(matches!(c.lookup(&get("/2", &[]), false, true), Lookup::Miss(..)), "the oldest went");
        assert!(matches!(c.lookup(&get("/1", &[]), false, true), Lookup::Hit(_)));
    }

    #[test]
    fn accepted_encodings_leave_out_what_q_0_refuses() {
        let bits = |v: &str| accepted_encodings(&answer(&[("accept-encoding", v)]));
        assert_eq!(bits("gzip, deflate, br"), 1 | 8 | 2);
        assert_eq!(bits("br;q=1.0, gzip;q=0"), 2);
        assert_eq!(bits("gzip;q=0.000"), 0);
        assert_eq!(bits("identity"), 0);
    }
}
