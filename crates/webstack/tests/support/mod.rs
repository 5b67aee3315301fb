//! What the end-to-end tests share: running the real `webstack` binary on a stack of its own
//! (own loopback range, own state dir), a minimal HTTP client, and a guard that brings the
//! stack down — also when a test fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub fn webstack_bin() -> &'static str {
    env!("CARGO_BIN_EXE_webstack")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// A stack under test; `Drop` runs `webstack down` and kills anything left by pid.
pub struct Stack {
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub fn new() -> Stack {
        Stack { dir: tempfile::Builder::new().prefix("ws-").tempdir_in("/tmp").expect("temp dir") }
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `webstack ARGS --state-dir DIR` from the repo root.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(webstack_bin())
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .current_dir(repo_root())
            .output()
            .expect("run webstack")
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "webstack {args:?} failed:\n{text}\n{}", self.logs());
        text
    }

    pub fn logs(&self) -> String {
        let out = Command::new(webstack_bin()).args(["logs", "-n", "15", "--state-dir"]).arg(self.state_dir()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        let text = self.run_ok(&["status", "--json"]);
        serde_json::from_str(&text).expect("status --json is JSON")
    }

    /// Every pid `webstack status` reports.
    pub fn pids(&self) -> Vec<u32> {
        let status = self.status();
        let mut pids: Vec<u32> = status["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|h| h["components"].as_array().into_iter().flatten())
            .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
            .collect();
        if let Some(p) = status["supervisor_pid"].as_u64() {
            pids.push(p as u32);
        }
        pids
    }

    /// Processes whose command line names this stack's state dir (components and mariadbd).
    pub fn processes_left(&self) -> Vec<u32> {
        let needle = self.state_dir().to_string_lossy().into_owned();
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z');
            if !zombie && String::from_utf8_lossy(&cmdline).contains(&needle) {
                left.push(pid);
            }
        }
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new(webstack_bin()).arg("down").arg("--state-dir").arg(self.state_dir()).output();
        for pid in self.processes_left() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A process a test started, killed and reaped when the test lets go of it.
pub struct Stop(pub std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new connection; `Err` when no answer came.
pub fn http(
    method: &str,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(address: SocketAddr, path: &str) -> Result<HttpResponse, String> {
    http("GET", address, path, &[], "")
}

/// The cookies of the shop's admin signed in through `site`: the account the stack made
/// (`admin@foobar.com`, its password in the state dir's secrets). The apps make the account
/// once their migrations have run, so this waits for it (bounded).
pub fn admin_session(stack: &Stack, site: SocketAddr) -> String {
    let secrets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stack.state_dir().join("secrets.json")).expect("secrets.json"))
            .expect("secrets are JSON");
    let password = secrets["shop_admin_password"].as_str().expect("an admin password");
    let body = serde_json::json!({ "email": "admin@foobar.com", "password": password }).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http("POST", site, "/api/v1/session", &[("Content-Type", "application/json")], &body);
        if let Some(r) = r.as_ref().ok().filter(|r| r.status == 200) {
            let cookies: Vec<String> = r
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .filter_map(|(_, v)| v.split(';').next().map(str::to_string))
                .collect();
            return cookies.join("; ");
        }
        assert!(std::time::Instant::now() < deadline, "the admin never could log in: {:?}", r.map(|r| r.body));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs SQL on the database node at `address` (`IP:PORT`) as the stack's admin account, with
/// Debian's `mariadb` client; its output (tab-separated, no column names).
pub fn mariadb(stack: &Stack, address: &str, statements: &str) -> String {
    let secrets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stack.state_dir().join("secrets.json")).expect("secrets.json"))
            .expect("secrets are JSON");
    let (host, port) = address.split_once(':').expect("IP:PORT");
    let out = Command::new("mariadb")
        .args(["-h", host, "-P", port, "-u", "webstack_admin", "-N", "-B", "-e", statements])
        .env("MYSQL_PWD", secrets["db_admin_password"].as_str().unwrap_or(""))
        .output()
        .expect("the mariadb client (mariadb-server brings it)");
    assert!(out.status.success(), "{statements}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many of the products `ids` the node at `address` holds.
pub fn products_present(stack: &Stack, address: &str, ids: &[i64]) -> usize {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let query = format!("SELECT COUNT(*) FROM foobar.products WHERE id IN ({})", list.join(","));
    mariadb(stack, address, &query).trim().parse().unwrap_or(0)
}

/// The integers of the first row `sql` returns from the SQLite file at `file`.
pub fn sqlite(file: &Path, sql: &str) -> Vec<i64> {
    use sqlx::{ConnectOptions, Connection, Row};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(file).connect().await.expect("open");
        let row = sqlx::query(sql).fetch_one(&mut conn).await.expect(sql);
        let values = (0..row.len()).map(|i| row.try_get::<i64, _>(i).expect("an integer")).collect();
        let _ = conn.close().await;
        values
    })
}

/// The body of `GET path` when answered 200 within a short while; `None` when refused, slow
/// or another status: for drills that keep asking while things fail.
pub fn body_if_ok(address: &str, path: &str) -> Option<String> {
    let address: SocketAddr = address.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The `state` (MASTER, BACKUP, FAULT) in a load balancer's `/ha` answer; empty without one.
pub fn ha_state_in(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Asks `check` every 10 ms until it holds; the test fails after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Clients requesting one path until [`Load::finish`] (a minute at most): some open a new
/// connection per request, some keep theirs as browsers do.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    pub fn start(site: SocketAddr, path: &'static str, fresh: usize, kept: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..fresh + kept)
            .map(|n| {
                let stop = stop.clone();
                std::thread::spawn(move || match n < fresh {
                    true => fresh_connection_client(site, path, &stop),
                    false => keep_alive_client(site, path, &stop),
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients: the requests answered 200, and the failures a user would see.
    pub fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (mut answered, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (ok, errors) = client.join().expect("load client thread");
            answered += ok;
            failed.extend(errors);
        }
        (answered, failed)
    }
}

const LOAD_AT_MOST: Duration = Duration::from_secs(60);

fn fresh_connection_client(site: SocketAddr, path: &str, stop: &std::sync::atomic::AtomicBool) -> (u32, Vec<String>) {
    let (mut answered, mut failed) = (0, Vec::new());
    let started = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed() < LOAD_AT_MOST {
        match get(site, path) {
            Ok(r) if r.status == 200 => answered += 1,
            Ok(r) => failed.push(format!("status {}: {}", r.status, r.body)),
            Err(e) => failed.push(e),
        }
    }
    (answered, failed)
}

/// A client as a browser keeps one: requests on a kept-alive connection, a new connection
/// after `Connection: close`, and a GET sent again on a new connection when a reused one
/// closes before any byte of the answer (RFC 9112 §9.3.1), which is no failure to its user.
fn keep_alive_client(site: SocketAddr, path: &str, stop: &std::sync::atomic::AtomicBool) -> (u32, Vec<String>) {
    let (mut answered, mut failed) = (0, Vec::new());
    let mut connection: Option<Connection> = None;
    let started = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed() < LOAD_AT_MOST {
        let reused = connection.is_some();
        let reader = match connection.take() {
            Some(reader) => reader,
            None => match TcpStream::connect(site) {
                Ok(stream) => std::io::BufReader::new(stream),
                Err(e) => {
                    failed.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        match exchange(reader, path) {
            Ok((200, kept)) => {
                answered += 1;
                connection = kept;
            }
            Ok((status, _)) => failed.push(format!("status {status} on a kept-alive connection")),
            Err((0, _)) if reused => {}
            Err((read, e)) => failed.push(format!("{e} after {read} bytes of the answer")),
        }
    }
    (answered, failed)
}

type Connection = std::io::BufReader<TcpStream>;

/// One GET on `reader`'s connection: the status, and the connection if it may be used again;
/// on failure, how many bytes of the answer had come.
fn exchange(mut reader: Connection, path: &str) -> Result<(u16, Option<Connection>), (usize, String)> {
    use std::io::BufRead;
    let request = format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n");
    reader.get_mut().set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| (0, e.to_string()))?;
    reader.get_mut().write_all(request.as_bytes()).map_err(|e| (0, e.to_string()))?;
    let (mut read, mut status, mut length, mut close, mut chunked) = (0, 0u16, 0usize, false, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err((read, "connection closed".into())),
            Ok(n) => read += n,
            Err(e) => return Err((read, e.to_string())),
        }
        let lower = line.to_ascii_lowercase();
        if status == 0 {
            status = lower.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        } else if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        } else if line == "\r\n" {
            break;
        }
    }
    if chunked {
        read_chunks(&mut reader).map_err(|e| (read, e.to_string()))?;
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|e| (read, e.to_string()))?;
    }
    Ok((status, (!close).then_some(reader)))
}

fn read_chunks(reader: &mut Connection) -> std::io::Result<()> {
    use std::io::BufRead;
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(());
        }
    }
}
