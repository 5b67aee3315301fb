//! The proxy's config file: listeners with routes (nginx's `location` by longest prefix), and
//! upstream pools of servers with health checks (HAProxy's `backend`).
//!
//! ```toml
//! name = "lb-01"
//! workers = 1                      # threads serving connections (HAProxy's nbthread); 0: one
//!                                  # per CPU. Read at start; a reload keeps the running count.
//! shutdown_timeout_ms = 10000      # on shutdown, in-flight requests (a long download) get
//!                                  # this long to finish (HAProxy's hard-stop-after, nginx's
//!                                  # worker_shutdown_timeout)
//! [admin]
//! bind = "127.0.1.1:8404"          # /healthz, /ready, /metrics, /stats, /ha
//! allow = ["10.0.0.0/8"]           # optional: only these clients use it at all (default: any)
//! change_from = ["127.0.0.0/8", "::1"]   # who may reload and change servers (POST): by
//!                                  # default this host only (HAProxy's stats admin if LOCALHOST)
//! [ha]                             # optional: a load-balancer pair sharing a VIP
//! id = 1                           # distinct per node; ties of priority go to the higher id
//! priority = 200                   # 1..254, the highest is MASTER
//! bind = "127.0.1.1:5405"          # adverts (UDP) from and to here
//! peers = ["127.0.1.2:5405"]
//! vip = "127.0.1.10"               # listeners on it are bound only while MASTER
//! key = "a shared secret of 16+ chars"   # adverts are authenticated with it
//! advert_interval_ms = 50
//! preempt = true
//! preempt_delay_ms = 1000
//! witnesses = ["127.0.2.1:8080"]   # MASTER only while a majority of these answers a connect
//! interface = "eth0"               # optional, on a host with its own network stack: the MASTER
//!                                  # adds the VIP to this interface (netlink) and announces it
//!                                  # with gratuitous ARP; a BACKUP removes it. Needs root.
//! [error_pages]                    # optional: files (relative to this one) sent instead of
//! 503 = "errors/503.html"          # the proxy's own short pages (HAProxy's errorfile)
//! [access_log]
//! path = "/var/log/webstack/access.log"   # "-" for stderr; or, instead:
//! # syslog = "127.0.0.1:514"       # a syslog daemon (UDP ip:port, or "/dev/log"), one RFC 3164
//! # facility = "local0"            # datagram per line, as HAProxy's log / nginx's syslog:
//! # tag = "webstack"               # (lines a daemon cannot take are dropped, never waited on)
//! format = "combined"              # or "json", or "custom" with its line (nginx's log_format):
//! # line = '$remote_addr [$time_local] "$request" $status $body_bytes_sent $request_time $pool/$server $request_id'
//! #   variables: remote_addr remote_port time_local time_iso8601 msec request request_method
//! #   request_uri uri args server_protocol status body_bytes_sent request_time http_referer
//! #   http_user_agent request_id listener pool server ssl_client_verify ssl_client_s_dn
//! #   (`${name}` before letters)
//! [resolvers]                      # optional (HAProxy's resolvers section): servers written
//!                                  # with a host name are resolved through these nameservers
//!                                  # at load and asked again while the proxy runs
//! nameservers = ["10.0.0.2:53"]    # ip or ip:port, tried in order (default: /etc/resolv.conf's)
//! hold_valid_ms = 10000            # how often each name is asked (HAProxy's hold valid)
//! timeout_ms = 1000                # how long one nameserver has to answer
//!
//! [[listeners]]
//! name = "www"
//! bind = "127.0.1.10:8080"
//! trust_forwarded = false          # true behind another proxy: keep its X-Forwarded-*
//! accept_proxy = false             # true behind a layer-4 balancer that sends the PROXY
//!                                  # protocol (v1 or v2; HAProxy's accept-proxy): the client
//!                                  # is the one it names; a connection without it is closed
//! max_header_bytes = 65536         # request line and headers; more is 431
//! max_headers = 100                # more is 431
//! max_body_bytes = 0               # 0: no limit; more is 413 (nginx's client_max_body_size)
//! client_timeout_ms = 30000        # a request's headers must arrive within it, a body may go
//!                                  # silent no longer (408), a client that reads nothing of
//!                                  # its answer that long is cut off, and an idle connection
//!                                  # is closed (HAProxy's timeout client; nginx's
//!                                  # client_*_timeout, send_timeout, http2_idle_timeout)
//! max_connections_per_client = 20  # optional: connections from one address at once; more
//!                                  # are closed at once (HAProxy's tcp-request connection
//!                                  # reject if { src_conn_cur ge 20 }, nginx's limit_conn)
//! max_connections = 10000          # optional: client connections at once (HAProxy's maxconn);
//!                                  # more wait in the kernel's backlog until one closes
//! compress = true                  # gzip/brotli text answers on the fly (nginx's gzip on)
//! compress_min_bytes = 1024
//! redirect_https_port = 8443       # optional: answer every request with a redirect to HTTPS
//!                                  # (301 for GET and HEAD, 308 otherwise)
//! [listeners.tls]                  # optional: this listener speaks HTTPS
//! hsts_max_age = 31536000          # optional: Strict-Transport-Security on every answer
//! client_ca = "clients.pem"       # optional (nginx's ssl_client_certificate, HAProxy's
//!                                  # ca-file + verify): clients must show a certificate of
//!                                  # these CAs; $ssl_client_verify, $ssl_client_s_dn,
//!                                  # $ssl_client_i_dn, $ssl_client_serial,
//!                                  # $ssl_client_fingerprint for request_headers
//! verify_client = "required"       # or "optional": a client without one is let in (NONE)
//! [[listeners.tls.certificates]]   # chosen by SNI; the first is the default
//! cert = "/etc/webstack/foobar.com.pem"      # the chain, leaf first
//! key = "/etc/webstack/foobar.com-key.pem"
//! [[listeners.routes]]                # nginx's location: exact paths first, then longest prefix
//! host = "shop.example.org"        # optional (nginx's server_name): only for this Host, or
//!                                  # "*.example.org"; the routes of the most specific matching
//!                                  # host are the only ones tried, routes without one otherwise
//! prefix = "/static/"
//! request_headers = { set = { "X-Env" = "prod" }, remove = ["X-Debug"] }    # to the pool
//! response_headers = { set = { "X-Frame-Options" = "DENY" }, remove = ["Server"] }
//!                                  # request values may hold $host, $scheme, $remote_addr,
//!                                  # $remote_port, $server_port, $request_uri, $uri, $args,
//!                                  # $ssl_client_* (a listener with client_ca)
//!                                  # (nginx's proxy_set_header / add_header, HAProxy's
//!                                  # http-request / http-response set-header, del-header)
//! allow = ["10.0.0.0/8"]           # optional: only these clients (nginx's allow); others 403
//! basic_auth = { realm = "Staff", users_file = "staff.htpasswd" }
//!                                  # optional: HTTP Basic against an htpasswd file (relative
//!                                  # to this one; bcrypt, $6$, $5$, $apr1$), else 401
//! deny = ["10.6.6.0/24"]           # optional: never these, checked first (nginx's deny)
//! rate_limit = { requests_per_second = 10, burst = 20 }
//!                                  # optional, per client address: `burst` at once (default:
//!                                  # one second's worth), then the rate; beyond it 429 with
//!                                  # Retry-After (nginx's limit_req with nodelay)
//!                                  # key = "header:X-Api-Key" (or "cookie:sid"): per value
//!                                  # instead; a request without one counts per address
//! static_root = "/srv/static"      # the prefix is replaced by this directory (nginx's alias)
//! index = ["index.html"]           # tried for a directory
//! cache_control = "public, max-age=3600"
//! precompressed = true             # FILE.br / FILE.gz for clients that accept them
//! [[listeners.routes]]                # conditions (HAProxy's ACLs, nginx's regex locations):
//! prefix = "/"                     # each given must hold; for one path, routes with
//! suffix = [".css", ".js"]         # conditions are tried first, in file order
//! methods = ["GET", "HEAD"]
//! header = { name = "X-Canary", value = "1" }   # no value: the header present at all
//! pool = "assets"
//! [[listeners.routes]]
//! exact = "/old-shop"
//! redirect = { to = "/", status = 301 }   # `to` may hold $scheme, $host, $request_uri,
//!                                  # $uri, $args: "https://www.foobar.com$request_uri"
//! [[listeners.routes]]
//! exact = "/robots.txt"
//! respond = { status = 200, body = "User-agent: *\nDisallow:\n" }
//! [[listeners.routes]]
//! prefix = "/"
//! pool = "web"
//!
//! [pools.web]
//! balance = "roundrobin"           # leastconn, random, source, uri, hdr(NAME), cookie(NAME)
//! sticky_cookie = "SERVERID"       # optional: pins a client to the server that served it
//! slow_start_ms = 10000            # a server back from DOWN ramps up over this time
//! served_by_header = true          # adds X-Served-By: <server name> to responses
//! connect_timeout_ms = 1000
//! first_byte_timeout_ms = 30000    # from sending the request to the response's headers
//! idle_timeout_ms = 60000          # longest silence while a response body streams
//! tunnel_timeout_ms = 3600000      # a WebSocket (any upgraded connection) silent both ways
//!                                  # this long is closed (HAProxy's timeout tunnel)
//! queue_timeout_ms = 1000          # how long a request waits for a server under its maxconn
//!                                  # (HAProxy's timeout queue; default: connect_timeout_ms)
//! protocol = "http1"              # or "h2": HTTP/2 to the servers, over TLS (ALPN h2) with
//!                                  # [pools.P.tls], else without ("h2c" says so); HAProxy's
//!                                  # proto h2, gRPC: one multiplexed connection per server,
//!                                  # trailers passed on; HTTP checks go over HTTP/2 too;
//!                                  # a stream the server refused or left past its GOAWAY
//!                                  # goes again (any method; a body up to 64 KiB is kept
//!                                  # for it)
//! intercept_errors = false         # true: a server's answer whose status [error_pages] has a
//!                                  # page for gets that page (nginx's proxy_intercept_errors);
//!                                  # WWW-Authenticate, Retry-After, Allow stay
//! retry_on = ["503", "response-timeout"]   # optional (HAProxy's retry-on, nginx's
//!                                  # proxy_next_upstream http_503 timeout): an idempotent
//!                                  # request without a body that got such an answer (a status
//!                                  # 400-599) or none within first_byte_timeout_ms goes to
//!                                  # another server, within the retry budget; when none is
//!                                  # left the last answer goes to the client. Also
//!                                  # "all-retryable-errors" (a timeout, 500, 502, 503, 504)
//! agent = { port = 9999, interval_ms = 2000 }   # optional (HAProxy's agent-check): each
//!                                  # server's agent says "75%", "drain", "maint", "ready",
//!                                  # "down" or "up"; the weight (from the configured one),
//!                                  # admin state and state follow
//! send_proxy = "v2"                # optional, v1 or v2: each connection to a server opens with
//!                                  # a PROXY protocol header naming the client (HAProxy's
//!                                  # send-proxy[-v2]); such connections serve that client only,
//!                                  # and checks on the servers' own port send a LOCAL one
//! [pools.web.tls]                 # optional: HTTPS to the servers (HAProxy's server … ssl
//!                                  # verify required ca-file … sni …); checks use it too
//! ca = "ca.pem"                    # the CA (PEM) their certificates must chain to, relative
//!                                  # to this file
//! server_name = "web.internal"     # optional: SNI and the name verified (default: the host
//!                                  # name of the server's address, else its IP address)
//! cert = "lb.pem"                  # optional, with key: shown to servers that ask for a
//! key = "lb-key.pem"               # client certificate (mutual TLS; HAProxy's crt)
//! [pools.web.passive]
//! failures = 3                     # connect failures or 5xx in a row take a server out
//! cooldown_ms = 10000              # back after this when the pool has no active check
//! [pools.web.health]
//! kind = "http"                    # or "tcp": a connect passes
//! path = "/healthz"
//! host = "www.foobar.com"          # optional Host of the check (default: the server's
//!                                  # address as written)
//! expect_status = [200]            # optional: these pass (default: any 2xx or 3xx), as
//!                                  # HAProxy's http-check expect status
//! expect_body = "\"db\":\"up\""      # optional: and only if the body (its first 16 KiB)
//!                                  # holds this text (HAProxy's http-check expect string)
//! method = "GET"                   # or HEAD, OPTIONS (HAProxy's option httpchk METHOD)
//! headers = { "X-Health-Token" = "s3cr3t" }   # optional: sent with every check (HAProxy's
//!                                  # http-check send hdr)
//! port = 8081                      # optional: check this port of each server instead of
//!                                  # the one traffic goes to (HAProxy's check port)
//! interval_ms = 1000
//! timeout_ms = 1000
//! rise = 2
//! fall = 3
//! [pools.web.cache]                # optional: answers kept in memory and served again while
//!                                  # fresh (HAProxy's cache section, nginx's proxy_cache): 200s
//!                                  # to GET that say how long they keep (max-age, s-maxage,
//!                                  # Expires) or carry an ETag/Last-Modified; never private,
//!                                  # no-store, with Set-Cookie, or for a request with
//!                                  # Authorization. Age and 304s as a cache gives them.
//! max_bytes = 67108864             # all entries (HAProxy's total-max-size); least recently
//!                                  # used go first
//! max_object_bytes = 1048576       # one answer's body (HAProxy's max-object-size)
//! max_age_ms = 60000               # the longest an answer is served (HAProxy's max-age)
//! stale_if_error_ms = 0            # an answer this long past its freshness still answers when
//!                                  # the servers fail (500/502/503/504, or none): nginx's
//!                                  # proxy_cache_use_stale error timeout http_5xx; never one
//!                                  # that said must-revalidate, proxy-revalidate or s-maxage
//! lock_timeout_ms = 0              # >0: one request fetches a missing entry, the others for
//!                                  # it wait up to this long for what it stores (nginx's
//!                                  # proxy_cache_lock + proxy_cache_lock_timeout)
//! [[pools.web.server_templates]]   # optional, with [resolvers] (HAProxy's server-template):
//! name = "web"                     # servers web1…web5 filled from every address DNS gives
//! count = 5                        # the name; a slot without one takes no requests
//! address = "web.service.internal:8080"
//! [[pools.web.servers]]
//! name = "server-01"
//! address = "127.0.2.1:8080"       # or "web-01.internal:8080": resolved when the config is
//!                                  # loaded, and again at each reload (HAProxy's init-addr);
//!                                  # with [resolvers], also every hold_valid_ms: the server
//!                                  # follows its name, and takes no requests while DNS says
//!                                  # the name has no address; or "unix:/run/app.sock" (also
//!                                  # HAProxy's "unix@…"; relative to this file): a server on
//!                                  # this host's Unix socket (no tls, agent or check port)
//! weight = 1                       # 0 to 256; 0 takes no new requests
//! backup = false                   # true: only used when every other server is down
//! maxconn = 0                      # at most this many requests at once; more wait in the
//!                                  # pool's queue, then 503 (HAProxy's maxconn); 0: no limit
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use webstack_config::{ConfigErrors, Source};

