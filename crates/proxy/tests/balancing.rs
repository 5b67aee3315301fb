//! The proxy against real upstream servers on loopback: balancing, forwarded headers,
//! keep-alive pooling, health checks taking servers out and back, retries, and error pages.
//! Each test uses its own 127.210.N.0/24 addresses.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::Proxy;
use tokio::sync::oneshot;

/// An upstream that answers `NAME PATH xff=… proto=…`, counts its connections, and answers
/// `/healthz` with a status the test sets.
struct Upstream {
    connections: Arc<AtomicUsize>,
    health: Arc<AtomicU16>,
    /// The status of every answer but /healthz.
    status: Arc<AtomicU16>,
    /// `METHOD PATH` of every request but /healthz.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    /// The most requests (but /healthz) it was answering at once.
    peak: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(name: &'static str, address: SocketAddr) -> Upstream {
        let connections = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (peak, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, h, st, sn) = (connections.clone(), health.clone(), status.clone(), seen.clone());
        let (pk, bz) = (peak.clone(), busy.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(address).await.unwrap();
                ready_tx.send(()).unwrap();
                let serve = async {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        c.fetch_add(1, Ordering::SeqCst);
                        let (h, st, sn, pk, bz) = (h.clone(), st.clone(), sn.clone(), pk.clone(), bz.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let (h, st, sn, pk, bz) = (h.clone(), st.clone(), sn.clone(), pk.clone(), bz.clone());
                                async move {
                                    let path = req.uri().path().to_string();
                                    let counted = req.uri().path() != "/healthz";
                                    if counted {
                                        sn.lock().unwrap().push(format!("{} {}", req.method(), req.uri().path()));
                                        pk.fetch_max(bz.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                                    }
                                    if req.uri().path().ends_with("/slow") {
                                        tokio::time::sleep(Duration::from_millis(600)).await;
                                    }
                                    if counted {
                                        bz.fetch_sub(1, Ordering::SeqCst);
                                    }
                                    let header = |n: &str| {
                                        req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string()
                                    };
                                    let mut response = if req.uri().path() == "/healthz" {
                                        let mut r = hyper::Response::new(Full::new(Bytes::from("health")));
                                        *r.status_mut() =
                                            hyper::StatusCode::from_u16(h.load(Ordering::SeqCst)).unwrap();
                                        r
                                    } else {
                                        let body = format!(
                                            "{name} {} xff={} proto={} conn={} rid={}",
                                            req.uri().path(),
                                            header("x-forwarded-for"),
                                            header("x-forwarded-proto"),
                                            header("connection"),
                                            header("x-request-id")
                                        );
                                        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                                        *r.status_mut() =
                                            hyper::StatusCode::from_u16(st.load(Ordering::SeqCst)).unwrap();
                                        r
                                    };
                                    response
                                        .headers_mut()
                                        .insert("x-upstream", hyper::header::HeaderValue::from_static(name));
                                    // Pages a cache may keep for a second (and, `/strict`,
                                    // never serve stale).
                                    if let Some(rest) = path.strip_prefix("/fresh-for-a-second") {
                                        let value = if rest.starts_with("/strict") {
                                            "public, max-age=1, must-revalidate"
                                        } else {
                                            "public, max-age=1"
                                        };
                                        response.headers_mut().insert(
                                            hyper::header::CACHE_CONTROL,
                                            hyper::header::HeaderValue::from_static(value),
                                        );
                                    }
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("upstream started");
        Upstream { connections, health, status, seen, peak, stop: Some(stop_tx), thread: Some(thread) }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn request(address: SocketAddr, raw: &str) -> Answer {
    let mut s = TcpStream::connect(address).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

fn get(address: SocketAddr, path: &str) -> Answer {
    request(address, &format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n"))
}

fn config(net: u8, servers: &[(&str, SocketAddr)], health: &str) -> String {
    let mut c = format!(
        "name = \"lb\"\n[admin]\nbind = \"127.210.{net}.1:8404\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.{net}.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n[pools.web]\nserved_by_header = true\nconnect_timeout_ms = 500\n{health}"
    );
    for (name, address) in servers {
        c.push_str(&format!("[[pools.web.servers]]\nname = \"{name}\"\naddress = \"{address}\"\n"));
    }
    c
}

/// Waits (up to 5 s) until the admin listener's `/metrics` contains `needle`.
fn wait_for_metric(admin: SocketAddr, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(admin, "/metrics").body;
        if m.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw `{needle}` in:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn round_robin_with_forwarded_headers_and_pooled_upstream_connections() {
    let servers =
        [("s1", addr("127.210.1.11:9000")), ("s2", addr("127.210.1.12:9000")), ("s3", addr("127.210.1.13:9000"))];
    let upstreams: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let _proxy = Proxy::start(&config(1, &servers, ""));
    let lb = addr("127.210.1.1:8080");

    let mut order = Vec::new();
    for _ in 0..30 {
        let a = request(
            lb,
            "GET /page HTTP/1.1\r\nHost: www.foobar.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(a.status, 200, "{}", a.head);
        let served_by = a.header("x-served-by").expect("X-Served-By");
        assert_eq!(Some(served_by.clone()), a.header("x-upstream"));
        // An untrusted client's X-Forwarded-* are replaced; Connection is not passed on.
        assert!(a.body.contains("/page xff=127.0.0.1 proto=http conn=- rid="), "{}", a.body);
        order.push(served_by);
    }
    assert_eq!(&order[..6], ["s1", "s2", "s3", "s1", "s2", "s3"]);
    let metrics = get(addr("127.210.1.1:8404"), "/metrics").body;
    for s in ["s1", "s2", "s3"] {
        let labels = format!("pool=\"web\",server=\"{s}\"");
        assert!(
            metrics.contains(&format!("webstack_proxy_response_latency_seconds_count{{{labels}}} 10")),
            "{metrics}"
        );
        assert!(metrics.contains(&format!("webstack_proxy_response_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 10")));
        assert!(metrics.contains(&format!("webstack_proxy_requests_total{{{labels}}} 10")));
        assert!(metrics.contains(&format!("webstack_proxy_responses_total{{{labels},class=\"2xx\"}} 10")));
        assert!(!metrics.contains(&format!("webstack_proxy_response_bytes_total{{{labels}}} 0\n")), "{metrics}");
    }
    // Ten requests each, over kept-alive upstream connections.
    for u in &upstreams {
        let n = u.connections.load(Ordering::SeqCst);
        assert!((1..=2).contains(&n), "an upstream saw {n} connections for 10 requests");
    }
}

#[test]
fn client_keep_alive_serves_many_requests_on_one_connection() {
    let servers = [("s1", addr("127.210.2.11:9000"))];
    let _u = Upstream::start("s1", servers[0].1);
    let _proxy = Proxy::start(&config(2, &servers, ""));
    let mut s = TcpStream::connect(addr("127.210.2.1:8080")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..5 {
        s.write_all(format!("GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(&format!("s1 /k{i}")), "{text}");
    }
}

#[test]
fn health_checks_take_a_server_out_and_bring_it_back() {
    let servers = [("s1", addr("127.210.3.11:9000")), ("s2", addr("127.210.3.12:9000"))];
    let ups: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let health = "[pools.web.health]\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 500\nrise = 2\nfall = 2\n";
    let _proxy = Proxy::start(&config(3, &servers, health));
    let lb = addr("127.210.3.1:8080");
    let admin = addr("127.210.3.1:8404");

    ups[1].health.store(503, Ordering::SeqCst);
    let wait_for = |needle: &str| wait_for_metric(admin, needle);
    wait_for("webstack_proxy_server_up{pool=\"web\",server=\"s2\"} 0");
    for _ in 0..6 {
        assert_eq!(get(lb, "/").header("x-served-by").as_deref(), Some("s1"));
    }
    assert_eq!(get(admin, "/ready").status, 503);
    assert_eq!(get(admin, "/healthz").status, 200, "one server up is enough for /healthz");
    // The stats page and the API say why, as HAProxy's LastChk does.
    let stats = get(admin, "/stats").body;
    let row = stats.lines().find(|l| l.trim_start().starts_with("s2 ")).unwrap_or_else(|| panic!("{stats}"));
    assert!(row.contains("DOWN") && row.contains("failed in ") && row.contains(": status 503"), "{row}");
    assert!(get(admin, "/api/servers").body.contains("status 503"));

    ups[1].health.store(200, Ordering::SeqCst);
    wait_for("webstack_proxy_server_up{pool=\"web\",server=\"s2\"} 1");
    let served: Vec<String> = (0..4).filter_map(|_| get(lb, "/").header("x-served-by")).collect();
    assert!(served.iter().any(|s| s == "s2"), "{served:?}");
    assert_eq!(get(admin, "/ready").status, 200);
    let stats = get(admin, "/stats").body;
    let row = stats.lines().find(|l| l.trim_start().starts_with("s2 ")).unwrap_or_else(|| panic!("{stats}"));
    assert!(row.contains(" UP ") && row.contains("passed in "), "{row}");
}

#[test]
fn a_dead_server_is_skipped_at_once_and_all_dead_gives_a_clear_503_or_502() {
    let servers = [("s1", addr("127.210.4.11:9000")), ("dead", addr("127.210.4.12:9000"))];
    let mut up = Upstream::start("s1", servers[0].1);
    let _proxy = Proxy::start(&config(4, &servers, ""));
    let lb = addr("127.210.4.1:8080");
    // No health check here: the connect failure itself sends the request on to s1.
    for _ in 0..6 {
        let a = get(lb, "/");
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-served-by").as_deref(), Some("s1"));
    }
    up.stop();
    let a = get(lb, "/");
    assert_eq!(a.status, 502, "{}", a.head);
    assert!(a.body.contains("502 Bad Gateway") && a.body.contains("could not be reached"), "{}", a.body);
    assert_eq!(a.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
}

#[test]
fn no_server_up_gives_503() {
    let servers = [("s1", addr("127.210.5.11:9000"))];
    let u = Upstream::start("s1", servers[0].1);
    u.health.store(500, Ordering::SeqCst);
    let health = "[pools.web.health]\ninterval_ms = 50\nfall = 1\nrise = 1\n";
    let _proxy = Proxy::start(&config(5, &servers, health));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get(addr("127.210.5.1:8080"), "/");
        if a.status == 503 {
            assert!(a.body.contains("No server is available"), "{}", a.body);
            break;
        }
        assert!(Instant::now() < deadline, "never 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(addr("127.210.5.1:8404"), "/healthz").status, 503);
}

#[test]
fn static_routes_serve_files_and_refuse_traversal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("site.css"), "body{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("site.css"), root.join("in.css")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    let text = format!(
        "name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.210.6.1:8080\"\n[[listeners.routes]]\nprefix = \"/static/\"\nstatic_root = \"{}\"\n",
        root.display()
    );
    let _proxy = Proxy::start(&text);
    let web = addr("127.210.6.1:8080");
    let css = get(web, "/static/site.css");
    assert_eq!((css.status, css.body.as_str()), (200, "body{}"));
    assert_eq!(css.header("content-type").as_deref(), Some("text/css; charset=utf-8"));
    let etag = css.header("etag").expect("etag");
    let again = request(
        web,
        &format!("GET /static/site.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(again.status, 304);
    for path in ["/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2fsecret.txt", "/static/site.css%00"]
    {
        let a = get(web, path);
        assert!(a.status == 400 || a.status == 404, "{path}: {}", a.status);
        assert!(!a.body.contains("secret"), "{path} leaked the file");
    }
    assert_eq!(get(web, "/static/nope.css").status, 404);
    let out = get(web, "/static/out.txt");
    assert_eq!(out.status, 403, "a symlink out of the root");
    assert!(!out.body.contains("secret"));
    assert_eq!(get(web, "/static/up/secret.txt").status, 403, "a symlinked directory out of the root");
    assert_eq!(get(web, "/static/in.css").body, "body{}", "a symlink inside the root is followed");
    assert_eq!(get(web, "/other").status, 404, "no route matches");
    let post =
        request(web, "POST /static/site.css HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(post.status, 405);
}

fn pool_config(net: u8, pool_options: &str, servers: &[(&str, SocketAddr, &str)]) -> String {
    let mut c = format!(
        "name = \"lb\"\n[admin]\nbind = \"127.210.{net}.1:8404\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.{net}.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n[pools.web]\nserved_by_header = true\n{pool_options}\n"
    );
    for (name, address, options) in servers {
        c.push_str(&format!("[[pools.web.servers]]\nname = \"{name}\"\naddress = \"{address}\"\n{options}\n"));
    }
    c
}

fn served_by(address: SocketAddr, path: &str, headers: &str) -> String {
    request(address, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"))
        .header("x-served-by")
        .unwrap_or_default()
}

#[test]
fn weights_backups_and_active_passive() {
    let s1 = addr("127.210.7.11:9000");
    let s2 = addr("127.210.7.12:9000");
    let standby = addr("127.210.7.13:9000");
    let mut ups = [Upstream::start("s1", s1), Upstream::start("s2", s2), Upstream::start("standby", standby)];
    let _proxy = Proxy::start(&pool_config(
        7,
        "connect_timeout_ms = 300",
        &[("s1", s1, "weight = 3"), ("s2", s2, "weight = 1"), ("standby", standby, "backup = true")],
    ));
    let lb = addr("127.210.7.1:8080");
    let picks: Vec<String> = (0..8).map(|_| served_by(lb, "/", "")).collect();
    assert_eq!(picks.iter().filter(|p| *p == "s1").count(), 6, "weight 3 of 4: {picks:?}");
    assert_eq!(picks.iter().filter(|p| *p == "s2").count(), 2, "{picks:?}");
    // Active-passive: the backup takes traffic only once both primaries are gone.
    ups[0].stop();
    ups[1].stop();
    let picks: Vec<String> = (0..4).map(|_| served_by(lb, "/", "")).collect();
    assert!(picks.iter().all(|p| p == "standby"), "{picks:?}");
}

#[test]
fn sticky_cookie_pins_a_client_and_hashing_keeps_keys_on_servers() {
    let servers: Vec<(&str, SocketAddr)> =
        vec![("s1", addr("127.210.8.11:9000")), ("s2", addr("127.210.8.12:9000")), ("s3", addr("127.210.8.13:9000"))];
    let _ups: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let list: Vec<(&str, SocketAddr, &str)> = servers.iter().map(|(n, a)| (*n, *a, "")).collect();
    let _proxy = Proxy::start(&pool_config(8, "sticky_cookie = \"SERVERID\"", &list));
    let lb = addr("127.210.8.1:8080");
    let first = request(lb, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let server = first.header("x-served-by").unwrap();
    assert_eq!(first.header("set-cookie"), Some(format!("SERVERID={server}; Path=/; HttpOnly")));
    for _ in 0..5 {
        let again = request(
            lb,
            &format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; SERVERID={server}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(again.header("x-served-by").as_deref(), Some(server.as_str()));
        assert_eq!(again.header("set-cookie"), None, "a pinned client is not told again");
    }
    // A cookie naming no server is ignored and replaced.
    let stale = request(lb, "GET / HTTP/1.1\r\nHost: x\r\nCookie: SERVERID=gone\r\nConnection: close\r\n\r\n");
    assert!(stale.header("set-cookie").is_some());

    drop(_proxy);
    let _proxy = Proxy::start(&pool_config(8, "balance = \"hdr(X-User)\"", &list));
    for user in ["alice", "bob", "carol", "dave"] {
        let header = format!("X-User: {user}\r\n");
        let first = served_by(lb, "/", &header);
        assert!((0..4).all(|_| served_by(lb, "/", &header) == first), "{user} moved");
    }
    let spread: std::collections::BTreeSet<String> =
        (0..40).map(|i| served_by(lb, "/", &format!("X-User: user{i}\r\n"))).collect();
    assert_eq!(spread.len(), 3, "keys spread over every server: {spread:?}");

    // balance uri: each path stays on one server whatever its query; paths spread.
    drop(_proxy);
    let _proxy = Proxy::start(&pool_config(8, "balance = \"uri\"", &list));
    for path in ["/a.css", "/b.js", "/img/c.png", "/d"] {
        let first = served_by(lb, path, "");
        assert!((0..4).all(|i| served_by(lb, &format!("{path}?v={i}"), "") == first), "{path} moved");
    }
    let spread: std::collections::BTreeSet<String> = (0..40).map(|i| served_by(lb, &format!("/o{i}"), "")).collect();
    assert_eq!(spread.len(), 3, "paths spread over every server: {spread:?}");
}

#[test]
fn access_log_lines_carry_the_request_id_sent_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s1 = addr("127.210.9.11:9000");
    let _u = Upstream::start("s1", s1);
    let access_log = format!("[access_log]\npath = \"{}\"\nformat = \"json\"\n[admin]", log.display());
    let text = pool_config(9, "", &[("s1", s1, "")]).replacen("[admin]", &access_log, 1);
    let proxy = Proxy::start(&text);
    let lb = addr("127.210.9.1:8080");
    let kept = request(lb, "GET /a?x=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-42\r\nUser-Agent: \"quoted\" agent\r\nConnection: close\r\n\r\n");
    assert!(kept.body.ends_with("rid=trace-42"), "{}", kept.body);
    let made =
        request(lb, "GET /b HTTP/1.1\r\nHost: x\r\nX-Request-Id: bad id with spaces\r\nConnection: close\r\n\r\n");
    let rid = made.body.rsplit("rid=").next().unwrap().to_string();
    assert_eq!(rid.len(), 16, "{}", made.body);
    drop(proxy); // flushes the log
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["request_id"], "trace-42");
    assert_eq!(lines[0]["uri"], "/a?x=1");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["server"], "s1");
    assert_eq!(lines[0]["pool"], "web");
    assert_eq!(lines[0]["user_agent"], "\"quoted\" agent");
    assert_eq!(lines[1]["request_id"], rid.as_str());
}

#[test]
fn passive_health_takes_out_a_failing_server_and_the_cooldown_brings_it_back() {
    let s1 = addr("127.210.10.11:9000");
    let s2 = addr("127.210.10.12:9000");
    let _u1 = Upstream::start("s1", s1);
    let u2 = Upstream::start("s2", s2);
    u2.status.store(500, Ordering::SeqCst);
    let _proxy = Proxy::start(&pool_config(
        10,
        "[pools.web.passive]\nfailures = 2\ncooldown_ms = 400",
        &[("s1", s1, ""), ("s2", s2, "")],
    ));
    let lb = addr("127.210.10.1:8080");
    let statuses: Vec<u16> = (0..4).map(|_| get(lb, "/").status).collect();
    assert_eq!(statuses, [200, 500, 200, 500], "s2 fails twice before it is out");
    let after: Vec<String> = (0..6).map(|_| served_by(lb, "/", "")).collect();
    assert!(after.iter().all(|s| s == "s1"), "{after:?}");
    let stats = get(addr("127.210.10.1:8404"), "/stats").body;
    assert!(stats.contains("taken out by passive health: 2 failures in a row, the last: answered 500"), "{stats}");
    u2.status.store(200, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(600));
    let back: Vec<String> = (0..4).map(|_| served_by(lb, "/", "")).collect();
    assert!(back.iter().any(|s| s == "s2"), "{back:?}");
}

/// A server that accepts and then answers only as `script` says.
fn scripted_server(address: SocketAddr, script: &'static [u8]) -> std::thread::JoinHandle<()> {
    let listener = std::net::TcpListener::bind(address).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(script);
            std::thread::sleep(Duration::from_secs(3));
        }
    })
}

#[test]
fn first_byte_and_idle_timeouts_end_stuck_responses() {
    let silent = addr("127.210.11.11:9000");
    let _t = scripted_server(silent, b"");
    let _proxy = Proxy::start(&pool_config(11, "first_byte_timeout_ms = 300", &[("silent", silent, "")]));
    let started = Instant::now();
    let a = get(addr("127.210.11.1:8080"), "/");
    assert_eq!(a.status, 504, "{}", a.head);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    drop(_proxy);

    let stalling = addr("127.210.12.11:9000");
    let _t = scripted_server(stalling, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    let _proxy = Proxy::start(&pool_config(12, "idle_timeout_ms = 300", &[("stalling", stalling, "")]));
    let started = Instant::now();
    let mut s = TcpStream::connect(addr("127.210.12.1:8080")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("partial"), "{text}");
    assert!(elapsed < Duration::from_secs(2), "the stalled response held the client {elapsed:?}");
}

fn post(address: SocketAddr, path: &str) -> Answer {
    request(address, &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
}

#[test]
fn reload_under_load_loses_no_request_and_keeps_runtime_changes() {
    let servers =
        [("s1", addr("127.210.13.11:9000")), ("s2", addr("127.210.13.12:9000")), ("s3", addr("127.210.13.13:9000"))];
    let _ups: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let two: Vec<(&str, SocketAddr, &str)> = servers[..2].iter().map(|(n, a)| (*n, *a, "")).collect();
    std::fs::write(&path, pool_config(13, "", &two)).unwrap();
    let _proxy = Proxy::start_file(&path);
    let lb = addr("127.210.13.1:8080");
    let admin = addr("127.210.13.1:8404");

    // An idle keep-alive connection opened before the reloads.
    let mut idle = TcpStream::connect(lb).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // Load: four clients on keep-alive connections, for the whole test.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                let mut s = TcpStream::connect(lb).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    let answered = s.write_all(b"GET /load HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
                        && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"));
                    if answered {
                        ok += 1;
                    } else {
                        failed += 1;
                        s = TcpStream::connect(lb).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(200));
    // A runtime change, then a reload that adds s3 and changes nothing about s1.
    assert_eq!(post(admin, "/api/servers/web/s2/state/maint").status, 200);
    let three: Vec<(&str, SocketAddr, &str)> = servers.iter().map(|(n, a)| (*n, *a, "")).collect();
    std::fs::write(&path, pool_config(13, "", &three)).unwrap();
    let reloaded = post(admin, "/reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    std::thread::sleep(Duration::from_millis(200));
    // A broken file is refused whole; the running config stays.
    std::fs::write(&path, pool_config(13, "balance = \"nonsense\"", &three)).unwrap();
    let refused = post(admin, "/reload");
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("pools.web.balance: unknown balance `nonsense`"), "{}", refused.body);
    // What an alert on the metrics sees: the file on disk is not the config that runs.
    let metrics = get(admin, "/metrics").body;
    for line in [
        "webstack_proxy_reloads_total{result=\"ok\"} 1\n",
        "webstack_proxy_reloads_total{result=\"failed\"} 1\n",
        "webstack_proxy_config_last_reload_successful 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed across the reloads", ok + failed);

    // The idle connection still works, s2 is still in maintenance, s3 takes traffic.
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let picks: Vec<String> = (0..6).map(|_| served_by(lb, "/", "")).collect();
    assert!(!picks.iter().any(|p| p == "s2"), "{picks:?}");
    assert!(picks.iter().any(|p| p == "s3"), "{picks:?}");
    let api: serde_json::Value = serde_json::from_str(&get(admin, "/api/servers").body).unwrap();
    assert_eq!(api["pools"][0]["servers"][1]["admin"], "maint");
}

#[test]
fn a_drained_server_finishes_its_requests_and_takes_no_new_ones() {
    let s1 = addr("127.210.14.11:9000");
    let s2 = addr("127.210.14.12:9000");
    let _u1 = Upstream::start("s1", s1);
    let _u2 = Upstream::start("s2", s2);
    let _proxy = Proxy::start(&pool_config(14, "", &[("s1", s1, ""), ("s2", s2, "weight = 0")]));
    let lb = addr("127.210.14.1:8080");
    let admin = addr("127.210.14.1:8404");
    let slow = std::thread::spawn(move || get(lb, "/slow"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(post(admin, "/api/servers/web/s1/state/drain").status, 200);
    assert_eq!(post(admin, "/api/servers/web/s2/weight/1").status, 200);
    let picks: Vec<String> = (0..4).map(|_| served_by(lb, "/", "")).collect();
    assert!(picks.iter().all(|p| p == "s2"), "{picks:?}");
    let finished = slow.join().unwrap();
    assert_eq!(finished.status, 200);
    assert_eq!(
        finished.header("x-served-by").as_deref(),
        Some("s1"),
        "the in-flight request finished on the drained server"
    );
    assert_eq!(post(admin, "/api/servers/web/s1/state/sleep").status, 400);
    assert_eq!(post(admin, "/api/servers/web/nope/state/drain").status, 404);
    assert_eq!(post(admin, "/api/servers/web/s1/weight/999").status, 400);
}

#[test]
fn shutdown_drains_in_flight_requests() {
    let s1 = addr("127.210.15.11:9000");
    let _u1 = Upstream::start("s1", s1);
    let proxy = Proxy::start(&pool_config(15, "", &[("s1", s1, "")]));
    let lb = addr("127.210.15.1:8080");
    let slow = std::thread::spawn(move || get(lb, "/slow"));
    std::thread::sleep(Duration::from_millis(150));
    drop(proxy); // asks for shutdown and waits until the proxy has stopped
    let finished = slow.join().unwrap();
    assert_eq!(finished.status, 200, "the in-flight request was cut: {}", finished.head);
    assert!(TcpStream::connect(lb).is_err(), "still accepting after shutdown");
}

#[test]
fn shutdown_gives_in_flight_requests_no_longer_than_its_timeout() {
    let s1 = addr("127.210.70.11:9000");
    let _u1 = Upstream::start("s1", s1);
    // /slow takes 600 ms; the proxy may take only 100 ms to stop.
    let text = pool_config(70, "", &[("s1", s1, "")]).replacen(
        "name = \"lb\"\n",
        "name = \"lb\"\nshutdown_timeout_ms = 100\n",
        1,
    );
    let proxy = Proxy::start(&text);
    let lb = addr("127.210.70.1:8080");
    let slow = std::thread::spawn(move || get(lb, "/slow"));
    std::thread::sleep(Duration::from_millis(150));
    drop(proxy); // returns once the proxy has stopped: at its timeout, before /slow answers
    assert_ne!(slow.join().unwrap().status, 200, "cut at the timeout, not waited for");
}

#[test]
fn http2_with_prior_knowledge_is_served_and_forwarded_as_http1() {
    let s1 = addr("127.210.16.11:9000");
    let _u1 = Upstream::start("s1", s1);
    let _proxy = Proxy::start(&pool_config(16, "", &[("s1", s1, "")]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bodies: Vec<(u16, String, String)> = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect("127.210.16.1:8080").await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        // Several streams on one connection, at once.
        let requests: Vec<_> = (0..5)
            .map(|i| {
                let req = hyper::Request::builder()
                    .uri(format!("http://www.foobar.com/h2/{i}?q=1"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                sender.send_request(req)
            })
            .collect();
        for r in requests {
            let response = r.await.unwrap();
            let status = response.status().as_u16();
            let served = response.headers().get("x-served-by").unwrap().to_str().unwrap().to_string();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            out.push((status, served, String::from_utf8_lossy(&body).into_owned()));
        }
        out
    });
    for (i, (status, served, body)) in bodies.iter().enumerate() {
        assert_eq!((*status, served.as_str()), (200, "s1"));
        assert!(body.starts_with(&format!("s1 /h2/{i} ")), "{body}");
    }
}

#[test]
fn websocket_upgrades_pass_through_as_a_tunnel() {
    let upstream = addr("127.210.17.11:9000");
    let server = echoing_upgrade_server(upstream);
    let _proxy = Proxy::start(&pool_config(17, "", &[("ws", upstream, "")]));
    let mut c = TcpStream::connect(addr("127.210.17.1:8080")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"through the tunnel", &[0u8, 159, 146, 150]] {
        c.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        c.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
    drop(c);
    let request = server.join().unwrap();
    assert!(request.contains("upgrade: websocket") && request.contains("connection: upgrade"), "{request}");
}

/// A server that answers its one connection's request with 101 and then echoes what comes
/// through the tunnel until the other side closes; the request it got, lowercased.
fn echoing_upgrade_server(address: SocketAddr) -> std::thread::JoinHandle<String> {
    let listener = std::net::TcpListener::bind(address).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
        request
    })
}

#[test]
fn oversized_headers_and_bodies_get_431_and_413() {
    let s1 = addr("127.210.18.11:9000");
    let _u1 = Upstream::start("s1", s1);
    let config = pool_config(18, "", &[("s1", s1, "")]).replacen(
        "bind = \"127.210.18.1:8080\"",
        "bind = \"127.210.18.1:8080\"\nmax_header_bytes = 8192\nmax_headers = 20\nmax_body_bytes = 1000",
        1,
    );
    let _proxy = Proxy::start(&config);
    let lb = addr("127.210.18.1:8080");
    let big = "x".repeat(10_000);
    assert_eq!(
        request(lb, &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")).status,
        431
    );
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(request(lb, &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n")).status, 431);
    let body = "b".repeat(2000);
    let declared =
        request(lb, &format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}"));
    assert_eq!(declared.status, 413);
    let chunked = request(
        lb,
        &format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"),
    );
    assert_eq!(chunked.status, 413, "{}", chunked.head);
    let small = request(lb, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    assert_eq!(small.status, 200);
    let metrics = get(addr("127.210.18.1:8404"), "/metrics").body;
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("webstack_proxy_request_bytes_total{pool=\"web\"} "))
        .and_then(|v| v.parse().ok())
        .expect("request bytes metric");
    assert!(sent >= 5, "{sent} request body bytes counted");
}

/// Reads each request and closes the connection without a word, recording what it got.
fn resetting_server(address: SocketAddr) -> Arc<std::sync::Mutex<Vec<String>>> {
    let listener = std::net::TcpListener::bind(address).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                record.lock().unwrap().push(text.lines().next().unwrap_or("").to_string());
            }
            // Closing with unread data left sends a reset.
            drop(s);
        }
    });
    seen
}

#[test]
fn a_failed_get_is_retried_elsewhere_but_a_post_is_never_sent_twice() {
    let bad = addr("127.210.19.11:9000");
    let good = addr("127.210.19.12:9000");
    let bad_seen = resetting_server(bad);
    let up = Upstream::start("good", good);
    let _proxy = Proxy::start(&pool_config(19, "", &[("bad", bad, ""), ("good", good, "")]));
    let lb = addr("127.210.19.1:8080");
    for i in 0..4 {
        let a = get(lb, &format!("/get-{i}"));
        assert_eq!(a.status, 200, "GET {i}: {}", a.head);
        assert_eq!(a.header("x-served-by").as_deref(), Some("good"));
    }
    assert!(bad_seen.lock().unwrap().iter().any(|l| l.starts_with("GET /get-")), "the bad server was never tried");

    let mut failed_post = None;
    for i in 0..4 {
        let a = request(
            lb,
            &format!("POST /post-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
        );
        if a.status == 502 {
            failed_post = Some(i);
            break;
        }
        assert_eq!(a.status, 200);
    }
    let i = failed_post.expect("no POST reached the bad server");
    let path = format!("/post-{i}");
    let at_bad = bad_seen.lock().unwrap().iter().filter(|l| l.contains(&path)).count();
    let at_good = up.seen.lock().unwrap().iter().filter(|l| l.contains(&path)).count();
    assert_eq!((at_bad, at_good), (1, 0), "a POST that failed once sent must not be sent again");
}

#[test]
fn a_killed_server_never_fails_a_get_once_passive_health_has_seen_it() {
    let servers =
        [("s1", addr("127.210.20.11:9000")), ("s2", addr("127.210.20.12:9000")), ("s3", addr("127.210.20.13:9000"))];
    let mut ups: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let list: Vec<(&str, SocketAddr, &str)> = servers.iter().map(|(n, a)| (*n, *a, "")).collect();
    let _proxy = Proxy::start(&pool_config(20, "[pools.web.passive]\nfailures = 1\ncooldown_ms = 60000", &list));
    let lb = addr("127.210.20.1:8080");
    let admin = addr("127.210.20.1:8404");
    for _ in 0..30 {
        assert_eq!(get(lb, "/").status, 200);
    }
    ups[1].stop();
    let (mut before, mut after, mut seen_down) = (0, 0, false);
    for _ in 0..200 {
        let status = get(lb, "/").status;
        if !seen_down {
            seen_down = get(admin, "/metrics").body.contains("webstack_proxy_server_up{pool=\"web\",server=\"s2\"} 0");
            before += (status != 200) as u32;
        } else {
            after += (status != 200) as u32;
        }
    }
    assert!(seen_down, "passive health never took s2 out");
    eprintln!("s2 killed: {before} failed GETs before passive health acted");
    assert_eq!(after, 0, "GETs failed after s2 was taken out");
}

#[test]
fn tcp_health_checks_need_only_a_connection() {
    let s1 = addr("127.210.21.11:9000");
    let s2 = addr("127.210.21.12:9000");
    let u1 = Upstream::start("s1", s1);
    u1.health.store(500, Ordering::SeqCst); // irrelevant to a TCP check
    let mut u2 = Upstream::start("s2", s2);
    let health = "[pools.web.health]\nkind = \"tcp\"\ninterval_ms = 50\nrise = 1\nfall = 1\n";
    let _proxy = Proxy::start(&pool_config(21, health, &[("s1", s1, ""), ("s2", s2, "")]));
    let admin = addr("127.210.21.1:8404");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(admin, "/ready").status, 200, "{}", get(admin, "/ready").body);
    u2.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get(admin, "/ready").body.contains("web/s2") {
        assert!(Instant::now() < deadline, "a closed port was never seen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!get(admin, "/ready").body.contains("web/s1"));
}

#[test]
fn static_routes_serve_like_nginx_ranges_index_precompressed_and_fixed_answers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
    std::fs::write(root.join("big.txt"), &text).unwrap();
    std::fs::write(root.join("big.txt.gz"), b"pretend-gzip").unwrap();
    std::fs::write(root.join("big.txt.br"), b"pretend-brotli").unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    let config = format!(
        "name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.210.22.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/static/\"\nstatic_root = \"{}\"\ncache_control = \"public, max-age=60\"\nprecompressed = true\n\
         [[listeners.routes]]\nexact = \"/static/special\"\nrespond = {{ status = 418, body = \"teapot\" }}\n\
         [[listeners.routes]]\nexact = \"/old\"\nredirect = {{ to = \"/static/docs/\", status = 308 }}\n",
        root.display()
    );
    let _proxy = Proxy::start(&config);
    let web = addr("127.210.22.1:8080");
    let req = |path: &str, headers: &str| {
        request(web, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"))
    };

    let whole = req("/static/big.txt", "");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, text);
    assert_eq!(whole.header("cache-control").as_deref(), Some("public, max-age=60"));
    assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(whole.header("vary").as_deref(), Some("Accept-Encoding"));

    let part = req("/static/big.txt", "Range: bytes=10-19\r\n");
    assert_eq!((part.status, part.body.as_str()), (206, "line 0001\n"));
    assert_eq!(part.header("content-range").as_deref(), Some(format!("bytes 10-19/{}", text.len()).as_str()));
    let tail = req("/static/big.txt", "Range: bytes=-10\r\n");
    assert_eq!((tail.status, tail.body.as_str()), (206, "line 0999\n"));
    let past = req("/static/big.txt", "Range: bytes=999999-\r\n");
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range").as_deref(), Some(format!("bytes */{}", text.len()).as_str()));
    let etag = whole.header("etag").unwrap();
    let stale = req("/static/big.txt", "Range: bytes=0-3\r\nIf-Range: \"old\"\r\n");
    assert_eq!(stale.status, 200, "a stale If-Range gets the whole file");
    let fresh = req("/static/big.txt", &format!("Range: bytes=0-3\r\nIf-Range: {etag}\r\n"));
    assert_eq!((fresh.status, fresh.body.as_str()), (206, "line"));
    assert_eq!(req("/static/big.txt", &format!("If-None-Match: {etag}\r\n")).status, 304);

    let br = req("/static/big.txt", "Accept-Encoding: gzip, br\r\n");
    assert_eq!((br.header("content-encoding").as_deref(), br.body.as_str()), (Some("br"), "pretend-brotli"));
    assert_eq!(br.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    let gz = req("/static/big.txt", "Accept-Encoding: gzip, br;q=0\r\n");
    assert_eq!((gz.header("content-encoding").as_deref(), gz.body.as_str()), (Some("gzip"), "pretend-gzip"));
    assert_ne!(gz.header("etag"), whole.header("etag"), "each variant has its own tag");

    let slash = req("/static/docs", "");
    assert_eq!((slash.status, slash.header("location").as_deref()), (301, Some("/static/docs/")));
    let index = req("/static/docs/", "");
    assert_eq!((index.status, index.body.as_str()), (200, "<h1>docs</h1>"));
    assert_eq!(index.header("content-type").as_deref(), Some("text/html; charset=utf-8"));

    let exact = req("/static/special", "");
    assert_eq!((exact.status, exact.body.as_str()), (418, "teapot"), "an exact route wins over a prefix");
    let moved = req("/old", "");
    assert_eq!((moved.status, moved.header("location").as_deref()), (308, Some("/static/docs/")));
    assert_eq!(req("/old/more", "").status, 404, "exact means exact");
}

fn raw_get(address: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        body = decoded;
    }
    (head, body)
}

#[test]
fn text_is_compressed_on_the_fly_for_clients_that_accept_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    std::fs::create_dir_all(&root).unwrap();
    let text: String = (0..2000).map(|i| format!("<p>paragraph {i}</p>\n")).collect();
    std::fs::write(root.join("page.html"), &text).unwrap();
    std::fs::write(root.join("small.txt"), "tiny").unwrap();
    std::fs::write(root.join("photo.png"), vec![7u8; 5000]).unwrap();
    let config = format!(
        "name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.210.23.1:8080\"\ncompress = true\n\
         [[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\n",
        root.display()
    );
    let _proxy = Proxy::start(&config);
    let web = addr("127.210.23.1:8080");

    let (head, body) = raw_get(web, "/page.html", "Accept-Encoding: gzip\r\n");
    assert!(head.contains("content-encoding: gzip") && head.contains("vary: accept-encoding"), "{head}");
    assert!(head.contains("etag: w/\""), "a compressed answer carries a weak tag: {head}");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut plain).unwrap();
    assert_eq!(plain, text);
    assert!(body.len() * 5 < text.len(), "{} bytes compressed to {}", text.len(), body.len());

    let (head, body) = raw_get(web, "/page.html", "Accept-Encoding: gzip, br\r\n");
    assert!(head.contains("content-encoding: br"), "{head}");
    let mut plain = String::new();
    brotli::Decompressor::new(&body[..], 4096).read_to_string(&mut plain).unwrap();
    assert_eq!(plain, text);

    for (path, headers) in [
        ("/page.html", ""),
        ("/small.txt", "Accept-Encoding: gzip\r\n"),
        ("/photo.png", "Accept-Encoding: gzip\r\n"),
        ("/page.html", "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n"),
    ] {
        let (head, _) = raw_get(web, path, headers);
        assert!(!head.contains("content-encoding"), "{path} {headers:?} was compressed: {head}");
    }
}

#[test]
fn cached_static_files_follow_every_change_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("static");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("app.js"), "one").unwrap();
    std::fs::write(root.join("docs/index.html"), "docs").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    let text = format!(
        "name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.210.24.1:8080\"\n[[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\nindex = [\"index.html\"]\n",
        root.display()
    );
    let _proxy = Proxy::start(&text);
    let web = addr("127.210.24.1:8080");
    // Twice each: the first answer fills the cache, the second comes from it.
    for _ in 0..2 {
        assert_eq!(get(web, "/app.js").body, "one");
        assert_eq!(get(web, "/docs/").body, "docs");
        assert_eq!(get(web, "/docs").status, 301, "a directory without its slash is redirected, cached or not");
    }
    let etag = get(web, "/app.js").header("etag");

    // Rewritten in place, same size, within the same second: new content and a new ETag
    // would not come from mtime in seconds alone.
    std::fs::write(root.join("app.js"), "two").unwrap();
    let a = get(web, "/app.js");
    assert_eq!(a.body, "two", "an edited file is served new at once");
    // Replaced by rename, as deploy tools do.
    std::fs::write(root.join("app.js.tmp"), "three!").unwrap();
    std::fs::rename(root.join("app.js.tmp"), root.join("app.js")).unwrap();
    let a = get(web, "/app.js");
    assert_eq!(a.body, "three!");
    assert_ne!(a.header("etag"), etag);
    std::fs::remove_file(root.join("app.js")).unwrap();
    assert_eq!(get(web, "/app.js").status, 404, "a removed file is gone");

    // A cached path whose directory is swapped for a symlink out of the root.
    std::fs::remove_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/index.html"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("docs")).unwrap();
    let a = get(web, "/docs/");
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(!a.body.contains("secret"));
}

#[test]
fn several_workers_share_the_connections() {
    let servers = [("s1", addr("127.210.25.11:9000")), ("s2", addr("127.210.25.12:9000"))];
    let _upstreams: Vec<Upstream> = servers.iter().map(|(n, a)| Upstream::start(n, *a)).collect();
    let text = config(25, &servers, "").replacen("name = \"lb\"\n", "name = \"lb\"\nworkers = 2\n", 1);
    let _proxy = Proxy::start(&text);
    let lb = addr("127.210.25.1:8080");
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|i| s.spawn(move || (0..25).map(|j| get(lb, &format!("/c{i}-{j}"))).collect::<Vec<_>>()))
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(|a| a.status == 200), "every request is served");
    let by_s1 = answers.iter().filter(|a| a.header("x-served-by").as_deref() == Some("s1")).count();
    assert!((80..=120).contains(&by_s1), "round robin across threads: {by_s1} of 200 on s1");
    let metrics = get(addr("127.210.25.1:8404"), "/metrics").body;
    assert!(metrics.contains("webstack_proxy_workers 2"), "{metrics}");

    let too_many = text.replace("workers = 2", "workers = 1000");
    let errors = proxy::ProxyConfig::from_source(&webstack_config::Source::from_text(
        std::path::Path::new("lb.toml"),
        &too_many,
    ))
    .unwrap_err()
    .to_string();
    assert!(errors.contains("lb.toml:2: workers"), "{errors}");
}

#[test]
fn maxconn_queues_what_a_server_cannot_take_and_a_long_wait_is_a_503() {
    let upstream = Upstream::start("a", addr("127.210.26.11:8081"));
    let proxy = addr("127.210.26.1:8080");
    let _lb =
        Proxy::start(&pool_config(26, "queue_timeout_ms = 5000", &[("a", addr("127.210.26.11:8081"), "maxconn = 2")]));
    // Six slow requests at once: the server never has more than two, and all six are answered.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..6).map(|_| s.spawn(move || get(proxy, "/slow").status)).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 6]);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 2, "maxconn held at the server");
    let servers = get(addr("127.210.26.1:8404"), "/api/servers").body;
    assert!(servers.contains("\"maxconn\":2") && servers.contains("\"queued\":0"), "{servers}");
    let stats = get(addr("127.210.26.1:8404"), "/stats").body;
    assert!(stats.contains("0 queued") && stats.contains("maxconn"), "{stats}");
    let line = stats.lines().find(|l| l.trim_start().starts_with("a ")).unwrap_or_default();
    assert_eq!(line.split_whitespace().nth(10), Some("2"), "the server's limit in its column: {stats}");
    drop(upstream);

    // One slot, and a queue timeout far shorter than a request: the two that wait get a 503.
    let upstream = Upstream::start("b", addr("127.210.27.11:8081"));
    let proxy = addr("127.210.27.1:8080");
    let _lb =
        Proxy::start(&pool_config(27, "queue_timeout_ms = 100", &[("b", addr("127.210.27.11:8081"), "maxconn = 1")]));
    let mut statuses: Vec<u16> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3).map(|_| s.spawn(move || get(proxy, "/slow").status)).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503, 503]);
    assert_eq!(upstream.peak.load(Ordering::SeqCst), 1);
    let metrics = get(addr("127.210.27.1:8404"), "/metrics").body;
    assert!(metrics.contains("webstack_proxy_queue_timeouts_total{pool=\"web\"} 2"), "{metrics}");
    assert!(metrics.contains("webstack_proxy_queued_requests{pool=\"web\"} 0"), "{metrics}");
}

#[test]
fn virtual_hosts_route_by_host_header_and_by_http2_authority() {
    let shop = addr("127.210.28.11:9000");
    let _shop = Upstream::start("shop", shop);
    let config = format!(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.28.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = {{ body = \"default site\" }}\n\
         [[listeners.routes]]\nhost = \"shop.example.org\"\nprefix = \"/\"\npool = \"shop\"\n\
         [[listeners.routes]]\nhost = \"*.example.org\"\nprefix = \"/\"\nrespond = {{ body = \"another example.org site\" }}\n\
         [pools.shop]\n[[pools.shop.servers]]\nname = \"shop\"\naddress = \"{shop}\"\n"
    );
    let _proxy = Proxy::start(&config);
    let proxy = addr("127.210.28.1:8080");
    let with_host =
        |host: &str| request(proxy, &format!("GET /cart HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).body;
    assert!(with_host("shop.example.org").starts_with("shop /cart"), "{}", with_host("shop.example.org"));
    assert!(with_host("SHOP.example.org:8080").starts_with("shop /cart"), "case and port do not matter");
    assert!(with_host("shop.example.org.").starts_with("shop /cart"), "nor a trailing dot");
    assert_eq!(with_host("blog.example.org"), "another example.org site");
    assert_eq!(with_host("www.foobar.com"), "default site");
    assert_eq!(with_host("127.210.28.1:8080"), "default site");

    // HTTP/2 names the host in the request's authority, not in a Host header.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .uri("http://shop.example.org:8080/cart")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    });
    assert!(body.starts_with("shop /cart"), "{body}");
}

/// An origin that records each request's head and answers with headers a route may strip.
fn recording_origin(address: SocketAddr) -> Arc<std::sync::Mutex<Vec<String>>> {
    let listener = std::net::TcpListener::bind(address).unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            record.lock().unwrap().push(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nServer: origin/1.0\r\nX-Powered-By: php\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
    });
    heads
}

/// A proxy config with one listener on `bind`, its `routes`, and the pool `web` of one
/// server, `origin`.
fn one_origin_site(bind: &str, routes: &str, origin: SocketAddr) -> String {
    format!(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"{bind}\"\n{routes}\
         [pools.web]\n[[pools.web.servers]]\nname = \"o\"\naddress = \"{origin}\"\n"
    )
}

#[test]
fn routes_set_and_remove_headers_both_ways() {
    let origin = addr("127.210.29.11:9000");
    let heads = recording_origin(origin);
    let config = one_origin_site(
        "127.210.29.1:8080",
        "[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
         request_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"X-Debug\"] }\n\
         response_headers = { set = { \"X-Frame-Options\" = \"DENY\" }, remove = [\"Server\", \"X-Powered-By\"] }\n\
         [[listeners.routes]]\nexact = \"/robots.txt\"\nrespond = { body = \"User-agent: *\" }\n\
         response_headers = { set = { \"Cache-Control\" = \"max-age=60\" } }\n",
        origin,
    );
    let _proxy = Proxy::start(&config);
    let proxy = addr("127.210.29.1:8080");
    let answer =
        request(proxy, "GET /page HTTP/1.1\r\nHost: x\r\nX-Env: dev\r\nX-Debug: 1\r\nConnection: close\r\n\r\n");
    assert_eq!(answer.status, 200);
    let sent = heads.lock().unwrap().last().cloned().unwrap_or_default();
    assert!(sent.contains("x-env: prod") && !sent.contains("x-env: dev"), "set replaces: {sent}");
    assert!(!sent.contains("x-debug"), "removed before the origin: {sent}");
    assert_eq!(answer.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!((answer.header("server"), answer.header("x-powered-by")), (None, None), "{}", answer.head);
    // Every target's answer, not only a pool's.
    let robots = get(proxy, "/robots.txt");
    assert_eq!(robots.header("cache-control").as_deref(), Some("max-age=60"));
}

#[test]
fn replace_prefix_rewrites_the_path_the_server_sees() {
    let origin = addr("127.210.42.11:9000");
    let heads = recording_origin(origin);
    let config = one_origin_site(
        "127.210.42.1:8080",
        "[[listeners.routes]]\nprefix = \"/api/\"\npool = \"web\"\nreplace_prefix = \"/\"\n\
         [[listeners.routes]]\nprefix = \"/old\"\npool = \"web\"\nreplace_prefix = \"/new/\"\n\
         [[listeners.routes]]\nexact = \"/status\"\npool = \"web\"\nreplace_prefix = \"/healthz\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n",
        origin,
    );
    let _proxy = Proxy::start(&config);
    let proxy = addr("127.210.42.1:8080");
    let request_line = |target: &str| {
        let answer = request(proxy, &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert_eq!(answer.status, 200, "{target}");
        let head = heads.lock().unwrap().last().cloned().unwrap_or_default();
        head.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(request_line("/api/users?page=2"), "get /users?page=2 http/1.1");
    assert_eq!(request_line("/api/"), "get / http/1.1");
    assert_eq!(request_line("/old/a/b"), "get /new/a/b http/1.1", "one slash where they meet");
    assert_eq!(request_line("/status"), "get /healthz http/1.1");
    assert_eq!(request_line("/status/more"), "get /status/more http/1.1", "an exact route matches only itself");
    assert_eq!(request_line("/other"), "get /other http/1.1", "routes without it pass the path on");
    assert_eq!(request_line("http://x/api/cart"), "get /cart http/1.1", "absolute form too");
}

#[test]
fn allow_and_deny_pick_clients_by_address() {
    let config = "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.30.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"public\" }\ndeny = [\"127.210.30.66\"]\n\
         [[listeners.routes]]\nprefix = \"/admin/\"\nrespond = { body = \"admin\" }\nallow = [\"127.210.30.0/28\"]\n";
    let _proxy = Proxy::start(config);
    // A request from a chosen source address.
    let from = |source: &str, path: &str| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&addr(&format!("{source}:0")).into()).unwrap();
        socket.connect(&addr("127.210.30.1:8080").into()).unwrap();
        let mut s: TcpStream = socket.into();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
    };
    assert_eq!(from("127.210.30.5", "/admin/users"), 200, "inside the allowed block");
    assert_eq!(from("127.210.30.20", "/admin/users"), 403, "outside it");
    assert_eq!(from("127.210.30.20", "/"), 200);
    assert_eq!(from("127.210.30.66", "/"), 403, "denied");
}

#[test]
fn max_connections_holds_new_clients_in_the_backlog_until_one_leaves() {
    let config = "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.31.1:8080\"\nmax_connections = 2\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"hello\" }\n";
    let _proxy = Proxy::start(config);
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        s.read(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Two clients keep their connections open (keep-alive).
    let mut first = TcpStream::connect("127.210.31.1:8080").unwrap();
    let mut second = TcpStream::connect("127.210.31.1:8080").unwrap();
    for s in [&mut first, &mut second] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(ask(s).unwrap().starts_with("HTTP/1.1 200"));
    }
    // A third gets through the kernel's handshake but no answer while both stay.
    let mut third = TcpStream::connect("127.210.31.1:8080").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(ask(&mut third).is_err(), "served past max_connections");
    // One leaves: the third is accepted and answered.
    drop(first);
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = third.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(ask(&mut second).unwrap().starts_with("HTTP/1.1 200"), "the others are served meanwhile");
}

#[test]
fn a_client_silent_mid_request_gets_408_and_is_not_held_against_the_server() {
    let s1 = addr("127.210.32.11:9000");
    let _u1 = Upstream::start("s1", s1);
    let lb = addr("127.210.32.1:8080");
    // One failure would take the only server out: a client's fault must not count as one.
    let config = pool_config(32, "[pools.web.passive]\nfailures = 1\ncooldown_ms = 60000", &[("s1", s1, "")])
        .replace("bind = \"127.210.32.1:8080\"\n", "bind = \"127.210.32.1:8080\"\nclient_timeout_ms = 300\n");
    let _proxy = Proxy::start(&config);

    // The body stops after 10 of its 100 bytes.
    let started = Instant::now();
    let stalled = request(lb, "POST /upload HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 100\r\n\r\n0123456789");
    assert_eq!(stalled.status, 408, "{}", stalled.head);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let after: Vec<u16> = (0..3).map(|_| get(lb, "/").status).collect();
    assert_eq!(after, [200, 200, 200], "the server stays in");

    // Headers that stop halfway: the connection is closed after the same timeout.
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.foo").unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_client_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse files: far more than the sockets on both sides can buffer, read fast.
    std::fs::File::create(dir.path().join("big.bin")).unwrap().set_len(64 << 20).unwrap();
    std::fs::File::create(dir.path().join("mid.bin")).unwrap().set_len(8 << 20).unwrap();
    let config = format!(
        "name = \"web\"\n[[listeners]]\nname = \"site\"\nbind = \"127.210.33.1:8080\"\nclient_timeout_ms = 300\n\
         [[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\n",
        dir.path().display()
    );
    let _proxy = Proxy::start(&config);
    let lb = addr("127.210.33.1:8080");
    let read_all = |s: &mut TcpStream, pause_every: Option<usize>| {
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (total, None),
                Ok(n) => total += n,
                Err(e) => return (total, Some(e.kind())),
            }
            if pause_every.is_some_and(|every| total % every < buf.len()) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };

    // Reads nothing for 1.5 s: the proxy closes the connection, the file is not all sent.
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (got, error) = read_all(&mut s, None);
    assert!(got < 64 << 20, "all {got} bytes arrived");
    assert!(!matches!(error, Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)), "{error:?}");

    // Reads with pauses shorter than the timeout: gets every byte.
    let mut s = TcpStream::connect(lb).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /mid.bin HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n").unwrap();
    let (got, error) = read_all(&mut s, Some(1 << 20));
    assert_eq!(error, None);
    assert!(got > 8 << 20, "{got} bytes: the file and its head");
}

#[test]
fn health_checks_send_their_host_and_pass_only_the_expected_statuses() {
    let s1 = addr("127.210.34.11:9000");
    let s2 = addr("127.210.34.12:9000");
    let u1 = Upstream::start("s1", s1);
    let heads = recording_origin(s2);
    let health = "[pools.web.health]\npath = \"/healthz\"\nhost = \"health.example.org\"\nexpect_status = [204]\n\
                  interval_ms = 100\ntimeout_ms = 500\nrise = 1\nfall = 1\n";
    let _proxy = Proxy::start(&config(34, &[("s1", s1), ("s2", s2)], health));
    let admin = addr("127.210.34.1:8404");
    let wait_for = |needle: &str| wait_for_metric(admin, needle);
    // 200 is not in the list: down; 204 is: up.
    wait_for("webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 0");
    u1.health.store(204, Ordering::SeqCst);
    wait_for("webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 1");
    let sent = heads.lock().unwrap().first().cloned().unwrap_or_default();
    assert!(sent.starts_with("get /healthz http/1.1\r\nhost: health.example.org\r\n"), "{sent}");
}

#[test]
fn a_rate_limit_answers_429_past_the_burst_per_client_address() {
    // One request per 10 s after a burst of 3: the test never waits for the rate.
    let config = "name = \"lb\"\n[admin]\nbind = \"127.210.35.1:8404\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.35.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"home\" }\n\
         [[listeners.routes]]\nprefix = \"/api/\"\nrespond = { body = \"api\" }\n\
         rate_limit = { requests_per_second = 0.1, burst = 3 }\n";
    let _proxy = Proxy::start(config);
    let from = |source: &str, path: &str| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&addr(&format!("{source}:0")).into()).unwrap();
        socket.connect(&addr("127.210.35.1:8080").into()).unwrap();
        let mut s: TcpStream = socket.into();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let status = |answer: &str| answer.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
    let first: Vec<u16> = (0..4).map(|_| status(&from("127.210.35.5", "/api/x"))).collect();
    assert_eq!(first, [200, 200, 200, 200], "the burst, and the first request");
    let refused = from("127.210.35.5", "/api/x");
    assert_eq!(status(&refused), 429, "{refused}");
    let retry =
        refused.lines().find_map(|l| l.strip_prefix("retry-after: ")).and_then(|v| v.trim().parse::<u64>().ok());
    assert!(retry.is_some_and(|s| (1..=10).contains(&s)), "{refused}");
    assert_eq!(status(&from("127.210.35.6", "/api/x")), 200, "another client has its own allowance");
    assert_eq!(status(&from("127.210.35.5", "/")), 200, "routes without a limit are not limited");
    let metrics = get(addr("127.210.35.1:8404"), "/metrics").body;
    assert!(
        metrics.contains("webstack_proxy_rate_limited_total{listener=\"www\",host=\"\",route=\"/api/\"} 1"),
        "{metrics}"
    );
}

#[test]
fn error_pages_replace_the_proxys_own_answers_not_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("errors")).unwrap();
    std::fs::write(dir.path().join("errors/502.html"), "<h1>We will be right back</h1>").unwrap();
    let up = addr("127.210.36.11:9000");
    let upstream = Upstream::start("s1", up);
    upstream.status.store(503, Ordering::SeqCst);
    let config = format!(
        "name = \"lb\"\n[error_pages]\n502 = \"errors/502.html\"\n503 = \"errors/502.html\"\n\
         [[listeners]]\nname = \"www\"\nbind = \"127.210.36.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"dead\"\n\
         [[listeners.routes]]\nprefix = \"/up/\"\npool = \"up\"\n\
         [pools.dead]\n[[pools.dead.servers]]\nname = \"gone\"\naddress = \"127.210.36.12:9000\"\n\
         [pools.up]\n[[pools.up.servers]]\nname = \"s1\"\naddress = \"{up}\"\n"
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proxy::start_file(&path);
    let lb = addr("127.210.36.1:8080");

    let own = get(lb, "/");
    assert_eq!(own.status, 502, "{}", own.head);
    assert_eq!(own.body, "<h1>We will be right back</h1>");
    assert_eq!(own.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    // A 503 the server sent is the server's: it passes as it is.
    let theirs = get(lb, "/up/x");
    assert_eq!(theirs.status, 503, "{}", theirs.head);
    assert!(theirs.body.contains("s1"), "{}", theirs.body);
}

#[test]
fn intercept_errors_gives_a_servers_error_answers_the_operators_page() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oops.html"), "<h1>Something went wrong</h1>").unwrap();
    let up = addr("127.210.72.11:9000");
    let upstream = Upstream::start("s1", up);
    let config = format!(
        "name = \"lb\"\n[error_pages]\n500 = \"oops.html\"\n401 = \"oops.html\"\n\
         [[listeners]]\nname = \"www\"\nbind = \"127.210.72.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"app\"\n\
         [pools.app]\nintercept_errors = true\n[[pools.app.servers]]\nname = \"s1\"\naddress = \"{up}\"\n"
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proxy::start_file(&path);
    let lb = addr("127.210.72.1:8080");
    // The server's 500 (a stack trace, say) never reaches the client: the page does.
    upstream.status.store(500, Ordering::SeqCst);
    let answer = get(lb, "/boom");
    assert_eq!((answer.status, answer.body.as_str()), (500, "<h1>Something went wrong</h1>"));
    assert_eq!(answer.header("x-upstream"), None, "none of the server's own headers");
    // A status without a page passes as the server sent it.
    upstream.status.store(503, Ordering::SeqCst);
    let answer = get(lb, "/busy");
    assert_eq!(answer.status, 503);
    assert!(answer.body.starts_with("s1 /busy"), "{}", answer.body);
    upstream.status.store(200, Ordering::SeqCst);
    assert!(get(lb, "/fine").body.starts_with("s1 /fine"));
}

#[test]
fn an_idle_http2_connection_is_closed_after_the_client_timeout_and_a_busy_one_is_not() {
    let s1 = addr("127.210.37.11:9000");
    let _u1 = Upstream::start("s1", s1);
    let config = pool_config(37, "", &[("s1", s1, "")])
        .replace("bind = \"127.210.37.1:8080\"\n", "bind = \"127.210.37.1:8080\"\nclient_timeout_ms = 300\n");
    let _proxy = Proxy::start(&config);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect("127.210.37.1:8080").await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let ask = |sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>| {
            let req = hyper::Request::builder()
                .uri("http://www.foobar.com/x")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req)
        };
        // A request every 100 ms for a second: busy, so it stays open.
        for _ in 0..10 {
            assert_eq!(ask(&mut sender).await.unwrap().status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!conn.is_finished(), "a busy connection was closed");
        // Then nothing: the server ends it within two timeouts.
        let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
        assert!(ended.is_ok(), "the idle connection stayed open");
    });
}

/// Sends `parts` one after the other (a pause between them, so a header can arrive cut in
/// two), then reads the whole answer.
fn send_in_parts(address: SocketAddr, parts: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        s.write_all(part).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn behind_a_layer_4_balancer_the_proxy_protocol_names_the_client() {
    let s1 = addr("127.210.38.11:9000");
    let _upstream = Upstream::start("s1", s1);
    let config = config(38, &[("s1", s1)], "")
        .replace("bind = \"127.210.38.1:8080\"\n", "bind = \"127.210.38.1:8080\"\naccept_proxy = true\n")
        .replace(
            "[[listeners.routes]]\nprefix = \"/\"",
            "[[listeners.routes]]\nprefix = \"/private\"\npool = \"web\"\ndeny = [\"198.51.100.0/24\"]\n\
             [[listeners.routes]]\nprefix = \"/\"",
        );
    let _proxy = Proxy::start(&config);
    let lb = addr("127.210.38.1:8080");
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n");

    // Version 1: the client is the address it names, for the server and for `deny`.
    let v1 = b"PROXY TCP4 198.51.100.7 127.210.38.1 51234 8080\r\n";
    let answer = send_in_parts(lb, &[v1, request("/page").as_bytes()]);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("/page xff=198.51.100.7 "), "{answer}");
    let answer = send_in_parts(lb, &[&[v1.as_slice(), request("/private").as_bytes()].concat()]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    // Version 2 over IPv6, its header cut in two on the wire and followed by the request.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v2.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    let answer = send_in_parts(lb, &[&v2[..10], &[&v2[10..], request("/six").as_bytes()].concat()]);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("/six xff=2001:db8::7 "), "{answer}");

    // LOCAL (the balancer's own health check): the socket's peer stands.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let answer = send_in_parts(lb, &[&[local.as_slice(), request("/local").as_bytes()].concat()]);
    assert!(answer.contains("/local xff=127.0.0.1 "), "{answer}");

    // A client that speaks first, with no header or a broken one, is not served: it cannot
    // name itself.
    assert_eq!(send_in_parts(lb, &[request("/page").as_bytes()]), "");
    let broken = format!("PROXY TCP4 10.0.0.1\r\n{}", request("/page"));
    assert_eq!(send_in_parts(lb, &[broken.as_bytes()]), "");
}

#[test]
fn listener_counters_count_every_answer_and_outlive_a_reload() {
    let s1 = addr("127.210.39.11:9000");
    let _upstream = Upstream::start("s1", s1);
    let text = config(39, &[("s1", s1)], "").replace(
        "[[listeners.routes]]\nprefix = \"/\"",
        "[[listeners.routes]]\nprefix = \"/private\"\npool = \"web\"\ndeny = [\"127.0.0.0/8\"]\n\
         [[listeners.routes]]\nprefix = \"/\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, text).unwrap();
    let _proxy = Proxy::start_file(&path);
    let (lb, admin) = (addr("127.210.39.1:8080"), addr("127.210.39.1:8404"));

    for _ in 0..3 {
        assert_eq!(get(lb, "/page").status, 200);
    }
    // Refused by the proxy itself: no server counts these, the listener does.
    for _ in 0..2 {
        assert_eq!(get(lb, "/private").status, 403);
    }
    let expected = [
        "webstack_proxy_listener_requests_total{listener=\"www\"} 5\n",
        "webstack_proxy_listener_responses_total{listener=\"www\",class=\"2xx\"} 3\n",
        "webstack_proxy_listener_responses_total{listener=\"www\",class=\"4xx\"} 2\n",
        // The five, and the test's own connection that waited for the proxy to listen.
        "webstack_proxy_listener_connections_total{listener=\"www\"} 6\n",
        "webstack_proxy_listener_connections{listener=\"www\"} 0\n",
    ];
    for needle in expected {
        wait_for_metric(admin, needle);
    }
    let metrics = get(admin, "/metrics").body;
    assert!(metrics.contains("webstack_proxy_requests_total{pool=\"web\",server=\"s1\"} 3\n"), "{metrics}");
    assert!(!metrics.contains("tls_handshake_failures_total{listener=\"www\"}"), "a plain listener: {metrics}");
    let stats = get(admin, "/stats").body;
    let row = stats.lines().find(|l| l.starts_with("www ")).unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["www", "127.210.39.1:8080", "0", "6", "5", "3", "0", "2", "0"]
    );

    // A reload keeps the counters of a listener whose address stays.
    assert_eq!(post(admin, "/reload").status, 200);
    assert_eq!(get(lb, "/page").status, 200);
    wait_for_metric(admin, "webstack_proxy_listener_requests_total{listener=\"www\"} 6\n");
}

#[test]
fn a_tunnel_silent_both_ways_for_its_timeout_is_closed_and_a_busy_one_is_not() {
    let upstream = addr("127.210.40.11:9000");
    let server = echoing_upgrade_server(upstream);
    let _proxy = Proxy::start(&pool_config(40, "tunnel_timeout_ms = 400\n", &[("ws", upstream, "")]));
    let mut c = TcpStream::connect(addr("127.210.40.1:8080")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));

    // Busy for three times the timeout: a message every 100 ms keeps it open.
    let started = Instant::now();
    let mut last_echo = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        c.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping", "the tunnel closed while in use");
        last_echo = Instant::now();
    }
    // Then silent: closed 400 to 500 ms after the last byte, not at once and not never.
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "the silent tunnel stayed open");
    let silent = last_echo.elapsed();
    assert!(
        silent >= Duration::from_millis(380) && silent < Duration::from_secs(4),
        "closed after {silent:?} of silence"
    );
    server.join().unwrap();
}

/// An HTTP/1.1 request from `from` (a loopback address of the test's choosing) to `to`.
fn request_from(from: &str, to: SocketAddr, raw: &str) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let text = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = socket.connect(to).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

#[test]
fn the_admin_listener_takes_changes_only_from_change_from_and_readers_only_from_allow() {
    let s1 = addr("127.210.41.11:9000");
    let _upstream = Upstream::start("s1", s1);
    let text = config(41, &[("s1", s1)], "").replace(
        "[admin]\nbind = \"127.210.41.1:8404\"\n",
        "[admin]\nbind = \"127.210.41.1:8404\"\nallow = [\"127.210.41.0/24\", \"127.0.0.1\"]\nchange_from = [\"127.0.0.1\"]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, text).unwrap();
    let _proxy = Proxy::start_file(&path);
    let admin = addr("127.210.41.1:8404");
    let drain =
        "POST /api/servers/web/s1/state/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let metrics = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // A monitoring host in `allow` reads, but cannot drain a server nor reload.
    let scraper = "127.210.41.50";
    assert_eq!(request_from(scraper, admin, metrics).status, 200);
    let refused = request_from(scraper, admin, drain);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("change_from"), "{}", refused.body);
    let reload = "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(request_from(scraper, admin, reload).status, 403);
    assert!(get(admin, "/stats").body.contains("ready"), "the refused drain changed nothing");
    // Outside `allow`: nothing at all.
    assert_eq!(request_from("127.99.0.1", admin, metrics).status, 403);
    // From this host's 127.0.0.1, as listed: the change is made.
    assert_eq!(request_from("127.0.0.1", admin, drain).status, 200);
    assert!(get(admin, "/stats").body.contains("drain"));
}

#[test]
fn a_check_can_go_to_another_port_of_the_server() {
    let servers = [("s1", addr("127.210.43.11:9000"))];
    let traffic = Upstream::start("s1", servers[0].1);
    // The server's health endpoint on its own port (HAProxy's `check port`), as many
    // services expose it apart from traffic.
    let health_port = Upstream::start("s1-health", addr("127.210.43.11:9001"));
    let health = "[pools.web.health]\nport = 9001\ninterval_ms = 50\nrise = 1\nfall = 1\n";
    let _proxy = Proxy::start(&config(43, &servers, health));
    let (lb, admin) = (addr("127.210.43.1:8080"), addr("127.210.43.1:8404"));

    // What the traffic port's /healthz says does not count: it is not asked.
    traffic.health.store(503, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(lb, "/").status, 200, "checked on the other port");
    health_port.health.store(503, Ordering::SeqCst);
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 0");
    assert_eq!(get(lb, "/").status, 503);
}

#[test]
fn a_check_that_expects_text_fails_on_an_answer_without_it() {
    let servers = [("s1", addr("127.210.44.11:9000"))];
    let _up = Upstream::start("s1", servers[0].1);
    // The test server's /healthz says "health" with a 200.
    let health = "[pools.web.health]\nexpect_body = \"ready\"\ninterval_ms = 50\nrise = 1\nfall = 1\n";
    let _proxy = Proxy::start(&config(44, &servers, health));
    let admin = addr("127.210.44.1:8404");
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 0");
    let servers = get(admin, "/api/servers").body;
    assert!(servers.contains("status 200, but the body does not contain `ready`"), "the reason: {servers}");
    assert_eq!(get(addr("127.210.44.1:8080"), "/").status, 503);

    let text = config(45, &[("s1", addr("127.210.44.11:9000"))], &health.replace("ready", "heal"));
    let _passing = Proxy::start(&text);
    let admin = addr("127.210.45.1:8404");
    std::thread::sleep(Duration::from_millis(300));
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 1");
    assert_eq!(get(addr("127.210.45.1:8080"), "/").status, 200, "a body that holds the text passes");
}

/// The requests a proxy's listener `www` has answered, from its own /metrics.
fn requests_answered(admin: SocketAddr) -> u64 {
    let metrics = get(admin, "/metrics").body;
    metric_value(&metrics, "webstack_proxy_listener_requests_total{listener=\"www\"}")
}

/// The value of the series `name` (with its labels) in a `/metrics` text.
fn metric_value(metrics: &str, name: &str) -> u64 {
    let line = metrics.lines().find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[test]
fn a_pool_cache_serves_fresh_answers_without_asking_the_server_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.css"), "body { color: teal }\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    // The origin: a web server with files that say they keep for a minute.
    let origin_admin = addr("127.210.46.11:8404");
    let _origin = Proxy::start(&format!(
        "name = \"origin\"\n[admin]\nbind = \"{origin_admin}\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.46.11:9000\"\n\
         [[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\ncache_control = \"public, max-age=60\"\n",
        dir.path().display()
    ));
    let text = config(46, &[("origin", addr("127.210.46.11:9000"))], "[pools.web.cache]\nmax_object_bytes = 1048576\n");
    let _edge = Proxy::start(&text);
    let (lb, admin) = (addr("127.210.46.1:8080"), addr("127.210.46.1:8404"));
    let asked = || requests_answered(origin_admin);

    let (first, body) = raw_get(lb, "/site.css", "");
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert_eq!(asked(), 1);
    let (again, cached) = raw_get(lb, "/site.css", "");
    assert!(again.starts_with("http/1.1 200") && again.contains("\r\nage: "), "{again}");
    assert_eq!((cached, asked()), (body, 1), "the same answer, and the origin not asked again");

    // A body streamed through (larger than what comes with the head) is kept as it passes.
    let (_, streamed) = raw_get(lb, "/big.bin", "");
    let (head, from_cache) = raw_get(lb, "/big.bin", "");
    assert!(head.contains("\r\nage: "), "{head}");
    assert!(streamed == big && from_cache == big, "whole both times");
    assert_eq!(asked(), 2);

    // A validator the entry matches gets a 304 from the cache; HEAD gets the head.
    let etag = first.lines().find_map(|l| l.strip_prefix("etag: ")).expect("an ETag").to_string();
    let (not_modified, _) = raw_get(lb, "/site.css", &format!("If-None-Match: {etag}\r\n"));
    assert!(not_modified.starts_with("http/1.1 304"), "{not_modified}");
    let head = request(lb, "HEAD /site.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(asked(), 2);

    // A client that asks for a fresh answer gets one; a POST drops the entry.
    raw_get(lb, "/site.css", "Cache-Control: no-cache\r\n");
    assert_eq!(asked(), 3);
    request(lb, "POST /site.css HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(asked(), 4);
    raw_get(lb, "/site.css", "");
    assert_eq!(asked(), 5, "asked again after the POST");

    let metrics = get(admin, "/metrics").body;
    assert!(metrics.contains("webstack_proxy_cache_hits_total{pool=\"web\"} 4"), "{metrics}");
    assert!(metrics.contains("webstack_proxy_cache_entries{pool=\"web\"} 2"), "{metrics}");

    // After a deploy, the runtime API drops what changed: the origin is asked again.
    let purge = |target: &str| {
        request(admin, &format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    };
    let purged = purge("/api/cache/web/purge?prefix=%2Fsite");
    assert_eq!((purged.status, purged.body.as_str()), (200, "web: 1 cached answers dropped\n"));
    raw_get(lb, "/site.css", "");
    assert_eq!(asked(), 6);
    assert_eq!(purge("/api/cache/web/purge").body, "web: 2 cached answers dropped\n");
    assert_eq!(purge("/api/cache/nope/purge").status, 404);
}

#[test]
fn a_pool_cache_keeps_nothing_private_or_unmarked() {
    // The test server's answers say nothing about caching, as most dynamic pages.
    let servers = [("s1", addr("127.210.47.11:9000"))];
    let up = Upstream::start("s1", servers[0].1);
    let _edge = Proxy::start(&config(47, &servers, "[pools.web.cache]\n"));
    let lb = addr("127.210.47.1:8080");
    for _ in 0..3 {
        assert_eq!(get(lb, "/page").status, 200);
    }
    assert_eq!(up.seen.lock().unwrap().iter().filter(|s| s.starts_with("GET /page")).count(), 3, "never from cache");
}

#[test]
fn routes_can_also_require_a_path_ending_a_method_or_a_header() {
    let _proxy = Proxy::start(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.48.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"default\" }\n\
         [[listeners.routes]]\nprefix = \"/\"\nsuffix = [\".css\", \".js\"]\nrespond = { body = \"assets\" }\n\
         [[listeners.routes]]\nprefix = \"/\"\nheader = { name = \"X-Canary\", value = \"1\" }\nrespond = { body = \"canary\" }\n\
         [[listeners.routes]]\nprefix = \"/api/\"\nmethods = [\"POST\", \"PUT\"]\nrespond = { body = \"writes\" }\n\
         [[listeners.routes]]\nprefix = \"/api/\"\nrespond = { body = \"reads\" }\n",
    );
    let lb = addr("127.210.48.1:8080");
    let answer = |method: &str, path: &str, headers: &str| {
        request(
            lb,
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .body
    };
    assert_eq!(answer("GET", "/", ""), "default");
    assert_eq!(answer("GET", "/site/Main.CSS", ""), "assets", "nginx's location ~* \\.(css|js)$");
    assert_eq!(answer("GET", "/app.js?v=3", ""), "assets", "the query is no part of the path");
    assert_eq!(answer("GET", "/page", "X-Canary: 1\r\n"), "canary");
    assert_eq!(answer("GET", "/page", "X-Canary: 0\r\n"), "default", "another value");
    assert_eq!(answer("POST", "/api/orders", ""), "writes");
    assert_eq!(answer("GET", "/api/orders", ""), "reads", "the longer prefix, without its condition");
    assert_eq!(answer("GET", "/api/x.css", ""), "reads", "the longest prefix comes first, as it does in nginx with ^~");
}

#[test]
fn a_custom_access_log_line_is_written_as_the_operator_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s1 = addr("127.210.49.11:9000");
    let _u = Upstream::start("s1", s1);
    let access_log = format!(
        "[access_log]\npath = \"{}\"\nformat = \"custom\"\n\
         line = '$remote_addr \"$request\" $status rid=$request_id via $pool/$server ua=\"$http_user_agent\"'\n[admin]",
        log.display()
    );
    let text = pool_config(49, "", &[("s1", s1, "")]).replacen("[admin]", &access_log, 1);
    let proxy = Proxy::start(&text);
    let lb = addr("127.210.49.1:8080");
    request(
        lb,
        "GET /a?x=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-7\r\nUser-Agent: probe\r\nConnection: close\r\n\r\n",
    );
    drop(proxy); // flushes the log
    let written = std::fs::read_to_string(&log).unwrap();
    assert_eq!(written, "127.0.0.1 \"GET /a?x=1 HTTP/1.1\" 200 rid=trace-7 via web/s1 ua=\"probe\"\n");

    let bad = pool_config(49, "", &[("s1", s1, "")]).replacen(
        "[admin]",
        "[access_log]\npath = \"-\"\nformat = \"custom\"\nline = \"$remote_addr $bytes\"\n[admin]",
        1,
    );
    let e =
        proxy::ProxyConfig::from_source(&webstack_config::Source::from_text("p.toml", &bad)).unwrap_err().to_string();
    assert!(e.contains("access_log.line") && e.contains("unknown variable `$bytes`"), "{e}");
}

#[test]
fn a_redirect_can_carry_the_requests_path_host_and_scheme() {
    // The apex to www, keeping the path, as nginx's `return 301 https://www…$request_uri`.
    let _proxy = Proxy::start(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.50.1:8080\"\n\
         [[listeners.routes]]\nhost = \"foobar.com\"\nprefix = \"/\"\nredirect = { to = \"https://www.foobar.com$request_uri\" }\n\
         [[listeners.routes]]\nprefix = \"/docs\"\nredirect = { to = \"$scheme://$host/manual$uri?from=docs&$args\", status = 302 }\n\
         [[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"www\" }\n",
    );
    let lb = addr("127.210.50.1:8080");
    let go = |host: &str, path: &str| {
        request(lb, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
    };
    let apex = go("foobar.com:8080", "/shop/item?id=7");
    assert_eq!(apex.status, 301);
    assert_eq!(apex.header("location").as_deref(), Some("https://www.foobar.com/shop/item?id=7"));
    let docs = go("www.foobar.com:8080", "/docs/a?b=1");
    assert_eq!(docs.status, 302);
    assert_eq!(docs.header("location").as_deref(), Some("http://www.foobar.com/manual/docs/a?from=docs&b=1"));
    assert_eq!(go("www.foobar.com", "/").body, "www");
    assert_eq!(go("bad host", "/docs").status, 400, "a host that cannot go into a Location");
}

#[test]
fn the_runtime_api_moves_a_server_to_another_address() {
    let (old, new) = (addr("127.210.51.11:9000"), addr("127.210.51.12:9000"));
    let _old = Upstream::start("old-host", old);
    let _new = Upstream::start("new-host", new);
    let _proxy = Proxy::start(&config(51, &[("web", old)], ""));
    let (lb, admin) = (addr("127.210.51.1:8080"), addr("127.210.51.1:8404"));
    assert_eq!(get(lb, "/").header("x-upstream").as_deref(), Some("old-host"));

    let moved = post(admin, "/api/servers/web/web/address/127.210.51.12:9000");
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert!(moved.body.contains("was 127.210.51.11:9000"), "{}", moved.body);
    for _ in 0..4 {
        assert_eq!(
            get(lb, "/").header("x-upstream").as_deref(),
            Some("new-host"),
            "idle connections to the old one are gone"
        );
    }
    assert!(get(admin, "/api/servers").body.contains("\"127.210.51.12:9000\""));
    assert_eq!(post(admin, "/api/servers/web/web/address/nowhere").status, 400);
    assert_eq!(post(admin, "/api/servers/web/web/address/0.0.0.0:9000").status, 400);
}

/// A site on 127.210.`net`.1:8080 whose `/admin/` asks for the users of `users` (an
/// htpasswd, written beside the config) and whose other paths answer `public`; the config's
/// path.
fn staff_only_site(dir: &std::path::Path, net: u8, users: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("staff.htpasswd"), users).unwrap();
    let text = format!(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.{net}.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/admin/\"\nbasic_auth = {{ realm = \"Staff\", users_file = \"staff.htpasswd\" }}\n\
         respond = {{ body = \"secret\" }}\n[[listeners.routes]]\nprefix = \"/\"\nrespond = {{ body = \"public\" }}\n"
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_route_with_basic_auth_lets_in_only_the_users_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    // As `openssl passwd -6 -salt saltsalt 'open sesame'` and `openssl passwd -apr1` write them.
    let users =
        "ana:$6$saltsalt$e/5XKibXPLqVcfjpD.ouauaJrAOL5V0uo80Lt7n7EbRdRiCx3HbQ90yjOHr.G0T.mx79PEMRy8nmtr0qSYhQp1\n\
                 cy:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n";
    let path = staff_only_site(dir.path(), 52, users);
    let _proxy = Proxy::start_file(&path);
    let lb = addr("127.210.52.1:8080");
    let with = |authorization: &str| {
        let header =
            if authorization.is_empty() { String::new() } else { format!("Authorization: {authorization}\r\n") };
        request(lb, &format!("GET /admin/ HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"))
    };
    let refused = with("");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate").as_deref(), Some("Basic realm=\"Staff\", charset=\"UTF-8\""));
    assert_eq!(with("Basic YW5hOm9wZW4=").status, 401, "ana:open, the wrong password");
    let ana = with("Basic YW5hOm9wZW4gc2VzYW1l"); // ana:open sesame
    assert_eq!((ana.status, ana.body.as_str()), (200, "secret"));
    assert_eq!(with("Basic Y3k6cGFzc3dvcmQ=").body, "secret", "cy:password, an $apr1$ hash");
    assert_eq!(get(lb, "/").body, "public", "other routes ask nothing");

    std::fs::write(dir.path().join("staff.htpasswd"), "ana:{PLAIN}open sesame\n").unwrap();
    let e = proxy::ProxyConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("listeners[0].routes[0].basic_auth") && e.contains("line 1 (user `ana`)"), "{e}");
}

/// A keep-alive connection from a chosen source address.
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&addr(&format!("{source}:0")).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// One request on a kept-alive connection; the body of its answer (Content-Length framed).
fn ask_on(stream: &mut TcpStream, path: &str) -> String {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The servers behind an edge with send_proxy: a webstack web server on 127.210.`net`.11:9000
/// (admin on :8404) that takes the PROXY header (accept_proxy) and says in X-Forwarded-For
/// whom it names, in front of an echoing app on .21:9000.
fn proxy_protocol_web_server(net: u8) -> (Upstream, Proxy) {
    let echo = addr(&format!("127.210.{net}.21:9000"));
    let app = Upstream::start("app", echo);
    let web = Proxy::start(&format!(
        "name = \"web\"\n[admin]\nbind = \"127.210.{net}.11:8404\"\n[[listeners]]\nname = \"www\"\n\
         bind = \"127.210.{net}.11:9000\"\naccept_proxy = true\n[[listeners.routes]]\nprefix = \"/\"\npool = \"app\"\n\
         [pools.app]\n[[pools.app.servers]]\nname = \"app\"\naddress = \"{echo}\"\n"
    ));
    (app, web)
}

#[test]
fn send_proxy_names_each_client_to_the_servers_on_connections_of_its_own() {
    let (_app, _web) = proxy_protocol_web_server(53);
    // The edge, writing PROXY v2, its checks a LOCAL header (else the web server would drop them).
    let health = "send_proxy = \"v2\"\n[pools.web.health]\ninterval_ms = 50\nfall = 1\nrise = 1\n";
    let _edge = Proxy::start(&config(53, &[("web", addr("127.210.53.11:9000"))], health));
    let (lb, admin) = (addr("127.210.53.1:8080"), addr("127.210.53.1:8404"));
    std::thread::sleep(Duration::from_millis(300));
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"web\"} 1");

    // Two clients from two addresses, their requests interleaved on kept-alive connections:
    // each is named to the server as itself, never as the other.
    let mut a = connect_from("127.210.53.101", lb);
    let mut b = connect_from("127.210.53.102", lb);
    for _ in 0..3 {
        assert!(ask_on(&mut a, "/").contains("xff=127.210.53.101 "), "client a");
        assert!(ask_on(&mut b, "/").contains("xff=127.210.53.102 "), "client b");
    }
    let stats = get(admin, "/api/servers").body;
    assert!(stats.contains("passed in"), "checks pass through the LOCAL header: {stats}");
}

#[test]
fn one_client_address_gets_no_more_than_its_connections() {
    let _proxy = Proxy::start(
        "name = \"lb\"\n[admin]\nbind = \"127.210.54.1:8404\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.54.1:8080\"\n\
         max_connections_per_client = 2\n[[listeners.routes]]\nprefix = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    let (lb, admin) = (addr("127.210.54.1:8080"), addr("127.210.54.1:8404"));
    let mut first = connect_from("127.210.54.101", lb);
    let mut second = connect_from("127.210.54.101", lb);
    assert_eq!(ask_on(&mut first, "/"), "ok");
    assert_eq!(ask_on(&mut second, "/"), "ok");
    // A third from the same address is closed without an answer; another address is served.
    let mut third = connect_from("127.210.54.101", lb);
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(ask_on(&mut connect_from("127.210.54.102", lb), "/"), "ok");
    wait_for_metric(admin, "webstack_proxy_listener_connections_refused_total{listener=\"www\"} 1");

    // Once one of its connections closes, the address may open another.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from("127.210.54.101", lb);
        let _ = again.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let _ = again.read_to_end(&mut answer);
        if !answer.is_empty() {
            assert!(String::from_utf8_lossy(&answer).ends_with("ok"));
            break;
        }
        assert!(Instant::now() < deadline, "the slot of the closed connection never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn request_header_rules_may_carry_the_requests_host_port_and_client() {
    let origin = addr("127.210.55.11:9000");
    let heads = recording_origin(origin);
    let config = one_origin_site(
        "127.210.55.1:8080",
        "[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
         request_headers = { set = { \"X-Forwarded-Host\" = \"$host\", \"X-Forwarded-Port\" = \"$server_port\", \
         \"X-Client\" = \"$remote_addr:$remote_port\", \"X-Original-URI\" = \"$scheme://$host$request_uri\", \
         \"X-Price\" = \"$ 5\" } }\n",
        origin,
    );
    let _proxy = Proxy::start(&config);
    let mut client = connect_from("127.210.55.101", addr("127.210.55.1:8080"));
    let port = client.local_addr().unwrap().port();
    client.write_all(b"GET /shop?id=3 HTTP/1.1\r\nHost: www.foobar.com:8080\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let head = heads.lock().unwrap().last().cloned().unwrap_or_default();
    assert!(head.contains("\r\nx-forwarded-host: www.foobar.com\r\n"), "{head}");
    assert!(head.contains("\r\nx-forwarded-port: 8080\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nx-client: 127.210.55.101:{port}\r\n")), "{head}");
    assert!(head.contains("\r\nx-original-uri: http://www.foobar.com/shop?id=3\r\n"), "{head}");
    assert!(head.contains("\r\nx-price: $ 5\r\n"), "a $ that names nothing is text: {head}");

    let bad = one_origin_site(
        "127.210.55.1:8081",
        "[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\nrequest_headers = { set = { \"X-A\" = \"$hostname\" } }\n",
        origin,
    );
    let e =
        proxy::ProxyConfig::from_source(&webstack_config::Source::from_text("p.toml", &bad)).unwrap_err().to_string();
    assert!(e.contains("request_headers.set") && e.contains("unknown variable `$hostname`"), "{e}");
}

/// A body that sends one piece and then stalls for ever.
struct Stalled(bool);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"first piece")))))
    }
}

/// Binds `address` and, on a thread of its own, hands each connection to `serve` (as a task).
fn serve_connections<F, Fut>(address: SocketAddr, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind(address).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
    });
}

/// An HTTP/2-only server (h2c, prior knowledge), as a gRPC server is: answers with what it
/// saw and a `grpc-status` trailer; counts the connections it accepted.
fn h2c_server(address: SocketAddr) -> Arc<AtomicUsize> {
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    serve_connections(address, move |stream| {
        counted.fetch_add(1, Ordering::SeqCst);
        let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/stall" {
                // A first piece of the body, then nothing more, ever.
                return Ok(hyper::Response::new(http_body_util::Either::Right(Stalled(false))));
            }
            let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
            let body = format!(
                "{:?} {} authority={} te={te}",
                req.version(),
                req.uri().path(),
                req.uri().authority().map(|a| a.to_string()).unwrap_or_default()
            );
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
            let body = http_body_util::BodyExt::with_trailers(
                Full::new(Bytes::from(body)),
                std::future::ready(Some(Ok::<_, std::convert::Infallible>(trailers))),
            );
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Either::Left(body)))
        });
        async move {
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    connections
}

#[test]
fn an_h2c_pool_speaks_http2_to_its_servers_and_passes_trailers_on() {
    let server = addr("127.210.56.11:9000");
    let connections = h2c_server(server);
    // A second server that is down: requests that meet it go on to the first.
    let servers = [("grpc", server), ("down", addr("127.210.56.12:9000"))];
    let _proxy = Proxy::start(&config(56, &servers, "protocol = \"h2c\"\nidle_timeout_ms = 300\n"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers: Vec<(String, Option<String>)> = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect("127.210.56.1:8080").await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let req = hyper::Request::post(format!("http://api.foobar.com/pkg.Service/Call{i}"))
                    .header("content-type", "application/grpc")
                    .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                    .unwrap();
                sender.send_request(req)
            })
            .collect();
        let mut out = Vec::new();
        for call in calls {
            let response = call.await.unwrap();
            let collected = http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
            let trailer =
                collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_string());
            out.push((String::from_utf8_lossy(&collected.to_bytes()).into_owned(), trailer));
        }
        out
    });
    for (i, (body, trailer)) in answers.iter().enumerate() {
        assert_eq!(body, &format!("HTTP/2.0 /pkg.Service/Call{i} authority=api.foobar.com te=trailers"));
        assert_eq!(trailer.as_deref(), Some("0"), "the server's trailers reach the client");
    }
    // An HTTP/1.1 client is served too; every request shared one connection to the server.
    let answer = get(addr("127.210.56.1:8080"), "/plain");
    assert!(answer.body.starts_with("HTTP/2.0 /plain"), "{}", answer.body);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one multiplexed connection");
    let metrics = get(addr("127.210.56.1:8404"), "/metrics").body;
    assert!(
        metrics.contains("webstack_proxy_responses_total{pool=\"web\",server=\"grpc\",class=\"2xx\"} 5"),
        "{metrics}"
    );

    // A server gone silent mid-body: cut off after the pool's idle timeout, not held for ever.
    let started = Instant::now();
    let (head, body) = raw_get_unchecked(addr("127.210.56.1:8080"), "/stall");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("first piece") && !body.ends_with("0\r\n\r\n"), "an unfinished body: {body:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "ended after {:?}", started.elapsed());
}