use crate::balancer::Algorithm;
use crate::tls::{self, CertFiles};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    #[serde(default = "one_worker")]
    workers: usize,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout_ms: u64,
    admin: Option<RawAdmin>,
    access_log: Option<RawAccessLog>,
    ha: Option<RawHa>,
    listeners: Vec<RawListener>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    /// Status code → file, relative to this config file.
    #[serde(default)]
    error_pages: BTreeMap<String, PathBuf>,
    resolvers: Option<RawResolvers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolvers {
    /// `ip:port`, or `ip` for port 53; none: those of /etc/resolv.conf.
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default = "default_hold_valid")]
    hold_valid_ms: u64,
    #[serde(default = "default_answer_timeout")]
    timeout_ms: u64,
}

fn default_hold_valid() -> u64 {
    10_000
}
/// How long a nameserver, a health check or an agent has to answer.
fn default_answer_timeout() -> u64 {
    1_000
}

fn one_worker() -> usize {
    1
}

fn default_shutdown_timeout() -> u64 {
    10_000
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: SocketAddr,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default = "default_change_from")]
    change_from: Vec<String>,
}

fn default_change_from() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    id: u32,
    priority: u8,
    bind: SocketAddr,
    #[serde(default)]
    peers: Vec<SocketAddr>,
    vip: std::net::Ipv4Addr,
    key: String,
    #[serde(default = "default_advert_interval")]
    advert_interval_ms: u64,
    #[serde(default = "default_true")]
    preempt: bool,
    #[serde(default)]
    preempt_delay_ms: u64,
    #[serde(default)]
    witnesses: Vec<SocketAddr>,
    #[serde(default)]
    interface: Option<String>,
}

fn default_advert_interval() -> u64 {
    50
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    /// A file, `-` for stderr; or `syslog`.
    path: Option<PathBuf>,
    /// A syslog daemon: `ip:port` (UDP) or a socket path (`/dev/log`).
    syslog: Option<String>,
    #[serde(default = "default_syslog_facility")]
    facility: String,
    #[serde(default = "default_syslog_tag")]
    tag: String,
    #[serde(default = "default_log_format")]
    format: String,
    /// With `format = "custom"`: the line, with nginx's `$variables`.
    line: Option<String>,
}

fn default_log_format() -> String {
    "combined".into()
}

/// HAProxy's habit (nginx's default is local7).
fn default_syslog_facility() -> String {
    "local0".into()
}

fn default_syslog_tag() -> String {
    "webstack".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassive {
    #[serde(default = "default_passive_failures")]
    failures: u32,
    #[serde(default = "default_cooldown")]
    cooldown_ms: u64,
}

fn default_client_timeout() -> u64 {
    30_000
}
fn default_passive_failures() -> u32 {
    3
}
fn default_cooldown() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    bind: SocketAddr,
    #[serde(default)]
    trust_forwarded: bool,
    #[serde(default)]
    accept_proxy: bool,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    max_headers: usize,
    #[serde(default)]
    max_body_bytes: u64,
    #[serde(default = "default_client_timeout")]
    client_timeout_ms: u64,
    /// At most this many client connections at once; more wait in the kernel's backlog.
    max_connections: Option<usize>,
    /// At most this many connections from one client address at once; more are closed.
    max_connections_per_client: Option<u32>,
    redirect_https_port: Option<u16>,
    #[serde(default)]
    compress: bool,
    #[serde(default = "default_compress_min_bytes")]
    compress_min_bytes: u64,
    tls: Option<RawTls>,
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    hsts_max_age: Option<u64>,
    certificates: Vec<RawCertificate>,
    /// CA certificates (PEM, relative to the config) client certificates are verified
    /// against; clients are then asked for one.
    client_ca: Option<PathBuf>,
    /// `required` (the default with `client_ca`) or `optional`.
    verify_client: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<String>,
    prefix: Option<String>,
    exact: Option<String>,
    pool: Option<String>,
    static_root: Option<PathBuf>,
    /// With `static_root`: files tried for a directory, in order.
    #[serde(default = "default_index")]
    index: Vec<String>,
    /// With `static_root`: the Cache-Control header of its files.
    cache_control: Option<String>,
    /// With `static_root`: serve `FILE.br` / `FILE.gz` to clients that accept them.
    #[serde(default)]
    precompressed: bool,
    redirect: Option<RawRedirect>,
    respond: Option<RawRespond>,
    #[serde(default)]
    request_headers: RawHeaderRules,
    #[serde(default)]
    response_headers: RawHeaderRules,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    rate_limit: Option<RawRateLimit>,
    /// With `pool`: the matched path is replaced by this on the way to the server.
    replace_prefix: Option<String>,
    /// Only paths ending with one of these (ASCII case ignored).
    #[serde(default)]
    suffix: Vec<String>,
    /// Only requests with one of these methods.
    #[serde(default)]
    methods: Vec<String>,
    /// Only requests with this header (and this value, when given).
    header: Option<RawHeaderMatch>,
    basic_auth: Option<RawBasicAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    realm: String,
    /// An htpasswd file, relative to the config file.
    users_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_second: f64,
    burst: Option<u32>,
    /// `client` (the default), `header:NAME` or `cookie:NAME`.
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn default_index() -> Vec<String> {
    vec!["index.html".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    to: String,
    #[serde(default = "default_redirect_status")]
    status: u16,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    #[serde(default = "default_respond_status")]
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default = "default_respond_type")]
    content_type: String,
}

fn default_respond_status() -> u16 {
    200
}

fn default_respond_type() -> String {
    "text/plain; charset=utf-8".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default = "default_balance")]
    balance: String,
    #[serde(default)]
    served_by_header: bool,
    sticky_cookie: Option<String>,
    #[serde(default)]
    slow_start_ms: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_first_byte_timeout")]
    first_byte_timeout_ms: u64,
    #[serde(default = "default_idle_timeout")]
    idle_timeout_ms: u64,
    #[serde(default = "default_tunnel_timeout")]
    tunnel_timeout_ms: u64,
    /// How long a request waits for a server under its `maxconn` (HAProxy's `timeout queue`);
    /// absent: the connect timeout, as in HAProxy.
    queue_timeout_ms: Option<u64>,
    passive: Option<RawPassive>,
    health: Option<RawHealth>,
    tls: Option<RawUpstreamTls>,
    cache: Option<RawCache>,
    /// `v1` or `v2`: each connection to a server opens with a PROXY protocol header.
    send_proxy: Option<String>,
    agent: Option<RawAgent>,
    /// `http1` (the default), `h2` (HTTP/2: over TLS with ALPN h2 when the pool has `tls`,
    /// else cleartext) or `h2c` (HTTP/2 without TLS).
    protocol: Option<String>,
    /// What else sends a request to another server (HAProxy's `retry-on`): statuses,
    /// `response-timeout`.
    #[serde(default)]
    retry_on: Vec<String>,
    /// The servers' error answers with a status `[error_pages]` has a page for get that page
    /// instead (nginx's `proxy_intercept_errors`).
    #[serde(default)]
    intercept_errors: bool,
    #[serde(default)]
    servers: Vec<RawServer>,
    #[serde(default)]
    server_templates: Vec<RawServerTemplate>,
}

/// HAProxy's `agent-check`: each server's agent, on a port of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    port: u16,
    #[serde(default = "default_agent_interval")]
    interval_ms: u64,
    #[serde(default = "default_answer_timeout")]
    timeout_ms: u64,
}

fn default_agent_interval() -> u64 {
    2_000
}

/// HAProxy's `server-template`: `count` servers named `name1`…`nameN`, filled from every
/// address DNS gives for one host name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTemplate {
    name: String,
    count: u32,
    /// `host:port`.
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    maxconn: u32,
}

/// More slots than this in one template is a typo.
const MAX_TEMPLATE_SLOTS: u32 = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "default_cache_bytes")]
    max_bytes: u64,
    #[serde(default = "default_cache_object_bytes")]
    max_object_bytes: u64,
    #[serde(default = "default_cache_age")]
    max_age_ms: u64,
    /// How long past its freshness an entry answers for servers that fail (0: never).
    #[serde(default)]
    stale_if_error_ms: u64,
    /// How long a request waits for another fetching the same entry (0: the lock is off).
    #[serde(default)]
    lock_timeout_ms: u64,
}

fn default_cache_bytes() -> u64 {
    64 << 20
}
fn default_cache_object_bytes() -> u64 {
    1 << 20
}
fn default_cache_age() -> u64 {
    60_000
}

/// Past this, a cache's size is a typo (and memory the host has not got).
const MAX_CACHE_BYTES: u64 = 64 << 30;

fn validate_cache(raw: &RawCache, field: &str, err: &mut impl FnMut(String, String)) -> crate::cache::CacheConfig {
    if raw.max_bytes == 0 || raw.max_bytes > MAX_CACHE_BYTES {
        err(format!("{field}.cache.max_bytes"), format!("must be from 1 to {MAX_CACHE_BYTES}"));
    }
    if raw.max_object_bytes == 0 || raw.max_object_bytes > raw.max_bytes {
        err(format!("{field}.cache.max_object_bytes"), "must be from 1 to max_bytes".into());
    }
    if raw.max_age_ms < 1000 {
        err(format!("{field}.cache.max_age_ms"), "must be at least 1000 (ages are counted in seconds)".into());
    }
    at_most_a_week(raw.max_age_ms, format!("{field}.cache.max_age_ms"), err);
    at_most_a_week(raw.stale_if_error_ms, format!("{field}.cache.stale_if_error_ms"), err);
    at_most_a_week(raw.lock_timeout_ms, format!("{field}.cache.lock_timeout_ms"), err);
    crate::cache::CacheConfig {
        max_bytes: usize::try_from(raw.max_bytes).unwrap_or(usize::MAX),
        max_object_bytes: usize::try_from(raw.max_object_bytes).unwrap_or(usize::MAX),
        max_age: Duration::from_millis(raw.max_age_ms),
        stale_if_error: Duration::from_millis(raw.stale_if_error_ms),
        lock_timeout: Duration::from_millis(raw.lock_timeout_ms),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: PathBuf,
    server_name: Option<String>,
    /// The proxy's own certificate, for servers that ask for one (mutual TLS).
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn default_compress_min_bytes() -> u64 {
    1024
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}

fn default_balance() -> String {
    "roundrobin".into()
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_first_byte_timeout() -> u64 {
    30_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
/// An hour, what HAProxy users commonly give `timeout tunnel` for WebSockets.
fn default_tunnel_timeout() -> u64 {
    3_600_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    /// `http` (GET path, 2xx/3xx pass) or `tcp` (a connect passes).
    #[serde(default = "default_health_kind")]
    kind: HealthKind,
    #[serde(default = "default_health_path")]
    path: String,
    host: Option<String>,
    expect_status: Option<Vec<u16>>,
    expect_body: Option<String>,
    /// Header fields every check sends (HAProxy's `http-check send hdr`).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_health_method")]
    method: String,
    port: Option<u16>,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    #[serde(default = "default_answer_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
}

fn default_health_kind() -> HealthKind {
    HealthKind::Http
}

fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_method() -> String {
    "GET".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    /// `ip:port`, or `host:port` resolved at load.
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
    /// At most this many requests at once (HAProxy's `maxconn`); 0: no limit.
    #[serde(default)]
    maxconn: u32,
}

fn default_weight() -> u32 {
    1
}

/// HAProxy's limit on server weights.
pub const MAX_WEIGHT: u32 = 256;

/// A validated proxy config.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The file it was loaded from, read again on reload.
    pub source: Option<PathBuf>,
    pub name: String,
    /// Threads serving connections, resolved (`0` in the file: one per CPU).
    pub workers: usize,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    pub admin: Option<SocketAddr>,
    /// Who may read the admin listener, and who may change things through it.
    pub admin_access: AdminAccess,
    pub access_log: Option<AccessLogConfig>,
    /// Load-balancer redundancy: listeners on the VIP are bound only while MASTER.
    pub ha: Option<HaConfig>,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    /// Pages the proxy sends instead of its own short ones, by status.
    pub error_pages: Vec<(http::StatusCode, ErrorPage)>,
    /// Nameservers that server host names are resolved through, at load and again at run time.
    pub resolvers: Option<Resolvers>,
}

/// HAProxy's `resolvers` section: where and how often server host names are asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolvers {
    pub nameservers: Vec<SocketAddr>,
    /// How often each name is asked (HAProxy's `hold valid`).
    pub hold_valid: Duration,
    /// How long one nameserver has to answer.
    pub timeout: Duration,
}

/// A page of the operator's for an error the proxy answers itself (HAProxy's `errorfile`,
/// nginx's `error_page`).
#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub body: bytes::Bytes,
    pub content_type: http::HeaderValue,
}

/// The longest timeout or interval: longer is a typo, and far longer would overflow the clock
/// when a deadline is computed.
const MAX_MILLIS: u64 = 7 * 24 * 3600 * 1000;

fn at_most_a_week(value: u64, field: String, err: &mut impl FnMut(String, String)) {
    if value > MAX_MILLIS {
        err(field, format!("{value} is more than a week ({MAX_MILLIS} ms)"));
    }
}

/// An interval or timeout that must pass at all: above 0, at most a week.
fn some_time_up_to_a_week(value: u64, field: String, err: &mut impl FnMut(String, String)) {
    match value {
        0 => err(field, "must be more than 0".into()),
        _ => at_most_a_week(value, field, err),
    }
}

/// Error pages are read whole at load; a larger file is a mistake.
const MAX_ERROR_PAGE_BYTES: u64 = 1 << 20;

/// Reads the `[error_pages]` table: each key a 4xx or 5xx status, each file readable.
fn load_error_pages(
    raw: &BTreeMap<String, PathBuf>,
    base: &Path,
    err: &mut impl FnMut(String, String),
) -> Vec<(http::StatusCode, ErrorPage)> {
    let mut pages = Vec::new();
    for (key, file) in raw {
        let field = format!("error_pages.{key}");
        let status = match key.parse::<u16>().ok().filter(|s| (400..=599).contains(s)) {
            Some(code) => http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            None => {
                err(field, format!("`{key}` is not a 4xx or 5xx status"));
                continue;
            }
        };
        let path = base.join(file);
        let body = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_ERROR_PAGE_BYTES => {
                err(field, format!("{}: larger than {MAX_ERROR_PAGE_BYTES} bytes", path.display()));
                continue;
            }
            Ok(_) => std::fs::read(&path),
            Err(e) => Err(e),
        };
        match body {
            Ok(body) => {
                let content_type = match path.extension().and_then(|e| e.to_str()) {
                    Some("html" | "htm") => "text/html; charset=utf-8",
                    Some("json") => "application/json",
                    _ => "text/plain; charset=utf-8",
                };
                let content_type = http::HeaderValue::from_static(content_type);
                pages.push((status, ErrorPage { body: body.into(), content_type }));
            }
            Err(e) => err(field, format!("{}: {e}", path.display())),
        }
    }
    pages
}