/// A GET's head and raw body as far as the connection carried it (chunks not decoded).
fn raw_get_unchecked(address: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

#[test]
fn an_h2c_pools_http_checks_speak_http2() {
    let server = addr("127.210.57.11:9000");
    let _connections = h2c_server(server);
    let servers = [("grpc", server), ("down", addr("127.210.57.12:9000"))];
    let options = "protocol = \"h2c\"\n[pools.web.health]\npath = \"/healthz\"\n\
                   expect_body = \"HTTP/2.0 /healthz\"\ninterval_ms = 50\nfall = 1\n";
    let _proxy = Proxy::start(&config(57, &servers, options));
    let admin = addr("127.210.57.1:8404");
    // The live server passes, body and all, over HTTP/2; the other fails.
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"down\"} 0");
    std::thread::sleep(Duration::from_millis(200));
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"grpc\"} 1");
    let servers = get(admin, "/api/servers").body;
    assert!(servers.contains("passed in"), "{servers}");
}

#[test]
fn a_check_sends_the_headers_it_is_given() {
    let origin = addr("127.210.58.11:9000");
    let heads = recording_origin(origin);
    let config = one_origin_site("127.210.58.1:8080", "[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n", origin)
        .replace(
            "[pools.web]\n",
            "[pools.web]\n[pools.web.health]\npath = \"/status\"\ninterval_ms = 50\n\
             headers = { \"X-Health-Token\" = \"s3cr3t\", \"Accept\" = \"application/json\" }\n",
        );
    let _proxy = Proxy::start(&config);
    let deadline = Instant::now() + Duration::from_secs(5);
    let check = loop {
        if let Some(head) = heads.lock().unwrap().iter().find(|h| h.starts_with("get /status ")).cloned() {
            break head;
        }
        assert!(Instant::now() < deadline, "no check arrived");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        check.contains("\r\nx-health-token: s3cr3t\r\n") && check.contains("\r\naccept: application/json\r\n"),
        "{check}"
    );
}

#[test]
fn a_password_being_checked_holds_up_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    // A deliberately costly bcrypt hash: checking it takes long enough to see who waits.
    let slow = bcrypt::hash("open sesame", 12).unwrap();
    let path = staff_only_site(dir.path(), 59, &format!("ana:{slow}\n"));
    let _proxy = Proxy::start_file(&path);
    let lb = addr("127.210.59.1:8080");

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let login = std::thread::spawn(move || {
        let answer = request(
            lb,
            "GET /admin/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YW5hOm9wZW4gc2VzYW1l\r\nConnection: close\r\n\r\n",
        );
        let _ = done_tx.send(());
        answer
    });
    // Well into the check (it takes about half a second here), five other requests are
    // answered while the login still waits: the check is off the event loop. On it, the
    // first of them would wait for the check to end, and the login would be answered first.
    std::thread::sleep(Duration::from_millis(150));
    for _ in 0..5 {
        assert_eq!(get(lb, "/").body, "public");
    }
    assert!(done_rx.try_recv().is_err(), "the login was answered before five requests made after it");
    let login = login.join().unwrap();
    assert_eq!((login.status, login.body.as_str()), (200, "secret"));
}

/// A server's agent (HAProxy's agent-check): answers every connection with `reply`'s line.
fn agent(address: SocketAddr, reply: &str) -> Arc<std::sync::Mutex<String>> {
    let reply = Arc::new(std::sync::Mutex::new(reply.to_string()));
    let said = reply.clone();
    let listener = std::net::TcpListener::bind(address).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let line = format!("{}\n", said.lock().unwrap());
            let _ = s.write_all(line.as_bytes());
        }
    });
    reply
}