#[derive(Debug, Clone)]
pub struct HaConfig {
    pub node: ha::Config,
    /// Where adverts are sent from and received.
    pub bind: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub vip: std::net::Ipv4Addr,
    pub key: String,
    /// Seen by a majority: the quorum. None configured: always in quorum (keepalived's way).
    pub witnesses: Vec<SocketAddr>,
    /// The interface that carries the VIP on a host with its own network stack; `None` on
    /// loopback hosts, where the VIP moves by binding its listeners.
    pub interface: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub destination: crate::access_log::Destination,
    pub format: crate::access_log::Format,
}

/// The answers that say a server failed a request (nginx's `http_500 http_502 http_503
/// http_504`; HAProxy's all-retryable-errors statuses).
pub const SERVER_FAILURES: [u16; 4] = [500, 502, 503, 504];

/// What, besides a request that could not be sent, sends an idempotent request without a
/// body to another server within the retry budget (HAProxy's `retry-on`, nginx's
/// `proxy_next_upstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Statuses 400 to 599, one bit each from 400.
    statuses: [u64; 4],
    /// No response head within the first-byte timeout.
    pub response_timeout: bool,
}

impl RetryOn {
    /// From HAProxy's words: a status from 400 to 599, `response-timeout`,
    /// `all-retryable-errors` (a timeout, 500, 502, 503, 504); `conn-failure`,
    /// `empty-response` and `junk-response` are always on here.
    fn add(&mut self, word: &str) -> Result<(), String> {
        match word {
            "response-timeout" => self.response_timeout = true,
            "all-retryable-errors" => {
                self.response_timeout = true;
                for status in SERVER_FAILURES {
                    self.add_status(status);
                }
            }
            "conn-failure" | "empty-response" | "junk-response" => {}
            _ => match word.parse::<u16>() {
                Ok(status @ 400..=599) => self.add_status(status),
                _ => {
                    return Err(format!(
                        "`{word}` is not something to retry on: a status from 400 to 599, \
                         `response-timeout` or `all-retryable-errors`"
                    ))
                }
            },
        }
        Ok(())
    }

    fn add_status(&mut self, status: u16) {
        let bit = usize::from(status - 400);
        self.statuses[bit / 64] |= 1 << (bit % 64);
    }

    /// Whether an answer with this status goes to another server.
    pub fn status(&self, status: http::StatusCode) -> bool {
        match status.as_u16().checked_sub(400).map(usize::from) {
            Some(bit) if bit < 200 => self.statuses[bit / 64] & (1 << (bit % 64)) != 0,
            _ => false,
        }
    }
}

/// Passive health: taken out after `failures` connect failures or 5xx answers in a row.
#[derive(Debug, Clone)]
pub struct Passive {
    pub failures: u32,
    /// When the pool has no active check, how long a server stays out.
    pub cooldown: Duration,
}

/// Who may use the admin listener. Reading (metrics, stats) is open unless `allow` narrows
/// it; changing (reload, drain, weights) is for `change_from` alone, this host by default:
/// the admin address is often reachable by the monitoring host, and a scraper must not be
/// able to drain the site.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    pub allow: Vec<crate::access::Cidr>,
    pub change_from: Vec<crate::access::Cidr>,
}

impl Default for AdminAccess {
    fn default() -> Self {
        let loopback = default_change_from().iter().filter_map(|c| crate::access::Cidr::parse(c).ok()).collect();
        AdminAccess { allow: Vec::new(), change_from: loopback }
    }
}

impl AdminAccess {
    pub fn may_read(&self, client: std::net::IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(client))
    }

    pub fn may_change(&self, client: std::net::IpAddr) -> bool {
        self.may_read(client) && self.change_from.iter().any(|c| c.contains(client))
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub trust_forwarded: bool,
    /// Connections open with a PROXY protocol header (v1 or v2) naming the client.
    pub accept_proxy: bool,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// How long a request's headers may take, and how long its body may go silent.
    pub client_timeout: Duration,
    /// Client connections served at once (HAProxy's frontend maxconn); `None`: no limit.
    pub max_connections: Option<usize>,
    /// Connections from one client address at once (HAProxy's `src_conn_cur` rejection,
    /// nginx's `limit_conn`); `None`: no limit.
    pub max_connections_per_client: Option<u32>,
    /// Every request is redirected to HTTPS on this port.
    pub redirect_https_port: Option<u16>,
    /// Compress text answers of at least `compress_min_bytes` for clients that accept it.
    pub compress: bool,
    pub compress_min_bytes: u64,
    pub tls: Option<Tls>,
    /// Longest prefix first, so the first match wins.
    pub routes: Vec<Route>,
    /// Some route names a host: requests are matched on their Host first.
    pub virtual_hosts: bool,
}

impl Listener {
    /// The route for a request to `host` (lowercase, no port; `None` when the request named
    /// none) and `path`: among the routes of the most specific host that matches (an exact
    /// name, then the longest wildcard, then routes without a host), the first whose path
    /// matches, as nginx picks a server block and then a location in it.
    pub fn route_for(
        &self,
        host: Option<&str>,
        path: &str,
        method: &http::Method,
        headers: &http::HeaderMap,
    ) -> Option<&Route> {
        let takes = |r: &&Route| r.matches(path) && r.conditions.as_ref().is_none_or(|c| c.hold(path, method, headers));
        if !self.virtual_hosts {
            return self.routes.iter().find(takes);
        }
        let rank = |r: &Route| r.host.as_ref().map_or(Some(HostRank::Default), |h| host.and_then(|n| h.rank(n)));
        let best = self.routes.iter().filter_map(rank).max()?;
        self.routes.iter().filter(|r| rank(r) == Some(best)).find(takes)
    }
}

/// A Host header's (or an authority's) name as routes name hosts: lowercase, without the
/// port or a trailing dot. `[v6]:port`, `name:port` or `name`.
pub fn host_name(raw: &str) -> Option<String> {
    let name = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => raw.rsplit_once(':').map_or(raw, |(name, _)| name),
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

/// A route's host: one name, or every name under a domain (`*.example.org`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix, with its leading dot: `.example.org`.
    Wildcard(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// How well a host pattern matches: a default route least, then wildcards by length, then an
/// exact name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostRank {
    Default,
    Wildcard(usize),
    Exact,
}

impl HostPattern {
    fn parse(text: &str) -> Result<HostPattern, String> {
        let name = text.to_ascii_lowercase();
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, name.clone()),
        };
        let label_ok =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if rest.is_empty() || rest.len() > 253 || !rest.split('.').all(label_ok) {
            return Err(format!("`{text}` is not a host name like shop.example.org or *.example.org (no port)"));
        }
        Ok(match wildcard {
            true => HostPattern::Wildcard(format!(".{rest}")),
            false => HostPattern::Exact(rest),
        })
    }

    fn rank(&self, host: &str) -> Option<HostRank> {
        match self {
            HostPattern::Exact(name) => (name == host).then_some(HostRank::Exact),
            HostPattern::Wildcard(suffix) => (host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .then_some(HostRank::Wildcard(suffix.len())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub acceptor: tls::Acceptor,
    pub files: Vec<CertFiles>,
    /// `Strict-Transport-Security: max-age=…` on every answer.
    pub hsts: Option<http::HeaderValue>,
}

/// A route, as nginx's `location`: an exact path (`location = /x`) wins, else the longest
/// matching prefix.
#[derive(Debug, Clone)]
pub struct Route {
    /// `None`: for any host without routes of its own.
    pub host: Option<HostPattern>,
    pub path: String,
    pub exact: bool,
    pub target: RouteTarget,
    /// Headers set or removed on the way to the pool and on the way back; `None` for most.
    pub headers: Option<Arc<HeaderRules>>,
    /// Which clients may use it; `None`: everyone.
    pub access: Option<Arc<crate::access::Access>>,
    /// Requests per client address; `None`: no limit. A reload starts it afresh.
    pub rate_limit: Option<Arc<crate::rate_limit::RateLimit>>,
    /// What the matched path becomes on the way to the pool (nginx's `proxy_pass` with a
    /// URI, HAProxy's `replace-path`); `None`: the path goes on as it came.
    pub replace_prefix: Option<Arc<str>>,
    /// What a request must also have for this route to take it; `None` for most.
    pub conditions: Option<Arc<Conditions>>,
    /// Users who may use it (HTTP Basic); `None`: no authentication.
    pub basic_auth: Option<Arc<crate::basic_auth::BasicAuth>>,
}

/// A route's conditions beyond host and path (HAProxy's ACLs on `use_backend`: `path_end`,
/// `method`, `hdr`; nginx's `location ~* \.(css|js)$`). Every one given must hold.
#[derive(Debug, Default)]
pub struct Conditions {
    /// Lowercase; the path ends with one of them (ASCII case ignored).
    pub suffixes: Vec<String>,
    pub methods: Vec<http::Method>,
    /// The header, and the value it must have (`None`: present with any value).
    pub header: Option<(http::HeaderName, Option<http::HeaderValue>)>,
}

impl Conditions {
    pub fn hold(&self, path: &str, method: &http::Method, headers: &http::HeaderMap) -> bool {
        let ends_so = |suffix: &String| {
            path.len() >= suffix.len()
                && path.as_bytes()[path.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        (self.suffixes.is_empty() || self.suffixes.iter().any(ends_so))
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.header.as_ref().is_none_or(|(name, value)| match value {
                None => headers.contains_key(name),
                Some(value) => headers.get_all(name).iter().any(|v| v == value),
            })
    }
}

/// Headers a route sets (replacing any) and removes, on requests and on responses.
#[derive(Debug, Default)]
pub struct HeaderRules {
    pub request_set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request values with `$variables`, filled per request (nginx's `proxy_set_header
    /// X-Forwarded-Host $host`).
    pub request_templates: Vec<(http::HeaderName, Box<str>)>,
    pub request_remove: Vec<http::HeaderName>,
    pub response_set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub response_remove: Vec<http::HeaderName>,
}

impl HeaderRules {
    pub fn apply_to_request(&self, headers: &mut http::HeaderMap) {
        apply(headers, &self.request_remove, &self.request_set);
    }

    pub fn apply_to_response(&self, headers: &mut http::HeaderMap) {
        apply(headers, &self.response_remove, &self.response_set);
    }

    /// The request values with variables, filled by `value`; a value the request cannot
    /// give (no host) or that is no header value leaves its header out.
    pub fn templated_values<'v>(
        &self,
        value: impl Fn(&str) -> Option<std::borrow::Cow<'v, str>>,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        self.request_templates
            .iter()
            .filter_map(|(name, template)| {
                let text = expand_variables(template, &REQUEST_HEADER_VARIABLES, &value).ok()?;
                Some((name.clone(), http::HeaderValue::from_str(&text).ok()?))
            })
            .collect()
    }
}

fn apply(headers: &mut http::HeaderMap, remove: &[http::HeaderName], set: &[(http::HeaderName, http::HeaderValue)]) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value) in set {
        headers.insert(name.clone(), value.clone());
    }
}

/// Headers that frame the message or route it: the proxy owns them, no rule may touch them.
const PROXY_OWNED_HEADERS: [&str; 7] =
    ["content-length", "transfer-encoding", "connection", "host", "upgrade", "te", "trailer"];

/// A check's extra header fields: valid names and values, none the check itself writes.
fn check_headers(
    raw: &BTreeMap<String, String>,
    field: &str,
    err: &mut impl FnMut(String, String),
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let parsed = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value));
        match parsed {
            (Ok(n), _) if ["host", "connection", "content-length", "transfer-encoding"].contains(&n.as_str()) => {
                err(field.to_string(), format!("`{name}`: the check writes it itself (Host: use `host`)"))
            }
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => err(field.to_string(), format!("`{name}` is not a header name")),
            (_, Err(_)) => err(field.to_string(), format!("the value of `{name}` is not a header value")),
        }
    }
    headers
}

/// What a route's header rules set, set with `$variables` (requests only), and remove.
type ParsedRules =
    (Vec<(http::HeaderName, http::HeaderValue)>, Vec<(http::HeaderName, Box<str>)>, Vec<http::HeaderName>);

fn header_rules(
    raw: &RawHeaderRules,
    field: &str,
    variables: bool,
    err: &mut impl FnMut(String, String),
) -> ParsedRules {
    let (mut set, mut templates) = (Vec::new(), Vec::new());
    for (name, value) in &raw.set {
        let Some(header) = header_name(name, format!("{field}.set"), err) else { continue };
        let Ok(fixed) = http::HeaderValue::from_str(value) else {
            err(format!("{field}.set"), format!("the value of `{name}` is not a header value"));
            continue;
        };
        let names_a_variable =
            value.split('$').skip(1).any(|rest| rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        if !(variables && names_a_variable) {
            set.push((header, fixed));
            continue;
        }
        // Checked with stand-in values: an unknown variable is found now, not on a request.
        match expand_variables(value, &REQUEST_HEADER_VARIABLES, |_| Some("x".into())) {
            Ok(_) => templates.push((header, value.as_str().into())),
            Err(e) => err(format!("{field}.set"), format!("the value of `{name}`: {e}")),
        }
    }
    let remove = raw.remove.iter().filter_map(|name| header_name(name, format!("{field}.remove"), err)).collect();
    (set, templates, remove)
}

fn header_name(name: &str, field: String, err: &mut impl FnMut(String, String)) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if PROXY_OWNED_HEADERS.contains(&n.as_str()) => {
            err(field, format!("`{name}` frames or routes the message; the proxy sets it, not a rule"));
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            err(field, format!("`{name}` is not a header name"));
            None
        }
    }
}

impl Route {
    pub fn matches(&self, path: &str) -> bool {
        match self.exact {
            true => path == self.path,
            false => path.starts_with(&self.path),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteTarget {
    /// Index into [`ProxyConfig::pools`].
    Pool(usize),
    Static(StaticRoute),
    Redirect {
        to: String,
        status: http::StatusCode,
    },
    Respond {
        status: http::StatusCode,
        body: bytes::Bytes,
        content_type: http::HeaderValue,
    },
}

/// Files under a directory that replaces the route's prefix (nginx's `alias`).
#[derive(Debug, Clone)]
pub struct StaticRoute {
    pub root: PathBuf,
    /// The root opened once, for `openat2(RESOLVE_BENEATH)`: one syscall per file and no
    /// way out of the root, symlinks included.
    pub root_dir: Arc<std::fs::File>,
    pub index: Vec<String>,
    pub cache_control: Option<http::HeaderValue>,
    pub precompressed: bool,
    /// Small files in memory, checked against the disk on each request.
    pub cache: Arc<crate::static_files::FileCache>,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub sticky_cookie: Option<String>,
    pub slow_start: Duration,
    pub served_by_header: bool,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// An upgraded connection (WebSocket) silent both ways this long is closed.
    pub tunnel_timeout: Duration,
    /// How long a request waits in the queue when every server is at its `maxconn`.
    pub queue_timeout: Duration,
    pub passive: Option<Passive>,
    pub health: Option<Health>,
    /// TLS to the servers, verified against the pool's CA.
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Answers kept in memory and served again while fresh.
    pub cache: Option<crate::cache::CacheConfig>,
    /// Connections to the servers open with a PROXY protocol header naming the client
    /// (HAProxy's send-proxy); they then serve that client only.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// Each server's agent, asked how it is doing (HAProxy's `agent-check`).
    pub agent: Option<crate::agent::AgentConfig>,
    /// HTTP/2 to the servers (HAProxy's `proto h2`, `alpn h2` with `ssl`): one multiplexed
    /// connection per server, trailers passed on (gRPC).
    pub http2: bool,
    pub retry_on: RetryOn,
    /// Statuses of the servers' answers replaced by the proxy's error page for them.
    pub intercepted: Vec<http::StatusCode>,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub kind: HealthKind,
    pub path: String,
    /// The check's Host header; `None`: the server's address as written (`host:port` or
    /// `ip:port`).
    pub host: Option<String>,
    /// The statuses that pass; `None`: any 2xx or 3xx.
    pub expect_status: Option<Vec<u16>>,
    /// Text the answer's body must contain to pass.
    pub expect_body: Option<String>,
    /// Header fields every check sends, validated.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// GET, HEAD or OPTIONS.
    pub method: String,
    /// The port checks go to, when not the server's own.
    pub port: Option<u16>,
    /// Checks open with a LOCAL PROXY header, as HAProxy's do on a send-proxy server checked
    /// on its own port.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// Checks speak HTTP/2, as the pool does (`protocol = "h2"` or `"h2c"`).
    pub http2: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The pool's TLS: checks go over it as requests do.
    pub tls: Option<crate::tls::UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub address: SocketAddr,
    /// The host name the address was resolved from, when the config gave one: the default
    /// name for TLS and for health checks' Host.
    pub host: Option<String>,
    pub weight: u32,
    pub backup: bool,
    /// At most this many requests at once; more wait in the pool's queue.
    pub maxconn: Option<u32>,
    /// The `server_templates` entry this server is a slot of.
    pub template: Option<String>,
    /// A template's slot that DNS gave no address at load: it waits for one, taking no
    /// requests (its `address` is only a placeholder with the port).
    pub unresolved: bool,
    /// A server on this host's Unix socket (`address = "unix:/run/app.sock"`); its `address`
    /// is then only a placeholder.
    pub unix: Option<PathBuf>,
}

impl ProxyConfig {
    /// Reads and validates a proxy config file.
    pub fn load(path: impl AsRef<Path>) -> Result<ProxyConfig, ConfigErrors> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    /// Validates a config; server host names are resolved through the `[resolvers]`
    /// nameservers when it has them, else through the system's resolver.
    pub fn from_source(src: &Source) -> Result<ProxyConfig, ConfigErrors> {
        Self::validate(src, None)
    }

    /// As [`ProxyConfig::from_source`], server host names resolved by `resolve` (tests and
    /// fuzzing, which must not ask the network).
    pub fn from_source_resolving(src: &Source, resolve: Resolver<'_>) -> Result<ProxyConfig, ConfigErrors> {
        Self::validate(src, Some(resolve))
    }

    fn validate(src: &Source, given: Option<Resolver<'_>>) -> Result<ProxyConfig, ConfigErrors> {
        let raw: RawConfig = src.parse()?;
        let mut errors = Vec::new();
        let mut err = |field: String, msg: String| errors.push(src.error_at(&field, msg));

        let resolvers = raw.resolvers.as_ref().map(|r| validate_resolvers(r, &mut err));
        let through_nameservers = |host: &str, port: u16| match &resolvers {
            Some(r) => resolve_through(r, host, port),
            None => system_resolver(host, port),
        };
        let resolve: Resolver<'_> = given.unwrap_or(&through_nameservers);

        if raw.workers > MAX_WORKERS {
            err("workers".into(), format!("{} is more than {MAX_WORKERS}; 0 means one per CPU", raw.workers));
        }
        if raw.name.trim().is_empty() {
            err("name".into(), "must not be empty".into());
        }
        let pool_names: Vec<&String> = raw.pools.keys().collect();
        let mut binds = BTreeSet::new();
        if let Some(admin) = &raw.admin {
            binds.insert(admin.bind);
        }
        at_most_a_week(raw.shutdown_timeout_ms, "shutdown_timeout_ms".into(), &mut err);
        if raw.listeners.is_empty() {
            err("listeners".into(), "at least one [[listeners]] is needed".into());
        }
        // Files a config names (error pages, CAs, users) are relative to it.
        let base = src.path().parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            if !binds.insert(l.bind) {
                err(format!("{field}.bind"), format!("{} is bound twice in this file", l.bind));
            }
            if l.routes.is_empty() {
                err(format!("{field}.routes"), "a listener needs at least one route".into());
            }
            let mut routes = Vec::new();
            let mut seen = BTreeSet::new();
            for (j, r) in l.routes.iter().enumerate() {
                let field = format!("{field}.routes[{j}]");
                if let Some(route) = validate_route(r, &field, &base, &pool_names, &mut seen, &mut err) {
                    routes.push(route);
                }
            }
            // Exact routes first, then prefixes longest first, and for one path the routes with
            // conditions before the one without, in file order: the first that takes it wins.
            routes.sort_by_key(|r| (!r.exact, std::cmp::Reverse(r.path.len()), r.conditions.is_none()));
            // hyper needs room for at least one read: below 8 KiB it refuses the setting.
            if l.max_header_bytes < 8192 {
                err(format!("{field}.max_header_bytes"), format!("{} is below the minimum 8192", l.max_header_bytes));
            }
            if l.max_headers == 0 {
                err(format!("{field}.max_headers"), "must be at least 1".into());
            }
            if l.client_timeout_ms == 0 {
                err(format!("{field}.client_timeout_ms"), "must be at least 1".into());
            }
            at_most_a_week(l.client_timeout_ms, format!("{field}.client_timeout_ms"), &mut err);
            if l.max_connections_per_client == Some(0) {
                err(
                    format!("{field}.max_connections_per_client"),
                    "must be at least 1 (leave it out for no limit)".into(),
                );
            }
            if l.max_connections == Some(0) {
                err(format!("{field}.max_connections"), "must be at least 1 (leave it out for no limit)".into());
            }
            listeners.push(Listener {
                name: l.name.clone(),
                bind: l.bind,
                trust_forwarded: l.trust_forwarded,
                accept_proxy: l.accept_proxy,
                max_header_bytes: l.max_header_bytes,
                max_headers: l.max_headers,
                max_body_bytes: (l.max_body_bytes > 0).then_some(l.max_body_bytes),
                client_timeout: Duration::from_millis(l.client_timeout_ms.max(1)),
                max_connections: l.max_connections,
                max_connections_per_client: l.max_connections_per_client,
                redirect_https_port: l.redirect_https_port,
                compress: l.compress,
                compress_min_bytes: l.compress_min_bytes,
                tls: l.tls.as_ref().and_then(|t| load_tls(t, &base, &field, &mut err)),
                virtual_hosts: routes.iter().any(|r| r.host.is_some()),
                routes,
            });
        }

        // Files named in the config (a pool's CA, error pages) are relative to it.
        let mut pools = Vec::new();
        for (name, p) in &raw.pools {
            let field = format!("pools.{name}");
            let algorithm = Algorithm::parse(&p.balance).unwrap_or_else(|e| {
                err(format!("{field}.balance"), e);
                Algorithm::RoundRobin
            });
            if let Some(cookie) = &p.sticky_cookie {
                if cookie.is_empty() || !cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                    err(
                        format!("{field}.sticky_cookie"),
                        format!("`{cookie}` is not a cookie name (letters, digits, - and _)"),
                    );
                }
            }
            if p.servers.is_empty() && p.server_templates.is_empty() {
                err(format!("{field}.servers"), "a pool needs at least one server".into());
            }
            if p.connect_timeout_ms == 0 {
                err(format!("{field}.connect_timeout_ms"), "must be more than 0".into());
            }
            if p.first_byte_timeout_ms == 0 {
                err(format!("{field}.first_byte_timeout_ms"), "must be more than 0".into());
            }
            if p.idle_timeout_ms == 0 {
                err(format!("{field}.idle_timeout_ms"), "must be more than 0".into());
            }
            if p.tunnel_timeout_ms == 0 {
                err(format!("{field}.tunnel_timeout_ms"), "must be more than 0".into());
            }
            let durations = [
                ("connect_timeout_ms", Some(p.connect_timeout_ms)),
                ("first_byte_timeout_ms", Some(p.first_byte_timeout_ms)),
                ("idle_timeout_ms", Some(p.idle_timeout_ms)),
                ("tunnel_timeout_ms", Some(p.tunnel_timeout_ms)),
                ("queue_timeout_ms", p.queue_timeout_ms),
                ("slow_start_ms", Some(p.slow_start_ms)),
                ("passive.cooldown_ms", p.passive.as_ref().map(|x| x.cooldown_ms)),
                ("health.interval_ms", p.health.as_ref().map(|h| h.interval_ms)),
                ("health.timeout_ms", p.health.as_ref().map(|h| h.timeout_ms)),
            ];
            for (key, value) in durations {
                if let Some(value) = value {
                    at_most_a_week(value, format!("{field}.{key}"), &mut err);
                }
            }
            if p.passive.as_ref().is_some_and(|x| x.failures == 0) {
                err(format!("{field}.passive.failures"), "must be at least 1".into());
            }
            let mut retry_on = RetryOn::default();
            for (j, word) in p.retry_on.iter().enumerate() {
                if let Err(e) = retry_on.add(word) {
                    err(format!("{field}.retry_on[{j}]"), e);
                }
            }
            let mut names = BTreeSet::new();
            let mut addresses = Vec::new();
            for (j, s) in p.servers.iter().enumerate() {
                if s.name.is_empty() || !s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    err(
                        format!("{field}.servers[{j}].name"),
                        format!("`{}` is not a server name (letters, digits, - _ .)", s.name),
                    );
                }
                if !names.insert(s.name.clone()) {
                    err(format!("{field}.servers[{j}].name"), format!("server `{}` is in this pool twice", s.name));
                }
                let unix = unix_socket_path(&s.address, &base);
                match unix
                    .as_ref()
                    .map_or_else(|| server_address(&s.address, resolve), |_| Ok((UNIX_PLACEHOLDER, None)))
                {
                    Ok(resolved) if unix.is_some() => addresses.push(resolved),
                    Ok((address, _)) if address.port() == 0 => {
                        err(format!("{field}.servers[{j}].address"), "port 0 is not a server's port".into())
                    }
                    Ok(resolved) => addresses.push(resolved),
                    Err(e) => err(format!("{field}.servers[{j}].address"), e),
                }
                if s.weight > MAX_WEIGHT {
                    err(
                        format!("{field}.servers[{j}].weight"),
                        format!("{} is above the maximum weight {MAX_WEIGHT}", s.weight),
                    );
                }
            }
            let mut servers: Vec<Server> = p
                .servers
                .iter()
                .zip(addresses)
                .map(|(s, (address, host))| Server {
                    name: s.name.clone(),
                    address,
                    host,
                    weight: s.weight,
                    backup: s.backup,
                    maxconn: (s.maxconn > 0).then_some(s.maxconn),
                    template: None,
                    unresolved: false,
                    unix: unix_socket_path(&s.address, &base),
                })
                .collect();
            for (k, t) in p.server_templates.iter().enumerate() {
                let field = format!("{field}.server_templates[{k}]");
                let slots = template_servers(t, &field, resolvers.is_some(), resolve, &mut err);
                for slot in slots {
                    if !names.insert(slot.name.clone()) {
                        err(format!("{field}.name"), format!("server `{}` is in this pool twice", slot.name));
                    }
                    servers.push(slot);
                }
            }
            if servers.iter().any(|s| s.unix.is_some()) {
                // Each of these reaches the server by its IP address, which a socket has not.
                let without_ip = [
                    ("tls", p.tls.is_some(), "TLS to a server on a Unix socket"),
                    ("agent", p.agent.is_some(), "an agent (on the server's IP address) for a server on a Unix socket"),
                    (
                        "health.port",
                        p.health.as_ref().is_some_and(|h| h.port.is_some()),
                        "a check port for a server on a Unix socket",
                    ),
                ];
                for (key, given, what) in without_ip {
                    if given {
                        err(format!("{field}.{key}"), format!("{what} is not supported"));
                    }
                }
            }
            let tls = p.tls.as_ref().and_then(|t| load_upstream_tls(t, &base, &field, &mut err));
            let cache = p.cache.as_ref().map(|c| validate_cache(c, &field, &mut err));
            let http2 = match p.protocol.as_deref() {
                None | Some("http1") => false,
                Some(protocol @ ("h2" | "h2c")) => {
                    if protocol == "h2c" && p.tls.is_some() {
                        err(format!("{field}.protocol"), "h2c is HTTP/2 without TLS; with tls, say h2".into());
                    }
                    if p.send_proxy.is_some() {
                        err(
                            format!("{field}.protocol"),
                            "an HTTP/2 connection carries every client; send_proxy needs one per client".into(),
                        );
                    }
                    true
                }
                Some(other) => {
                    err(format!("{field}.protocol"), format!("`{other}`: expected http1, h2 or h2c"));
                    false
                }
            };
            let agent = p.agent.as_ref().map(|a| {
                if a.port == 0 {
                    err(format!("{field}.agent.port"), "port 0 is not an agent's port".into());
                }
                for (key, value) in [("interval_ms", a.interval_ms), ("timeout_ms", a.timeout_ms)] {
                    some_time_up_to_a_week(value, format!("{field}.agent.{key}"), &mut err);
                }
                crate::agent::AgentConfig {
                    port: a.port,
                    interval: Duration::from_millis(a.interval_ms),
                    timeout: Duration::from_millis(a.timeout_ms),
                }
            });
            let send_proxy = match p.send_proxy.as_deref() {
                None => None,
                Some("v1") => Some(crate::proxy_protocol::Version::V1),
                Some("v2") => Some(crate::proxy_protocol::Version::V2),
                Some(other) => {
                    err(format!("{field}.send_proxy"), format!("`{other}`: expected v1 or v2"));
                    None
                }
            };
            let health = p.health.as_ref().map(|h| {
                if !h.path.starts_with('/') || !h.path.bytes().all(|b| b.is_ascii_graphic()) {
                    err(format!("{field}.health.path"), format!("`{}` must start with / and have no spaces", h.path));
                }
                if let Some(host) = &h.host {
                    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
                        err(format!("{field}.health.host"), format!("`{host}` is not a host name"));
                    }
                }
                if let Some(expect) = &h.expect_status {
                    if expect.is_empty() {
                        err(format!("{field}.health.expect_status"), "lists no status".into());
                    }
                    if let Some(bad) = expect.iter().find(|s| !(100..=599).contains(*s)) {
                        err(format!("{field}.health.expect_status"), format!("{bad} is not an HTTP status"));
                    }
                }
                for (key, value) in [("interval_ms", h.interval_ms), ("timeout_ms", h.timeout_ms)] {
                    if value == 0 {
                        err(format!("{field}.health.{key}"), "must be more than 0".into());
                    }
                }
                if !["GET", "HEAD", "OPTIONS"].contains(&h.method.as_str()) {
                    err(format!("{field}.health.method"), format!("`{}`: a check is GET, HEAD or OPTIONS", h.method));
                }
                if h.port == Some(0) {
                    err(format!("{field}.health.port"), "port 0 is not a port to check".into());
                }
                match &h.expect_body {
                    Some(_) if h.kind == HealthKind::Tcp => {
                        err(format!("{field}.health.expect_body"), "a tcp check reads no answer".into())
                    }
                    Some(_) if h.method == "HEAD" => {
                        err(format!("{field}.health.expect_body"), "an answer to HEAD has no body".into())
                    }
                    Some(text) if text.is_empty() || text.len() > crate::health::CHECK_BODY_LIMIT => err(
                        format!("{field}.health.expect_body"),
                        format!("must be 1 to {} bytes", crate::health::CHECK_BODY_LIMIT),
                    ),
                    _ => {}
                }
                for (key, value) in [("rise", h.rise), ("fall", h.fall)] {
                    if value == 0 {
                        err(format!("{field}.health.{key}"), "must be at least 1".into());
                    }
                }
                Health {
                    kind: h.kind,
                    path: h.path.clone(),
                    host: h.host.clone(),
                    expect_status: h.expect_status.clone(),
                    expect_body: h.expect_body.clone(),
                    headers: check_headers(&h.headers, &format!("{field}.health.headers"), &mut err),
                    method: h.method.clone(),
                    port: h.port,
                    send_proxy: send_proxy.filter(|_| h.port.is_none()),
                    http2: matches!(p.protocol.as_deref(), Some("h2" | "h2c")),
                    interval: Duration::from_millis(h.interval_ms),
                    timeout: Duration::from_millis(h.timeout_ms),
                    rise: h.rise,
                    fall: h.fall,
                    // An HTTP/2 pool's checks offer h2 in ALPN, as its requests do.
                    tls: if http2 { tls.as_ref().map(crate::tls::UpstreamTls::http2) } else { tls.clone() },
                }
            });
            pools.push(Pool {
                name: name.clone(),
                algorithm,
                sticky_cookie: p.sticky_cookie.clone(),
                slow_start: Duration::from_millis(p.slow_start_ms),
                served_by_header: p.served_by_header,
                connect_timeout: Duration::from_millis(p.connect_timeout_ms),
                first_byte_timeout: Duration::from_millis(p.first_byte_timeout_ms),
                idle_timeout: Duration::from_millis(p.idle_timeout_ms),
                tunnel_timeout: Duration::from_millis(p.tunnel_timeout_ms),
                queue_timeout: Duration::from_millis(p.queue_timeout_ms.unwrap_or(p.connect_timeout_ms)),
                passive: p
                    .passive
                    .as_ref()
                    .map(|x| Passive { failures: x.failures, cooldown: Duration::from_millis(x.cooldown_ms) }),
                health,
                tls,
                cache,
                send_proxy,
                agent,
                http2,
                retry_on,
                intercepted: match p.intercept_errors {
                    true => {
                        raw.error_pages.keys().filter_map(|k| http::StatusCode::from_bytes(k.as_bytes()).ok()).collect()
                    }
                    false => Vec::new(),
                },
                servers,
            });
        }