#[test]
fn an_agent_check_sets_weight_admin_state_and_state() {
    let (s1, s2) = (addr("127.210.60.11:9000"), addr("127.210.60.12:9000"));
    let (_u1, _u2) = (Upstream::start("s1", s1), Upstream::start("s2", s2));
    let says = agent(addr("127.210.60.11:9999"), "50%");
    // s2 has no agent: an agent that does not answer changes nothing.
    let options = "agent = { port = 9999, interval_ms = 50 }";
    let _proxy = Proxy::start(&pool_config(60, options, &[("s1", s1, "weight = 100"), ("s2", s2, "weight = 100")]));
    let (lb, admin) = (addr("127.210.60.1:8080"), addr("127.210.60.1:8404"));
    let server = |name: &str| -> serde_json::Value {
        let all: serde_json::Value = serde_json::from_str(&get(admin, "/api/servers").body).unwrap();
        all["pools"][0]["servers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
    };
    let wait_until = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until("s1 at half its weight", &|| server("s1")["weight"] == 50);
    assert_eq!(server("s2")["weight"], 100);

    *says.lock().unwrap() = "drain".into();
    wait_until("s1 drained", &|| server("s1")["admin"] == "drain");
    for _ in 0..4 {
        assert_eq!(served_by(lb, "/", ""), "s2", "a drained server takes no new requests");
    }
    *says.lock().unwrap() = "ready 100%".into();
    wait_until("s1 ready at full weight", &|| server("s1")["admin"] == "ready" && server("s1")["weight"] == 100);
    *says.lock().unwrap() = "down".into();
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 0");
    *says.lock().unwrap() = "up".into();
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"s1\"} 1");
}

#[test]
fn a_clients_own_server_connections_close_when_it_leaves() {
    // Its admin listener counts its open connections.
    let (_app, _web) = proxy_protocol_web_server(61);
    let web_admin = addr("127.210.61.11:8404");
    let _edge = Proxy::start(&config(61, &[("web", addr("127.210.61.11:9000"))], "send_proxy = \"v1\"\n"));
    let mut client = connect_from("127.210.61.101", addr("127.210.61.1:8080"));
    assert!(ask_on(&mut client, "/").contains("xff=127.210.61.101 "));
    wait_for_metric(web_admin, "webstack_proxy_listener_connections{listener=\"www\"} 1");
    // The client leaves: its connection to the server, which could serve no one else, goes
    // too (not at the server's idle timeout, 30 s here).
    drop(client);
    wait_for_metric(web_admin, "webstack_proxy_listener_connections{listener=\"www\"} 0");
}

/// nginx as an HTTP/2 server (h2c, prior knowledge) on `listen`, closing each connection
/// with a GOAWAY after `keepalive_requests` streams (nginx's default is 1000; gRPC servers
/// do the same with their max connection age). One process, stopped by PID when dropped.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start_h2c(listen: &[SocketAddr], keepalive_requests: u32) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let listens: String = listen.iter().map(|a| format!("listen {a} http2; ")).collect();
        let config = format!(
            "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ {listens}keepalive_requests {keepalive_requests};\n\
                 location / {{ return 200 \"nginx $request_method $request_uri\\n\"; }} }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        // Debian puts it in /usr/sbin, which a user's PATH may not hold (scripts/setup looks
        // there too).
        let binary =
            ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("nginx (scripts/setup installs it)");
        let nginx = Nginx { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        for address in listen {
            while TcpStream::connect(address).is_err() {
                assert!(Instant::now() < deadline, "nginx did not listen on {address}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn requests_an_http2_server_did_not_process_go_to_a_server_again() {
    // nginx sends GOAWAY every 3 streams: streams past its last one were never processed
    // (RFC 9113 §8.7), so any request, a POST too, may go again; none may fail for it.
    let servers = [("n1", addr("127.210.62.11:9000")), ("n2", addr("127.210.62.12:9000"))];
    let _nginx = Nginx::start_h2c(&[servers[0].1, servers[1].1], 3);
    let _proxy = Proxy::start(&config(62, &servers, "protocol = \"h2c\"\n"));
    let lb = addr("127.210.62.1:8080");
    let clients: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for i in 0..25 {
                    // GETs, and POSTs with a body whose length is not said (as a gRPC call's).
                    let method = if i % 2 == 0 { "GET" } else { "POST" };
                    let body = match method {
                        "POST" => "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                        _ => "Connection: close\r\n\r\n",
                    };
                    let raw = format!("{method} /c{c}/{i} HTTP/1.1\r\nHost: www.foobar.com\r\n{body}");
                    let answer = request(lb, &raw);
                    if answer.status != 200 || answer.body != format!("nginx {method} /c{c}/{i}\n") {
                        failed.push(format!("{method} /c{c}/{i}: {} {}", answer.status, answer.body));
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(failed.is_empty(), "{} of 200 failed, the first: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    // Not a failure of the server's: both still up. And there were streams to send again.
    let metrics = get(addr("127.210.62.1:8404"), "/metrics").body;
    let mut sent_again = 0;
    for server in ["n1", "n2"] {
        assert!(
            metrics.contains(&format!("webstack_proxy_server_up{{pool=\"web\",server=\"{server}\"}} 1")),
            "{metrics}"
        );
        sent_again +=
            metric_value(&metrics, &format!("webstack_proxy_retries_total{{pool=\"web\",server=\"{server}\"}}"));
    }
    assert!(sent_again > 0, "nginx's GOAWAYs refused no stream in flight: {metrics}");
}

/// An HTTP/2 server (h2c) that refuses every other stream with RST_STREAM REFUSED_STREAM,
/// as a server over its stream limit or shedding load does, and answers the others with
/// `METHOD PATH body-length`. Counts the streams it refused.
fn refusing_h2c_server(address: SocketAddr) -> Arc<AtomicUsize> {
    let refused = Arc::new(AtomicUsize::new(0));
    let (counted, streams) = (refused.clone(), Arc::new(AtomicUsize::new(0)));
    serve_connections(address, move |stream| {
        let (streams, refused) = (streams.clone(), counted.clone());
        async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else { return };
            while let Some(Ok((req, mut respond))) = connection.accept().await {
                if streams.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                    refused.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                tokio::spawn(async move {
                    let (head, mut body) = req.into_parts();
                    let mut length = 0;
                    while let Some(Ok(data)) = body.data().await {
                        length += data.len();
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                    let answer = format!("{} {} {length}", head.method, head.uri.path());
                    let head = hyper::Response::builder().header("content-length", answer.len()).body(()).unwrap();
                    let Ok(mut send) = respond.send_response(head, false) else { return };
                    let _ = send.send_data(Bytes::from(answer), true);
                });
            }
        }
    });
    refused
}

#[test]
fn a_refused_http2_stream_goes_again_with_its_body_when_the_whole_of_it_was_kept() {
    let server = addr("127.210.63.11:9000");
    let refused = refusing_h2c_server(server);
    // One server: the request goes to it again, as a refused stream does not count against it.
    let _proxy = Proxy::start(&config(63, &[("grpc", server)], "protocol = \"h2c\"\n"));
    let lb = addr("127.210.63.1:8080");
    for i in 0..6 {
        for method in ["GET", "DELETE", "POST"] {
            let answer = request(
                lb,
                &format!("{method} /r{i} HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            );
            assert_eq!((answer.status, answer.body.as_str()), (200, format!("{method} /r{i} 0").as_str()));
        }
    }
    assert_eq!(refused.load(Ordering::SeqCst), 18, "every request refused once, then answered");
    let metrics = get(addr("127.210.63.1:8404"), "/metrics").body;
    assert_eq!(metric_value(&metrics, "webstack_proxy_retries_total{pool=\"web\",server=\"grpc\"}"), 18);
    assert!(metrics.contains("webstack_proxy_server_up{pool=\"web\",server=\"grpc\"} 1"), "{metrics}");

    // A body that went out with the refused stream goes again from the copy kept of it
    // (a unary gRPC call, a form): the server gets it whole, once.
    let upload = |body: &str| {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        request(lb, &(head + body))
    };
    let answer = upload("hello");
    assert_eq!((answer.status, answer.body.as_str()), (200, "POST /upload 5"));
    assert_eq!(refused.load(Ordering::SeqCst), 19, "refused once, then answered");
    // Past the size kept (64 KiB), a refused body cannot go again: the client is told.
    let answer = upload(&"x".repeat(100_000));
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(refused.load(Ordering::SeqCst), 20);
}

/// A server that accepts every connection and never answers, holding them for 5 s.
fn silent_server(address: SocketAddr) {
    let listener = std::net::TcpListener::bind(address).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        listener.set_nonblocking(true).unwrap();
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

#[test]
fn retry_on_sends_a_get_to_another_server_after_a_named_status_but_never_a_post() {
    let (busy, good) = (addr("127.210.64.11:9000"), addr("127.210.64.12:9000"));
    let busy_server = Upstream::start("busy", busy);
    busy_server.status.store(503, Ordering::SeqCst);
    let good_server = Upstream::start("good", good);
    let _proxy = Proxy::start(&pool_config(64, "retry_on = [\"503\"]", &[("busy", busy, ""), ("good", good, "")]));
    let lb = addr("127.210.64.1:8080");
    // HAProxy's retry-on 503: every GET is answered by the good server, half of them after
    // the busy one's 503.
    for i in 0..6 {
        let answer = get(lb, &format!("/page{i}"));
        assert_eq!((answer.status, answer.header("x-served-by").as_deref()), (200, Some("good")), "{}", answer.body);
    }
    let met_busy = busy_server.seen.lock().unwrap().len();
    assert!(met_busy >= 3, "round robin sends GETs to the busy server first: {met_busy}");
    // A POST may have done its work before the 503: it is never sent twice.
    let statuses: Vec<u16> = (0..2).map(|i| post(lb, &format!("/form{i}")).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1, "{statuses:?}");
    let posts = |server: &Upstream| server.seen.lock().unwrap().iter().filter(|r| r.starts_with("POST")).count();
    assert_eq!((posts(&busy_server), posts(&good_server)), (1, 1));
    // When no server does better, the last answer is the client's: the server's own 503.
    good_server.status.store(503, Ordering::SeqCst);
    let answer = get(lb, "/last");
    assert_eq!(answer.status, 503);
    assert!(answer.body.starts_with("busy /last") || answer.body.starts_with("good /last"), "{}", answer.body);
    let metrics = get(addr("127.210.64.1:8404"), "/metrics").body;
    let retried =
        |s: &str| metric_value(&metrics, &format!("webstack_proxy_retries_total{{pool=\"web\",server=\"{s}\"}}"));
    assert_eq!(retried("busy") + retried("good"), met_busy as u64 + 1, "{metrics}");
    // Each 503 is counted as the server's answer, the ones sent again too.
    let fives = |s: &str| {
        metric_value(&metrics, &format!("webstack_proxy_responses_total{{pool=\"web\",server=\"{s}\",class=\"5xx\"}}"))
    };
    assert_eq!(fives("busy") + fives("good"), met_busy as u64 + 1 + 2, "{metrics}");
}

#[test]
fn retry_on_response_timeout_sends_a_get_on_after_the_first_byte_timeout() {
    let (silent, good) = (addr("127.210.65.11:9000"), addr("127.210.65.12:9000"));
    silent_server(silent);
    let _good = Upstream::start("good", good);
    let options = "first_byte_timeout_ms = 300\nretry_on = [\"response-timeout\"]";
    let _proxy = Proxy::start(&pool_config(65, options, &[("silent", silent, ""), ("good", good, "")]));
    let lb = addr("127.210.65.1:8080");
    for i in 0..2 {
        let started = Instant::now();
        let answer = get(lb, &format!("/page{i}"));
        assert_eq!((answer.status, answer.header("x-served-by").as_deref()), (200, Some("good")), "{}", answer.body);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    // A POST that met the silent server is a 504, not sent again.
    let statuses: Vec<u16> = (0..2).map(|i| post(lb, &format!("/form{i}")).status).collect();
    assert!(statuses.contains(&504) && statuses.contains(&200), "{statuses:?}");
}

#[test]
fn access_log_lines_go_to_a_syslog_daemon_over_udp_or_a_unix_socket() {
    let s1 = addr("127.210.66.11:9000");
    let _u = Upstream::start("s1", s1);
    let daemon = std::net::UdpSocket::bind("127.210.66.2:5514").unwrap();
    daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let access_log = "[access_log]\nsyslog = \"127.210.66.2:5514\"\nfacility = \"local3\"\ntag = \"lb-01\"\n[admin]";
    let proxy = Proxy::start(&pool_config(66, "", &[("s1", s1, "")]).replacen("[admin]", access_log, 1));
    for path in ["/first", "/second"] {
        assert_eq!(get(addr("127.210.66.1:8080"), path).status, 200);
    }
    drop(proxy); // flushes the log
    let mut datagrams = Vec::new();
    let mut buf = [0u8; 2048];
    while datagrams.len() < 2 {
        let n = daemon.recv(&mut buf).expect("a syslog datagram");
        datagrams.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // RFC 3164: <local3.info = 19*8+6>, a timestamp, the program and its PID, then the line.
    for (datagram, path) in datagrams.iter().zip(["/first", "/second"]) {
        let (header, line) = datagram.split_once(": ").unwrap();
        assert!(
            header.starts_with("<158>") && header.ends_with(&format!(" lb-01[{}]", std::process::id())),
            "{datagram}"
        );
        assert!(
            line.starts_with("127.0.0.1 - - [") && line.contains(&format!("\"GET {path} HTTP/1.1\" 200")),
            "{datagram}"
        );
        assert!(!line.contains('\n'), "one line per datagram: {datagram:?}");
    }

    // A Unix datagram socket, as /dev/log.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("log");
    let daemon = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let access_log = format!("[access_log]\nsyslog = \"{}\"\nformat = \"json\"\n[admin]", socket.display());
    let proxy = Proxy::start(&pool_config(66, "", &[("s1", s1, "")]).replacen("[admin]", &access_log, 1));
    assert_eq!(get(addr("127.210.66.1:8080"), "/third").status, 200);
    // The daemon restarts (a new socket at the same path) before the line goes out: the
    // proxy finds it again.
    drop(daemon);
    std::fs::remove_file(&socket).unwrap();
    let daemon = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    drop(proxy);
    let n = daemon.recv(&mut buf).expect("a syslog datagram");
    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (header, line) = datagram.split_once(": ").unwrap();
    assert!(header.starts_with("<134>") && header.contains(" webstack["), "local0.info by default: {datagram}");
    let json: serde_json::Value = serde_json::from_str(line).expect("the JSON line");
    assert_eq!(json["uri"], "/third");
}

/// An HTTP/1.1 server on a Unix socket, as an application server (gunicorn, php-fpm's
/// HTTP front) often listens: answers `unix PATH` and `/healthz` with 200.
fn unix_socket_server(path: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!("unix {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    });
}

#[test]
fn a_server_on_a_unix_socket_takes_requests_and_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    unix_socket_server(&socket);
    let tcp = addr("127.210.67.11:9000");
    let _tcp_server = Upstream::start("tcp", tcp);
    let options = "[pools.web.health]\npath = \"/healthz\"\ninterval_ms = 50\n";
    let servers = [("app", &format!("unix:{}", socket.display()) as &str), ("tcp", &tcp.to_string())];
    let mut text = pool_config(67, options, &[]);
    for (name, address) in servers {
        text.push_str(&format!("[[pools.web.servers]]\nname = \"{name}\"\naddress = \"{address}\"\n"));
    }
    let _proxy = Proxy::start(&text);
    let (lb, admin) = (addr("127.210.67.1:8080"), addr("127.210.67.1:8404"));
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"app\"} 1");
    let answers: Vec<String> = (0..4).map(|i| get(lb, &format!("/p{i}")).body).collect();
    assert_eq!(answers.iter().filter(|a| a.starts_with("unix /p")).count(), 2, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| a.starts_with("tcp /p")).count(), 2, "{answers:?}");
    let servers = get(admin, "/api/servers").body;
    assert!(servers.contains(&format!("unix:{}", socket.display())), "{servers}");
    let moved = request(
        admin,
        "POST /api/servers/web/app/address/127.0.0.1:9 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(moved.status, 409, "{}", moved.body);
    // The socket gone: the check takes the server out, and the TCP server answers all.
    std::fs::remove_file(&socket).unwrap();
    wait_for_metric(admin, "webstack_proxy_server_up{pool=\"web\",server=\"app\"} 0");
    for i in 0..4 {
        assert!(get(lb, &format!("/q{i}")).body.starts_with("tcp /q"));
    }
}

#[test]
fn a_stale_cached_answer_stands_in_for_servers_that_fail() {
    let server = addr("127.210.68.11:9000");
    let mut upstream = Upstream::start("s1", server);
    let cache = "[pools.web.cache]\nstale_if_error_ms = 30000\n";
    let _edge = Proxy::start(&config(68, &[("s1", server)], cache));
    let (lb, admin) = (addr("127.210.68.1:8080"), addr("127.210.68.1:8404"));
    for path in ["/fresh-for-a-second/page", "/fresh-for-a-second/strict"] {
        assert_eq!(get(lb, path).status, 200);
    }
    std::thread::sleep(Duration::from_millis(1100));
    // The server now fails with 503: the page past its freshness answers instead, with its
    // age; the one its server said must be revalidated does not.
    upstream.status.store(503, Ordering::SeqCst);
    let stale = get(lb, "/fresh-for-a-second/page");
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert!(stale.body.starts_with("s1 /fresh-for-a-second/page"), "{}", stale.body);
    assert!(stale.header("age").is_some_and(|a| a.parse::<u64>().unwrap() >= 1), "{}", stale.head);
    assert_eq!(get(lb, "/fresh-for-a-second/strict").status, 503, "must-revalidate: never stale");
    // No server at all: the same.
    upstream.stop();
    assert_eq!(get(lb, "/fresh-for-a-second/page").status, 200);
    assert_eq!(get(lb, "/fresh-for-a-second/strict").status, 502);
    // Nothing cached for a page: the failure as it is.
    assert_eq!(get(lb, "/other").status, 502);
    let metrics = get(admin, "/metrics").body;
    assert!(metrics.contains("webstack_proxy_cache_stale_total{pool=\"web\"} 2"), "{metrics}");
}

#[test]
fn a_rate_limit_may_count_per_api_key_instead_of_per_address() {
    let config = "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.210.69.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/api/\"\nrespond = { body = \"api\" }\n\
         rate_limit = { requests_per_second = 0.1, burst = 1, key = \"header:X-Api-Key\" }\n";
    let _proxy = Proxy::start(config);
    let lb = addr("127.210.69.1:8080");
    let with_key = |key: &str| {
        let header = if key.is_empty() { String::new() } else { format!("X-Api-Key: {key}\r\n") };
        request(lb, &format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n")).status
    };
    // Every client comes from one address (a NAT, a partner's gateway): each key has its
    // own allowance (a burst of 1 and the first request), not the address.
    assert_eq!([with_key("alice"), with_key("alice"), with_key("alice")], [200, 200, 429]);
    assert_eq!([with_key("bob"), with_key("bob"), with_key("bob")], [200, 200, 429]);
    // Without a key, the address is counted.
    assert_eq!([with_key(""), with_key(""), with_key("")], [200, 200, 429]);
}

#[test]
fn with_the_cache_lock_a_crowd_missing_one_page_sends_the_server_one_request() {
    let server = addr("127.210.71.11:9000");
    let upstream = Upstream::start("s1", server);
    // The page takes the server 600 ms: every client arrives while it is being fetched.
    let cache = "[pools.web.cache]\nlock_timeout_ms = 5000\n";
    let _edge = Proxy::start(&config(71, &[("s1", server)], cache));
    let lb = addr("127.210.71.1:8080");
    let crowd: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(lb, "/fresh-for-a-second/slow"))).collect();
    let answers: Vec<Answer> = crowd.into_iter().map(|c| c.join().unwrap()).collect();
    for answer in &answers {
        assert_eq!(
            (answer.status, answer.body.starts_with("s1 /fresh-for-a-second/slow")),
            (200, true),
            "{}",
            answer.body
        );
    }
    let fetched = upstream.seen.lock().unwrap().iter().filter(|r| r.ends_with("/slow")).count();
    assert_eq!(fetched, 1, "one request for the crowd");
    assert!(answers.iter().filter(|a| a.header("age").is_some()).count() >= 7, "the rest from the cache");
}