        if let Some(h) = &raw.ha {
            if h.priority == 0 || h.priority == 255 {
                err("ha.priority".into(), "must be from 1 to 254 (0 means leaving, 255 is reserved)".into());
            }
            if h.advert_interval_ms == 0 || h.advert_interval_ms > u16::MAX as u64 {
                err("ha.advert_interval_ms".into(), "must be from 1 to 65535".into());
            }
            if h.key.len() < 16 {
                err("ha.key".into(), "use a shared key of at least 16 characters".into());
            }
            if !listeners.iter().any(|l| l.bind.ip() == std::net::IpAddr::V4(h.vip)) {
                err("ha.vip".into(), format!("no listener binds {}; the VIP's listeners are what MASTER holds", h.vip));
            }
            if let Some(name) = &h.interface {
                // IFNAMSIZ is 16 with the NUL; `/`, whitespace and `:` never appear in one.
                let bad = |b: u8| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0;
                if name.is_empty() || name.len() > 15 || name.bytes().any(bad) {
                    err(
                        "ha.interface".into(),
                        format!("`{name}` is not a network interface name (1 to 15 characters)"),
                    );
                }
            }
        }
        let admin_access = raw.admin.as_ref().map_or_else(AdminAccess::default, |a| {
            let blocks =
                |list: &[String], key: &str, err: &mut dyn FnMut(String, String)| -> Vec<crate::access::Cidr> {
                    list.iter()
                        .filter_map(|text| {
                            crate::access::Cidr::parse(text).map_err(|e| err(format!("admin.{key}"), e)).ok()
                        })
                        .collect()
                };
            AdminAccess {
                allow: blocks(&a.allow, "allow", &mut err),
                change_from: blocks(&a.change_from, "change_from", &mut err),
            }
        });
        let error_pages = load_error_pages(&raw.error_pages, &base, &mut err);
        let access_log = raw.access_log.as_ref().and_then(|a| {
            use crate::access_log::{Destination, Format, Syslog};
            let destination = match (&a.path, &a.syslog) {
                (Some(path), None) => Destination::File(path.clone()),
                (None, Some(to)) => match Syslog::from_config(to, &a.facility, &a.tag) {
                    Ok(syslog) => Destination::Syslog(syslog),
                    Err((key, e)) => {
                        err(format!("access_log.{key}"), e);
                        return None;
                    }
                },
                _ => {
                    err("access_log".into(), "give `path` (a file, - for stderr) or `syslog`, one of them".into());
                    return None;
                }
            };
            match Format::from_config(&a.format, a.line.as_deref()) {
                Ok(format) => Some(AccessLogConfig { destination, format }),
                Err((key, e)) => {
                    err(format!("access_log.{key}"), e);
                    None
                }
            }
        });
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let ha = raw.ha.as_ref().map(|h| HaConfig {
            node: ha::Config {
                id: h.id,
                priority: h.priority,
                advert_interval: Duration::from_millis(h.advert_interval_ms),
                preempt: h.preempt,
                preempt_delay: Duration::from_millis(h.preempt_delay_ms),
            },
            bind: h.bind,
            peers: h.peers.clone(),
            vip: h.vip,
            key: h.key.clone(),
            witnesses: h.witnesses.clone(),
            interface: h.interface.clone(),
        });
        Ok(ProxyConfig {
            source: Some(src.path().to_path_buf()),
            error_pages,
            resolvers,
            ha,
            name: raw.name,
            workers: match raw.workers {
                0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                n => n,
            },
            shutdown_timeout: Duration::from_millis(raw.shutdown_timeout_ms),
            admin: raw.admin.as_ref().map(|a| a.bind),
            admin_access,
            access_log,
            listeners,
            pools,
        })
    }
}

/// The variables a redirect's `to` may hold, as nginx's `return 301 …$request_uri`.
pub const REDIRECT_VARIABLES: [&str; 5] = ["request_uri", "uri", "args", "host", "scheme"];
/// The variables a request header rule's value may hold (nginx's `proxy_set_header`).
pub const REQUEST_HEADER_VARIABLES: [&str; 13] = [
    "request_uri",
    "uri",
    "args",
    "host",
    "scheme",
    "remote_addr",
    "remote_port",
    "server_port",
    "ssl_client_verify",
    "ssl_client_s_dn",
    "ssl_client_i_dn",
    "ssl_client_serial",
    "ssl_client_fingerprint",
];

/// A redirect's `to`, with its variables replaced (see [`expand_variables`]).
pub fn expand_redirect<'v>(
    to: &str,
    value: impl Fn(&str) -> Option<std::borrow::Cow<'v, str>>,
) -> Result<String, String> {
    expand_variables(to, &REDIRECT_VARIABLES, value)
}

/// `text` with its `$variables` (of `known`) replaced by `value` (`None`: the request cannot
/// say, and the text cannot be made). A `$` that starts no name is text.
pub fn expand_variables<'v>(
    text: &str,
    known: &[&str],
    value: impl Fn(&str) -> Option<std::borrow::Cow<'v, str>>,
) -> Result<String, String> {
    let to = text;
    let mut out = String::with_capacity(to.len() + 64);
    let mut rest = to;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..end];
        if name.is_empty() {
            out.push('$');
        } else if known.contains(&name) {
            out.push_str(&value(name).ok_or_else(|| format!("the request has no usable ${name}"))?);
        } else {
            return Err(format!("unknown variable `${name}`; known: ${}", known.join(", $")));
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A route's `suffix`, `methods` and `header`; `None` when it has none.
fn route_conditions(r: &RawRoute, field: &str, err: &mut impl FnMut(String, String)) -> Option<Arc<Conditions>> {
    if r.suffix.is_empty() && r.methods.is_empty() && r.header.is_none() {
        return None;
    }
    for s in &r.suffix {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            err(format!("{field}.suffix"), format!("`{s}` is not the end of a path"));
        }
    }
    let mut methods = Vec::new();
    for m in &r.methods {
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(method),
            _ => err(format!("{field}.methods"), format!("`{m}` is not a method (GET, POST…, in capitals)")),
        }
    }
    let header = r.header.as_ref().and_then(|h| {
        let Ok(name) = http::HeaderName::from_bytes(h.name.as_bytes()) else {
            err(format!("{field}.header.name"), format!("`{}` is not a header name", h.name));
            return None;
        };
        match h.value.as_deref().map(http::HeaderValue::from_str).transpose() {
            Ok(value) => Some((name, value)),
            Err(_) => {
                err(format!("{field}.header.value"), "not a header value".into());
                None
            }
        }
    });
    let suffixes = r.suffix.iter().map(|s| s.to_ascii_lowercase()).collect();
    Some(Arc::new(Conditions { suffixes, methods, header }))
}

fn validate_route(
    r: &RawRoute,
    field: &str,
    base: &Path,
    pool_names: &[&String],
    seen: &mut BTreeSet<(Option<String>, bool, String)>,
    err: &mut impl FnMut(String, String),
) -> Option<Route> {
    let host = match r.host.as_deref().map(HostPattern::parse).transpose() {
        Ok(host) => host,
        Err(e) => {
            err(format!("{field}.host"), e);
            return None;
        }
    };
    let (path, exact, key) = match (&r.prefix, &r.exact) {
        (Some(p), None) => (p.clone(), false, "prefix"),
        (None, Some(p)) => (p.clone(), true, "exact"),
        _ => {
            err(field.to_string(), "a route needs exactly one of `prefix` or `exact`".into());
            return None;
        }
    };
    if !path.starts_with('/') {
        err(format!("{field}.{key}"), format!("`{path}` must start with /"));
    }
    let conditions = route_conditions(r, field, err);
    let basic_auth = r.basic_auth.as_ref().and_then(|a| {
        match crate::basic_auth::BasicAuth::load(&a.realm, &base.join(&a.users_file)) {
            Ok(auth) => Some(Arc::new(auth)),
            Err(e) => {
                err(format!("{field}.basic_auth"), e);
                None
            }
        }
    });
    // Routes with conditions may share a path: they are tried in turn, then the plain one.
    if conditions.is_none() && !seen.insert((r.host.as_ref().map(|h| h.to_ascii_lowercase()), exact, path.clone())) {
        err(format!("{field}.{key}"), format!("`{path}` is routed twice for the same host"));
    }
    let targets = [r.pool.is_some(), r.static_root.is_some(), r.redirect.is_some(), r.respond.is_some()];
    if targets.iter().filter(|t| **t).count() != 1 {
        err(field.to_string(), "a route needs exactly one of `pool`, `static_root`, `redirect` or `respond`".into());
        return None;
    }
    let target = if let Some(pool) = &r.pool {
        match pool_names.iter().position(|p| *p == pool) {
            Some(index) => RouteTarget::Pool(index),
            None => {
                err(format!("{field}.pool"), format!("no pool `{pool}` in [pools]"));
                return None;
            }
        }
    } else if let Some(dir) = &r.static_root {
        let root = match dir.canonicalize() {
            Ok(root) if root.is_dir() => root,
            Ok(_) => {
                err(format!("{field}.static_root"), format!("{} is not a directory", dir.display()));
                return None;
            }
            Err(e) => {
                err(format!("{field}.static_root"), format!("{}: {e}", dir.display()));
                return None;
            }
        };
        if r.index.iter().any(|i| i.is_empty() || i.contains('/')) {
            err(format!("{field}.index"), "index files are plain file names".into());
        }
        let cache_control = r.cache_control.as_ref().and_then(|c| match http::HeaderValue::from_str(c) {
            Ok(v) => Some(v),
            Err(_) => {
                err(format!("{field}.cache_control"), format!("`{c}` is not a header value"));
                None
            }
        });
        let root_dir = match std::fs::File::open(&root) {
            Ok(dir) => Arc::new(dir),
            Err(e) => {
                err(format!("{field}.static_root"), format!("{}: {e}", root.display()));
                return None;
            }
        };
        RouteTarget::Static(StaticRoute {
            root,
            root_dir,
            index: r.index.clone(),
            cache_control,
            precompressed: r.precompressed,
            cache: Arc::default(),
        })
    } else if let Some(redirect) = &r.redirect {
        let status = match http::StatusCode::from_u16(redirect.status) {
            Ok(s) if s.is_redirection() => s,
            _ => {
                err(
                    format!("{field}.redirect.status"),
                    format!("{} is not a redirect status (301, 302, 303, 307, 308)", redirect.status),
                );
                return None;
            }
        };
        if http::HeaderValue::from_str(&redirect.to).is_err() || redirect.to.is_empty() {
            err(format!("{field}.redirect.to"), format!("`{}` is not a URL or path", redirect.to));
            return None;
        }
        // Checked with stand-in values: an unknown variable is found now, not on a request.
        if let Err(e) = expand_redirect(&redirect.to, |_| Some("x".into())) {
            err(format!("{field}.redirect.to"), e);
            return None;
        }
        RouteTarget::Redirect { to: redirect.to.clone(), status }
    } else {
        let respond = r.respond.as_ref()?;
        let status = match http::StatusCode::from_u16(respond.status) {
            Ok(s) => s,
            Err(_) => {
                err(format!("{field}.respond.status"), format!("{} is not an HTTP status", respond.status));
                return None;
            }
        };
        let Ok(content_type) = http::HeaderValue::from_str(&respond.content_type) else {
            err(format!("{field}.respond.content_type"), format!("`{}` is not a header value", respond.content_type));
            return None;
        };
        RouteTarget::Respond { status, body: bytes::Bytes::from(respond.body.clone()), content_type }
    };
    let (request_set, request_templates, request_remove) =
        header_rules(&r.request_headers, &format!("{field}.request_headers"), true, err);
    let (response_set, _, response_remove) =
        header_rules(&r.response_headers, &format!("{field}.response_headers"), false, err);
    let rewrites_requests = !request_set.is_empty() || !request_templates.is_empty() || !request_remove.is_empty();
    if rewrites_requests && !matches!(target, RouteTarget::Pool(_)) {
        err(format!("{field}.request_headers"), "only a route to a pool sends requests on".into());
    }
    let any = rewrites_requests || !response_set.is_empty() || !response_remove.is_empty();
    let rules = HeaderRules { request_set, request_templates, request_remove, response_set, response_remove };
    let blocks = |list: &[String], key: &str, err: &mut dyn FnMut(String, String)| -> Vec<crate::access::Cidr> {
        list.iter()
            .filter_map(|text| crate::access::Cidr::parse(text).map_err(|e| err(format!("{field}.{key}"), e)).ok())
            .collect()
    };
    let access = crate::access::Access { allow: blocks(&r.allow, "allow", err), deny: blocks(&r.deny, "deny", err) };
    let restricted = !(access.allow.is_empty() && access.deny.is_empty());
    let rate_limit = r.rate_limit.as_ref().and_then(|limit| {
        let rate = limit.requests_per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
            err(
                format!("{field}.rate_limit.requests_per_second"),
                format!("{rate} is not a rate above 0 and up to 1000000"),
            );
            return None;
        }
        let burst = limit.burst.unwrap_or(rate.ceil() as u32);
        let key = match limit.key.as_deref().map(crate::rate_limit::RateKey::parse) {
            None => crate::rate_limit::RateKey::Client,
            Some(Ok(key)) => key,
            Some(Err(e)) => {
                err(format!("{field}.rate_limit.key"), e);
                return None;
            }
        };
        Some(Arc::new(crate::rate_limit::RateLimit::new(rate, burst, key)))
    });
    let replace_prefix = r.replace_prefix.as_deref().and_then(|to| {
        let field = format!("{field}.replace_prefix");
        if !matches!(target, RouteTarget::Pool(_)) {
            err(field, "only a route to a pool sends requests on".into());
            return None;
        }
        if !to.starts_with('/') || to.contains(['?', '#']) || to.parse::<http::uri::PathAndQuery>().is_err() {
            err(field, format!("`{to}` is not a path: it starts with / and has no query"));
            return None;
        }
        Some(Arc::from(to))
    });
    Some(Route {
        host,
        path,
        exact,
        target,
        headers: any.then(|| Arc::new(rules)),
        access: restricted.then(|| Arc::new(access)),
        rate_limit,
        replace_prefix,
        conditions,
        basic_auth,
    })
}

/// Turns a host name and port into addresses.
pub type Resolver<'a> = &'a dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// The system's resolver (`/etc/hosts`, then DNS, as nsswitch says).
pub fn system_resolver(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect)
}

/// Reads the `[resolvers]` table: nameservers as `ip` or `ip:port`, those of
/// /etc/resolv.conf when it lists none; intervals above zero.
fn validate_resolvers(raw: &RawResolvers, err: &mut impl FnMut(String, String)) -> Resolvers {
    let mut nameservers = Vec::new();
    for (i, text) in raw.nameservers.iter().enumerate() {
        match text.parse::<SocketAddr>().or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(address) if address.port() != 0 => nameservers.push(address),
            _ => err(format!("resolvers.nameservers[{i}]"), format!("`{text}` is not an ip or ip:port")),
        }
    }
    if raw.nameservers.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        nameservers = crate::resolvers::system_nameservers(&conf);
        if nameservers.is_empty() {
            err("resolvers.nameservers".into(), "none given, and /etc/resolv.conf names none".into());
        }
    }
    for (key, value) in [("hold_valid_ms", raw.hold_valid_ms), ("timeout_ms", raw.timeout_ms)] {
        some_time_up_to_a_week(value, format!("resolvers.{key}"), err);
    }
    Resolvers {
        nameservers,
        hold_valid: Duration::from_millis(raw.hold_valid_ms),
        timeout: Duration::from_millis(raw.timeout_ms),
    }
}

/// A host name resolved through the `[resolvers]` nameservers, as [`system_resolver`] does
/// through the system's.
fn resolve_through(resolvers: &Resolvers, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use crate::resolvers::{resolve, Answer};
    match resolve(host, &resolvers.nameservers, resolvers.timeout) {
        Ok(Answer::Addresses(ips)) => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Ok(Answer::NoAddress) => Ok(Vec::new()),
        Ok(Answer::NoSuchName) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such name (NXDOMAIN)")),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// A template's slots, filled with the addresses `host` resolves to now; the others wait for
/// DNS at run time. A name that does not resolve yet is no error: filling slots as addresses
/// come and go is what a template is for (HAProxy's `init-addr none`).
fn template_servers(
    t: &RawServerTemplate,
    field: &str,
    has_resolvers: bool,
    resolve: Resolver<'_>,
    err: &mut impl FnMut(String, String),
) -> Vec<Server> {
    if !has_resolvers {
        err(format!("{field}.address"), "a server template needs a [resolvers] section to ask DNS at run time".into());
    }
    if t.count == 0 || t.count > MAX_TEMPLATE_SLOTS {
        err(format!("{field}.count"), format!("must be from 1 to {MAX_TEMPLATE_SLOTS}"));
        return Vec::new();
    }
    if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        err(format!("{field}.name"), format!("`{}` is not a server name (letters, digits, - _ .)", t.name));
    }
    if t.weight > MAX_WEIGHT {
        err(format!("{field}.weight"), format!("{} is above the maximum weight {MAX_WEIGHT}", t.weight));
    }
    let (host, port) = match host_and_port(&t.address) {
        Ok((host, port)) if host.parse::<std::net::IpAddr>().is_err() && port != 0 => (host, port),
        Ok(_) => {
            err(format!("{field}.address"), format!("`{}`: a template needs a host name and a port", t.address));
            return Vec::new();
        }
        Err(e) => {
            err(format!("{field}.address"), e);
            return Vec::new();
        }
    };
    let mut found: Vec<SocketAddr> = Vec::new();
    match resolve(host, port) {
        Ok(addresses) => {
            for a in addresses {
                if !found.contains(&a) {
                    found.push(a);
                }
            }
        }
        Err(e) => tracing::warn!(host, "server template: `{host}` does not resolve yet ({e}); its slots wait for DNS"),
    }
    let placeholder = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
    (1..=t.count as usize)
        .map(|i| Server {
            name: format!("{}{i}", t.name),
            address: found.get(i - 1).copied().unwrap_or(placeholder),
            host: Some(host.to_string()),
            weight: t.weight,
            backup: t.backup,
            maxconn: (t.maxconn > 0).then_some(t.maxconn),
            template: Some(t.name.clone()),
            unresolved: i > found.len(),
            unix: None,
        })
        .collect()
}

/// `host:port` split, the host checked as a name or an IP address could be written.
fn host_and_port(text: &str) -> Result<(&str, u16), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` needs a port: ip:port or host:port"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!("`{port}` is not a port"));
    };
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if host.is_empty() || host.len() > 253 || !host.bytes().all(name_char) {
        return Err(format!("`{host}` is neither an IP address nor a host name"));
    }
    Ok((host, port))
}

/// A server's `address`: an IP address and port, or a host name and port resolved now to the
/// first address the resolver gives, as HAProxy resolves server names when it starts (its
/// default `init-addr libc`) and nginx when it loads; a reload resolves them again.
/// What a Unix socket server's `address` holds, unused: the socket path says where it is.
const UNIX_PLACEHOLDER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));

/// The socket path of a server written `unix:/run/app.sock` (nginx) or `unix@/run/app.sock`
/// (HAProxy); a relative path is relative to the config file.
fn unix_socket_path(address: &str, base: &Path) -> Option<PathBuf> {
    let path = address.strip_prefix("unix:").or_else(|| address.strip_prefix("unix@"))?;
    Some(base.join(path))
}

fn server_address(text: &str, resolve: Resolver<'_>) -> Result<(SocketAddr, Option<String>), String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok((address, None));
    }
    let (host, port) = host_and_port(text)?;
    match resolve(host, port) {
        Ok(addresses) => match addresses.first() {
            Some(address) => Ok((*address, Some(host.to_string()))),
            None => Err(format!("`{host}` has no address")),
        },
        Err(e) => Err(format!("`{host}` does not resolve: {e}")),
    }
}

/// Loads a pool's CA (relative to the config file) and checks its server name.
fn load_upstream_tls(
    raw: &RawUpstreamTls,
    base: &Path,
    field: &str,
    err: &mut impl FnMut(String, String),
) -> Option<crate::tls::UpstreamTls> {
    use crate::tls::{UpstreamTls, UpstreamTlsError};
    let client = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Some(CertFiles { cert: base.join(cert), key: base.join(key) }),
        (None, None) => None,
        _ => {
            err(format!("{field}.tls"), "give both `cert` and `key` (mutual TLS), or neither".into());
            return None;
        }
    };
    match UpstreamTls::load(&base.join(&raw.ca), raw.server_name.as_deref(), client.as_ref()) {
        Ok(tls) => Some(tls),
        Err(UpstreamTlsError::Ca(e)) => {
            err(format!("{field}.tls.ca"), e);
            None
        }
        Err(UpstreamTlsError::ServerName(e)) => {
            err(format!("{field}.tls.server_name"), e);
            None
        }
        Err(UpstreamTlsError::ClientCertificate { in_key_file, message }) => {
            err(format!("{field}.tls.{}", if in_key_file { "key" } else { "cert" }), message);
            None
        }
    }
}

/// Loads a listener's certificates; each bad file is reported on its own field.
fn load_tls(raw: &RawTls, base: &Path, field: &str, err: &mut impl FnMut(String, String)) -> Option<Tls> {
    if raw.certificates.is_empty() {
        err(format!("{field}.tls.certificates"), "at least one certificate is needed".into());
        return None;
    }
    let mut loaded = Vec::new();
    let mut files = Vec::new();
    for (j, c) in raw.certificates.iter().enumerate() {
        let pair = CertFiles { cert: c.cert.clone(), key: c.key.clone() };
        match tls::load(&pair) {
            Ok(k) => loaded.push(k),
            Err(e) => {
                let which = if e.in_key_file { "key" } else { "cert" };
                err(format!("{field}.tls.certificates[{j}].{which}"), e.message);
            }
        }
        files.push(pair);
    }
    if loaded.len() != raw.certificates.len() {
        return None;
    }
    let required = match raw.verify_client.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            err(format!("{field}.tls.verify_client"), format!("expected required or optional, not `{other}`"));
            return None;
        }
    };
    let clients = match &raw.client_ca {
        None if raw.verify_client.is_some() => {
            err(
                format!("{field}.tls.verify_client"),
                "needs `client_ca`: the CAs client certificates come from".into(),
            );
            return None;
        }
        None => None,
        Some(ca) => match tls::load_roots(&base.join(ca)) {
            Ok(roots) => Some(tls::ClientVerification { roots, required }),
            Err(e) => {
                err(format!("{field}.tls.client_ca"), e);
                return None;
            }
        },
    };
    let hsts = raw.hsts_max_age.and_then(|age| http::HeaderValue::from_str(&format!("max-age={age}")).ok());
    match tls::Acceptor::new(loaded, clients) {
        Ok(acceptor) => Some(Tls { acceptor, files, hsts }),
        Err(e) => {
            err(format!("{field}.tls"), e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ProxyConfig, ConfigErrors> {
        ProxyConfig::from_source(&Source::from_text("p.toml", text))
    }

    const GOOD: &str = r#"
name = "lb"
[[listeners]]
name = "www"
bind = "127.0.0.1:8080"
[[listeners.routes]]
prefix = "/"
pool = "web"
[[listeners.routes]]
prefix = "/api/"
pool = "web"
[pools.web]
[[pools.web.servers]]
name = "a"
address = "127.0.0.1:9001"
"#;

    #[test]
    fn routes_are_chosen_by_host_first_as_nginx_chooses_a_server() {
        let text = r#"
name = "lb"
[[listeners]]
name = "www"
bind = "127.0.0.1:8080"
[[listeners.routes]]
prefix = "/"
respond = { body = "default" }
[[listeners.routes]]
host = "Shop.Example.org"
exact = "/cart"
respond = { body = "shop cart" }
[[listeners.routes]]
host = "*.example.org"
prefix = "/"
respond = { body = "any example" }
[[listeners.routes]]
host = "*.eu.example.org"
prefix = "/"
respond = { body = "eu" }
"#;
        let c = load(text).unwrap();
        let l = &c.listeners[0];
        let body = |host: Option<&str>, path: &str| match l
            .route_for(host, path, &http::Method::GET, &http::HeaderMap::new())
            .map(|r| &r.target)
        {
            Some(RouteTarget::Respond { body, .. }) => String::from_utf8_lossy(body).into_owned(),
            _ => "none".into(),
        };
        assert_eq!(body(Some("shop.example.org"), "/cart"), "shop cart");
        assert_eq!(body(Some("shop.example.org"), "/other"), "none", "the host's own routes only: 404");
        assert_eq!(body(Some("api.example.org"), "/x"), "any example");
        assert_eq!(body(Some("fr.eu.example.org"), "/x"), "eu", "the longest wildcard wins");
        assert_eq!(body(Some("example.org"), "/x"), "default", "a wildcard needs a label before it");
        assert_eq!(body(Some("other.test"), "/x"), "default");
        assert_eq!(body(None, "/x"), "default");

        let bad = text.replace("*.eu.example.org", "eu.example.org:8080");
        let e = load(&bad).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[3].host", "{e}");
        let twice = text.replace("host = \"*.eu.example.org\"\nprefix", "host = \"*.EXAMPLE.org\"\nprefix");
        assert!(load(&twice).unwrap_err().to_string().contains("routed twice for the same host"));
    }

    #[test]
    fn header_rules_refuse_what_frames_the_message_and_name_the_field() {
        let route = with_api_route;
        let c = load(&route(r#"response_headers = { set = { "X-Frame-Options" = "DENY" }, remove = ["Server"] }"#))
            .unwrap();
        let rules = c.listeners[0].routes[0].headers.clone().expect("rules");
        let mut headers = http::HeaderMap::new();
        headers.insert("server", http::HeaderValue::from_static("origin"));
        rules.apply_to_response(&mut headers);
        assert_eq!(headers.get("x-frame-options").map(|v| v.as_bytes()), Some(&b"DENY"[..]));
        assert!(headers.get("server").is_none());
        assert!(c.listeners[0].routes[1].headers.is_none(), "routes without rules carry none");

        let e = load(&route(r#"request_headers = { set = { "Content-Length" = "0" } }"#)).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[1].request_headers.set", "{e}");
        assert!(e.to_string().contains("frames or routes the message"), "{e}");
        let e = load(&route(r#"response_headers = { remove = ["bad header"] }"#)).unwrap_err();
        assert!(e.to_string().contains("is not a header name"), "{e}");
    }

    #[test]
    fn replace_prefix_needs_a_pool_and_a_path() {
        let c = load(&with_api_route(r#"replace_prefix = "/v2/""#)).unwrap();
        assert_eq!(c.listeners[0].routes[0].replace_prefix.as_deref(), Some("/v2/"));
        for (bad, says) in
            [("\"v2/\"", "is not a path"), ("\"/v2?x=1\"", "is not a path"), ("\"/a b\"", "is not a path")]
        {
            let e = load(&with_api_route(&format!("replace_prefix = {bad}"))).unwrap_err();
            assert_eq!(e.0[0].field, "listeners[0].routes[1].replace_prefix", "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = load(&GOOD.replace(
            "prefix = \"/api/\"\npool = \"web\"",
            "prefix = \"/api/\"\nrespond = { body = \"x\" }\nreplace_prefix = \"/\"",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("only a route to a pool sends requests on"), "{e}");
    }

    #[test]
    fn a_bad_address_block_is_reported_on_its_route() {
        let e = load(&with_api_route("allow = [\"10.0.0.1/8\"]")).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[1].allow", "{e}");
        assert!(e.to_string().contains("the block is 10.0.0.0/8"), "{e}");
    }

    #[test]
    fn the_vips_interface_is_checked_and_named_in_errors() {
        let ha = "\n[ha]\nid = 1\npriority = 100\nbind = \"127.0.0.2:5405\"\nvip = \"127.0.0.1\"\n\
                  key = \"sixteen chars at least\"\n";
        let good = load(&format!("{GOOD}{ha}interface = \"eth0\"\n")).unwrap();
        assert_eq!(good.ha.and_then(|h| h.interface).as_deref(), Some("eth0"));
        let text = format!("{GOOD}{ha}interface = \"a-name-far-too-long\"\n");
        let bad = load(&text).unwrap_err();
        assert_eq!(bad.0[0].field, "ha.interface", "{bad}");
        assert_eq!(bad.0[0].line, text.lines().position(|l| l.starts_with("interface")).map(|i| i + 1), "{bad}");
    }

    /// [`GOOD`] with `options` added to its `/api/` route (routes[1] in the file).
    fn with_api_route(options: &str) -> String {
        GOOD.replace("prefix = \"/api/\"\npool = \"web\"", &format!("prefix = \"/api/\"\npool = \"web\"\n{options}"))
    }

    #[test]
    fn a_rate_limit_needs_a_rate_above_zero_and_defaults_its_burst_to_a_second() {
        let c = load(&with_api_route("rate_limit = { requests_per_second = 5 }")).unwrap();
        let limit = c.listeners[0].routes[0].rate_limit.as_ref().expect("a limit");
        let at_once =
            (0..10).filter(|_| limit.check("192.0.2.1".parse().unwrap(), &http::HeaderMap::new()).is_ok()).count();
        assert_eq!(at_once, 6, "the burst (5) and the first request");
        let e = load(&with_api_route("rate_limit = { requests_per_second = 0 }")).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[1].rate_limit.requests_per_second", "{e}");
        let e = load(&with_api_route("rate_limit = { per_second = 5 }")).unwrap_err();
        assert!(e.to_string().contains("per_second"), "{e}");
        let e = load(&with_api_route("rate_limit = { requests_per_second = 5, key = \"header:\" }")).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[1].rate_limit.key", "{e}");
    }

    #[test]
    fn resolvers_need_nameservers_and_intervals_and_are_what_names_resolve_through() {
        let with = |table: &str| format!("{GOOD}[resolvers]\n{table}\n");
        let c = load(&with("nameservers = [\"127.0.0.53\", \"[::1]:5353\"]")).unwrap();
        let r = c.resolvers.expect("resolvers");
        assert_eq!(r.nameservers, ["127.0.0.53:53".parse().unwrap(), "[::1]:5353".parse().unwrap()]);
        assert_eq!((r.hold_valid, r.timeout), (Duration::from_secs(10), Duration::from_secs(1)), "HAProxy's defaults");

        let e = load(&with("nameservers = [\"ns-01\"]\nhold_valid_ms = 0")).unwrap_err();
        assert_eq!(e.0[0].field, "resolvers.nameservers[0]", "{e}");
        assert_eq!(e.0[1].field, "resolvers.hold_valid_ms", "{e}");
        assert!(load(&with("nameserver = [\"127.0.0.53\"]")).unwrap_err().to_string().contains("nameserver"));

        // A name is asked of the nameservers, not of the system: nothing answers on this port,
        // so the load fails and says why, naming the server's field.
        let named = GOOD.replace("127.0.0.1:9001", "web-01.webstack.test:9001");
        let text = format!("{named}[resolvers]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_ms = 300\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.servers[0].address", "{e}");
        assert!(e.0[0].message.contains("web-01.webstack.test` does not resolve"), "{e}");
    }

    #[test]
    fn error_pages_need_an_error_status_and_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("503.html"), "busy").unwrap();
        let path = dir.path().join("p.toml");
        let text = format!("{GOOD}[error_pages]\n503 = \"503.html\"\n");
        let config = ProxyConfig::from_source(&Source::from_text(&path, &text)).unwrap();
        assert_eq!(config.error_pages[0].0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(&config.error_pages[0].1.body[..], b"busy");
        let text = format!("{GOOD}[error_pages]\n200 = \"503.html\"\n504 = \"missing.html\"\n");
        let e = ProxyConfig::from_source(&Source::from_text(&path, &text)).unwrap_err();
        assert_eq!(e.0[0].field, "error_pages.200", "{e}");
        assert_eq!(e.0[1].field, "error_pages.504", "{e}");
        assert!(e.0[1].message.contains("missing.html"), "{e}");
    }

    #[test]
    fn a_pools_tls_needs_a_readable_ca_with_certificates_and_a_valid_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let with_tls = |table: &str| GOOD.replace("[pools.web]\n", &format!("[pools.web]\n[pools.web.tls]\n{table}\n"));
        let load_at = |text: String| ProxyConfig::from_source(&Source::from_text(&path, &text));

        let e = load_at(with_tls("ca = \"missing-ca.pem\"")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.tls.ca", "{e}");
        assert!(e.0[0].message.contains("missing-ca.pem"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let e = load_at(with_tls("ca = \"empty.pem\"")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.tls.ca", "{e}");
        assert!(e.0[0].message.contains("no certificate"), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca.internal".to_string()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let e = load_at(with_tls("ca = \"ca.pem\"\nserver_name = \"not a name\"")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.tls.server_name", "{e}");
        let e = load_at(with_tls("ca = \"ca.pem\"\nverify = false")).unwrap_err();
        assert!(e.to_string().contains("verify"), "{e}");
        // Relative to the config file; health checks follow the pool's TLS.
        let text = with_tls("ca = \"ca.pem\"\nserver_name = \"web.internal\"")
            .replace("[[pools.web.servers]]", "[pools.web.health]\npath = \"/healthz\"\n[[pools.web.servers]]");
        let config = load_at(text).unwrap();
        let tls = config.pools[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca, dir.path().join("ca.pem"));
        assert_eq!(config.pools[0].health.as_ref().unwrap().tls.as_ref(), Some(tls));
    }

    #[test]
    fn a_server_template_fills_its_slots_with_the_addresses_a_name_has_now() {
        let resolve = |host: &str, port: u16| match host {
            "web.internal" => {
                Ok(vec![SocketAddr::from(([127, 0, 0, 7], port)), SocketAddr::from(([127, 0, 0, 8], port))])
            }
            _ => Err(std::io::Error::other("NXDOMAIN")),
        };
        let load = |text: String| ProxyConfig::from_source_resolving(&Source::from_text("p.toml", &text), &resolve);
        let template = |address: &str| {
            format!(
                "name = \"lb\"\n[resolvers]\nnameservers = [\"127.0.0.53\"]\n[[listeners]]\nname = \"www\"\nbind = \"127.0.0.1:8080\"\n\
                 [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n[pools.web]\n\
                 [[pools.web.server_templates]]\nname = \"web\"\ncount = 3\naddress = \"{address}\"\n"
            )
        };
        let c = load(template("web.internal:8080")).unwrap();
        let slots: Vec<(&str, String, bool)> =
            c.pools[0].servers.iter().map(|s| (s.name.as_str(), s.address.to_string(), s.unresolved)).collect();
        assert_eq!(
            slots,
            [
                ("web1", "127.0.0.7:8080".to_string(), false),
                ("web2", "127.0.0.8:8080".to_string(), false),
                ("web3", "0.0.0.0:8080".to_string(), true)
            ]
        );
        assert!(c.pools[0].servers.iter().all(|s| s.template.as_deref() == Some("web")));
        let waiting = load(template("later.internal:8080")).unwrap();
        assert!(waiting.pools[0].servers.iter().all(|s| s.unresolved), "a name not there yet: slots wait for it");

        for (address, says) in [("10.0.0.1:8080", "a template needs a host name"), ("web.internal", "needs a port")] {
            let e = load(template(address)).unwrap_err();
            assert_eq!(e.0[0].field, "pools.web.server_templates[0].address", "{e}");
            assert!(e.0[0].message.contains(says), "{e}");
        }
        let e = load(template("web.internal:8080").replace("[resolvers]\nnameservers = [\"127.0.0.53\"]\n", ""))
            .unwrap_err();
        assert!(e.0[0].message.contains("needs a [resolvers] section"), "{e}");
        let e = load(template("web.internal:8080").replace("count = 3", "count = 0")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.server_templates[0].count", "{e}");
        let clash =
            template("web.internal:8080") + "[[pools.web.servers]]\nname = \"web2\"\naddress = \"127.0.0.1:9\"\n";
        assert!(load(clash).unwrap_err().to_string().contains("server `web2` is in this pool twice"));
    }

    #[test]
    fn server_host_names_are_resolved_at_load_and_a_name_that_does_not_resolve_is_named() {
        let resolve = |host: &str, port: u16| match host {
            "web-01.internal" => {
                Ok(vec![SocketAddr::from(([127, 0, 0, 7], port)), SocketAddr::from(([127, 0, 0, 8], port))])
            }
            "empty.internal" => Ok(vec![]),
            _ => Err(std::io::Error::other("Name or service not known")),
        };
        let with_address = |address: &str| GOOD.replace("127.0.0.1:9001", address);
        let load = |text: String| ProxyConfig::from_source_resolving(&Source::from_text("p.toml", &text), &resolve);
        let config = load(with_address("web-01.internal:9001")).unwrap();
        let server = &config.pools[0].servers[0];
        assert_eq!(server.address, "127.0.0.7:9001".parse().unwrap(), "the first address, as getaddrinfo orders them");
        assert_eq!(server.host.as_deref(), Some("web-01.internal"));
        assert_eq!(load(with_address("[::1]:9001")).unwrap().pools[0].servers[0].host, None);
        for (address, says) in [
            ("nowhere.internal:9001", "`nowhere.internal` does not resolve: Name or service not known"),
            ("empty.internal:9001", "`empty.internal` has no address"),
            ("web-01.internal", "`web-01.internal` needs a port"),
            ("web-01.internal:http", "`http` is not a port"),
            ("web 01:9001", "`web 01` is neither an IP address nor a host name"),
            ("web-01.internal:0", "port 0"),
        ] {
            let e = load(with_address(address)).unwrap_err();
            assert_eq!(e.0[0].field, "pools.web.servers[0].address", "{e}");
            assert!(e.0[0].message.contains(says), "{address}: {e}");
        }
        // The system's resolver reads /etc/hosts first: no network asked.
        let (address, host) = server_address("localhost:9001", &system_resolver).unwrap();
        assert!(address.ip().is_loopback() && address.port() == 9001, "{address}");
        assert_eq!(host.as_deref(), Some("localhost"));
    }

    #[test]
    fn the_admin_api_takes_changes_from_this_host_only_unless_told_otherwise() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let with_admin = |table: &str| format!("{GOOD}[admin]\nbind = \"127.0.0.1:8404\"\n{table}\n");
        let open = load(&with_admin("")).unwrap().admin_access;
        assert!(open.may_read(ip("192.0.2.7")) && !open.may_change(ip("192.0.2.7")));
        assert!(open.may_change(ip("127.0.0.1")) && open.may_change(ip("127.3.2.1")) && open.may_change(ip("::1")));
        let narrowed =
            load(&with_admin("allow = [\"10.0.0.0/8\"]\nchange_from = [\"10.0.0.5\"]")).unwrap().admin_access;
        assert!(narrowed.may_change(ip("10.0.0.5")) && !narrowed.may_change(ip("127.0.0.1")));
        assert!(narrowed.may_read(ip("10.9.9.9")) && !narrowed.may_read(ip("192.0.2.7")));
        let e = load(&with_admin("change_from = [\"10.0.0.1/8\"]")).unwrap_err();
        assert_eq!(e.0[0].field, "admin.change_from", "{e}");
        assert!(e.0[0].message.contains("host bits"), "{e}");
    }

    #[test]
    fn route_conditions_are_checked_at_load_and_may_share_a_path() {
        let with = |options: &str| {
            GOOD.replace("prefix = \"/api/\"\npool = \"web\"", &format!("prefix = \"/\"\npool = \"web\"\n{options}"))
        };
        let c = load(&with("suffix = [\".CSS\"]\nmethods = [\"GET\"]\nheader = { name = \"x-canary\" }")).unwrap();
        let route = &c.listeners[0].routes[0];
        let conditions = route.conditions.as_ref().expect("the route with conditions comes first");
        assert_eq!(conditions.suffixes, [".css"]);
        let mut headers = http::HeaderMap::new();
        assert!(!conditions.hold("/a.css", &http::Method::GET, &headers), "no X-Canary");
        headers.insert("x-canary", http::HeaderValue::from_static("anything"));
        assert!(conditions.hold("/a.Css", &http::Method::GET, &headers));
        assert!(!conditions.hold("/a.css", &http::Method::POST, &headers));
        assert!(!conditions.hold("/css", &http::Method::GET, &headers));
        assert!(c.listeners[0].routes[1].conditions.is_none());

        for (options, field) in [
            ("methods = [\"get\"]", "methods"),
            ("suffix = [\"\"]", "suffix"),
            ("header = { name = \"bad name\" }", "header.name"),
            ("header = { name = \"x\", value = \"a\\nb\" }", "header.value"),
        ] {
            let e = load(&with(options)).unwrap_err();
            assert_eq!(e.0[0].field, format!("listeners[0].routes[1].{field}"), "{e}");
        }
    }

    #[test]
    fn a_redirect_names_only_variables_it_knows() {
        let with = |to: &str| {
            GOOD.replace(
                "prefix = \"/api/\"\npool = \"web\"",
                &format!("prefix = \"/api/\"\nredirect = {{ to = \"{to}\" }}"),
            )
        };
        assert!(load(&with("https://www.foobar.com$request_uri")).is_ok());
        let e = load(&with("https://$hostname/")).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].routes[1].redirect.to", "{e}");
        assert!(e.0[0].message.contains("unknown variable `$hostname`"), "{e}");
        let vars = |name: &str| Some(std::borrow::Cow::Owned(format!("<{name}>")));
        assert_eq!(
            expand_redirect("$scheme://$host$uri?$args&cost=5$", vars).unwrap(),
            "<scheme>://<host><uri>?<args>&cost=5$"
        );
    }

    #[test]
    fn a_server_may_be_a_unix_socket_written_as_nginx_or_haproxy_writes_it() {
        let with_address = |address: &str| GOOD.replace("127.0.0.1:9001", address);
        let c = load(&with_address("unix:/run/app.sock")).unwrap();
        assert_eq!(c.pools[0].servers[0].unix.as_deref(), Some(Path::new("/run/app.sock")));
        let c = ProxyConfig::from_source(&Source::from_text("/etc/webstack/p.toml", with_address("unix@app.sock")));
        let c = c.unwrap();
        assert_eq!(c.pools[0].servers[0].unix.as_deref(), Some(Path::new("/etc/webstack/app.sock")), "relative to it");
        assert_eq!(load(GOOD).unwrap().pools[0].servers[0].unix, None);
        let on_socket = with_address("unix:/run/app.sock");
        let e = load(&on_socket.replace("[pools.web]\n", "[pools.web]\nagent = { port = 9999 }\n")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.agent", "{e}");
        let e = load(&on_socket.replace("[pools.web]\n", "[pools.web]\n[pools.web.health]\nport = 8081\n"));
        assert!(e.unwrap_err().to_string().contains("pools.web.health.port"));
    }

    #[test]
    fn an_access_log_goes_to_a_file_or_a_syslog_daemon_not_both() {
        let with = |log: &str| format!("{GOOD}[access_log]\n{log}");
        let c = load(&with("syslog = \"127.0.0.1:514\"\nformat = \"json\"\n")).unwrap();
        assert!(matches!(c.access_log.unwrap().destination, crate::access_log::Destination::Syslog(_)));
        for both_or_neither in ["path = \"-\"\nsyslog = \"/dev/log\"\n", "format = \"json\"\n"] {
            let e = load(&with(both_or_neither)).unwrap_err();
            assert!(e.to_string().contains("give `path` (a file, - for stderr) or `syslog`"), "{e}");
        }
        let e = load(&with("syslog = \"127.0.0.1\"\nfacility = \"local9\"\n")).unwrap_err();
        assert_eq!(e.0[0].field, "access_log.facility", "{e}");
    }

    #[test]
    fn retry_on_takes_haproxys_words_and_names_the_entry_it_cannot() {
        let with = |list: &str| GOOD.replace("[pools.web]\n", &format!("[pools.web]\nretry_on = {list}\n"));
        let retry_on = load(&with(r#"["503", "404", "conn-failure"]"#)).unwrap().pools[0].retry_on;
        let statuses: Vec<u16> =
            (100..700).filter(|s| retry_on.status(http::StatusCode::from_u16(*s).unwrap())).collect();
        assert_eq!((statuses, retry_on.response_timeout), (vec![404, 503], false));
        let all = load(&with(r#"["all-retryable-errors"]"#)).unwrap().pools[0].retry_on;
        let statuses: Vec<u16> = (100..700).filter(|s| all.status(http::StatusCode::from_u16(*s).unwrap())).collect();
        assert_eq!((statuses, all.response_timeout), (vec![500, 502, 503, 504], true));
        assert_eq!(load(GOOD).unwrap().pools[0].retry_on, RetryOn::default(), "nothing more by default");
        let e = load(&with(r#"["503", "5xx"]"#)).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.retry_on[1]", "{e}");
        assert!(e.0[0].message.contains("`5xx` is not something to retry on"), "{e}");
        assert!(load(&with(r#"["200"]"#)).is_err(), "a success is never retried");
    }

    #[test]
    fn an_h2c_pool_is_cleartext_and_shared() {
        let with =
            |options: &str| GOOD.replace("[pools.web]\n", &format!("[pools.web]\nprotocol = \"h2c\"\n{options}"));
        assert!(load(&with("")).unwrap().pools[0].http2);
        let e = load(&with("send_proxy = \"v2\"\n")).unwrap_err();
        assert_eq!(e.0[0].field, "pools.web.protocol", "{e}");
        assert!(e.0[0].message.contains("send_proxy"), "{e}");
        assert!(load(&with("[pools.web.health]\nkind = \"tcp\"\n")).is_ok());
        assert!(
            load(&with("[pools.web.health]\npath = \"/healthz\"\n")).unwrap().pools[0].health.as_ref().unwrap().http2
        );
        let e = load(&GOOD.replace("[pools.web]\n", "[pools.web]\nprotocol = \"h3\"\n")).unwrap_err();
        assert!(e.to_string().contains("expected http1, h2 or h2c"), "{e}");
    }

    #[test]
    fn routes_are_ordered_longest_prefix_first() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.listeners[0].routes[0].path, "/api/");
        assert_eq!(c.pools[0].connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn an_unknown_pool_is_reported_on_its_line() {
        let text = GOOD.replace(
            "pool = \"web\"\n[[listeners.routes]]\nprefix = \"/api/\"",
            "pool = \"wbe\"\n[[listeners.routes]]\nprefix = \"/api/\"",
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].field, "listeners[0].routes[0].pool");
        assert_eq!(e.0[0].line, Some(8));
        assert!(e.to_string().contains("no pool `wbe`"));
    }

    #[test]
    fn a_missing_static_root_names_the_directory() {
        let text = GOOD.replace("pool = \"web\"\n[pools", "static_root = \"/nonexistent/dir\"\n[pools");
        let e = load(&text).unwrap_err();
        assert!(e.to_string().contains("listeners[0].routes[1].static_root: /nonexistent/dir"), "{e}");
    }

    #[test]
    fn timeouts_longer_than_a_week_are_refused_before_they_overflow_a_deadline() {
        let huge = u64::MAX;
        let text = GOOD
            .replace("bind = \"127.0.0.1:8080\"\n", &format!("bind = \"127.0.0.1:8080\"\nclient_timeout_ms = {huge}\n"))
            .replace("[pools.web]\n", &format!("[pools.web]\nfirst_byte_timeout_ms = {huge}\n"));
        let e = load(&text).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["listeners[0].client_timeout_ms", "pools.web.first_byte_timeout_ms"], "{e}");
    }

    #[test]
    fn the_client_timeout_defaults_to_30_s_and_cannot_be_zero() {
        let config = load(GOOD).unwrap();
        assert_eq!(config.listeners[0].client_timeout, Duration::from_secs(30));
        let text = GOOD.replace("bind = \"127.0.0.1:8080\"\n", "bind = \"127.0.0.1:8080\"\nclient_timeout_ms = 0\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.0[0].field, "listeners[0].client_timeout_ms", "{e}");
        assert_eq!(e.0[0].line, Some(6));
    }

    #[test]
    fn bad_health_values_are_reported() {
        let text = format!("{GOOD}[pools.web.health]\nrise = 0\npath = \"healthz\"\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("pools.web.health.rise: must be at least 1"), "{e}");
        assert!(e.contains("pools.web.health.path: `healthz` must start with /"), "{e}");
        let text = format!("{GOOD}[pools.web.health]\nexpect_status = [200, 700]\nhost = \"a b\"\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("pools.web.health.expect_status: 700 is not an HTTP status"), "{e}");
        assert!(e.contains("pools.web.health.host: `a b` is not a host name"), "{e}");
        let text = format!("{GOOD}[pools.web.health]\nheaders = {{ \"Host\" = \"x\", \"bad name\" = \"v\" }}\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("pools.web.health.headers: `Host`: the check writes it itself"), "{e}");
        assert!(e.contains("`bad name` is not a header name"), "{e}");
        let text = format!("{GOOD}[pools.web.health]\nmethod = \"POST\"\nport = 0\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("pools.web.health.method: `POST`: a check is GET, HEAD or OPTIONS"), "{e}");
        assert!(e.contains("pools.web.health.port: port 0"), "{e}");
        for (options, why) in [
            ("kind = \"tcp\"\nexpect_body = \"up\"", "a tcp check reads no answer"),
            ("method = \"HEAD\"\nexpect_body = \"up\"", "an answer to HEAD has no body"),
            ("expect_body = \"\"", "must be 1 to"),
        ] {
            let e = load(&format!("{GOOD}[pools.web.health]\n{options}\n")).unwrap_err().to_string();
            assert!(e.contains(&format!("pools.web.health.expect_body: {why}")), "{e}");
        }
        let c = load(&format!("{GOOD}[pools.web.health]\nexpect_body = \"up\"\nport = 8081\nmethod = \"HEAD\"\n"));
        assert!(c.is_err(), "HEAD with a body to expect");
        let c = load(&format!("{GOOD}[pools.web.health]\nexpect_body = \"up\"\nport = 8081\n")).unwrap();
        let h = c.pools[0].health.as_ref().unwrap();
        assert_eq!((h.method.as_str(), h.port, h.expect_body.as_deref()), ("GET", Some(8081), Some("up")));
    }
}
