//! Active health checks, as HAProxy's `check inter rise fall` with `option httpchk`: every
//! interval, `GET path` (or `method`) on a new connection, with the configured Host, to the
//! server's address or another of its ports (`port`, HAProxy's `check port`); 2xx and 3xx
//! pass, or the statuses of `expect_status` (HAProxy's `http-check expect status`), and with
//! `expect_body` only an answer whose body holds that text (`http-check expect string`);
//! with `kind = "tcp"`, a connect passes. A pool with `tls` is checked over TLS, its
//! certificate verified (HAProxy's `check-ssl`, implied by `ssl` on its servers). A server
//! that is up goes down after `fall` failures in a row, and a server that is down comes back
//! after `rise` passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{connect, Endpoint};
use crate::config::{Health, HealthKind};
use crate::upstream::ServerState;

/// Where a server stands between checks: consecutive passes or failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    pub up: bool,
    streak: u32,
}

impl Verdicts {
    /// A server starts up, and needs `fall` failures to be taken out (HAProxy's default).
    pub fn new() -> Self {
        Verdicts { up: true, streak: 0 }
    }

    /// Follows a change made elsewhere (passive health took the server out): the checks then
    /// need `rise` passes to bring it back.
    pub fn follow(&mut self, up: bool) {
        if self.up != up {
            self.up = up;
            self.streak = 0;
        }
    }

    /// Records one check; returns `Some(new_state)` when the server changes state.
    pub fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak >= needed {
            self.up = passed;
            self.streak = 0;
            return Some(passed);
        }
        None
    }
}

impl Default for Verdicts {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks `server` forever, flipping its state on `rise`/`fall`.
pub async fn watch(pool: String, server: Arc<ServerState>, health: Health) {
    let mut verdicts = Verdicts::new();
    let mut ticker = tokio::time::interval(health.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !server.is_resolved() {
            // Nothing to check until DNS gives the name an address again.
            continue;
        }
        verdicts.follow(server.is_up());
        let started = std::time::Instant::now();
        let result = check(&server, &health).await;
        let took = started.elapsed().as_millis();
        server.record_check(match &result {
            Ok(()) => format!("passed in {took} ms"),
            Err(reason) => format!("failed in {took} ms: {reason}"),
        });
        let passed = result.is_ok();
        if let Some(up) = verdicts.record(passed, health.rise, health.fall) {
            server.set_up(up);
            let name = &server.config.name;
            match (up, result) {
                (true, _) => {
                    tracing::warn!(pool, server = name, "server is UP ({} health checks passed in a row)", health.rise)
                }
                (false, Err(reason)) => {
                    tracing::warn!(
                        pool,
                        server = name,
                        reason,
                        "server is DOWN ({} health checks failed in a row)",
                        health.fall
                    )
                }
                (false, Ok(())) => {}
            }
        }
    }
}

/// One check: `Err` says why it failed, as HAProxy's logs do.
pub async fn check(server: &ServerState, health: &Health) -> Result<(), String> {
    let attempt = async {
        let address = server.address();
        // HAProxy's `check port`: the check may go to another port of the same address (the
        // config refuses one for a Unix socket server).
        let target = match (health.port, server.endpoint()) {
            (Some(port), Endpoint::Tcp(address)) => Endpoint::Tcp(SocketAddr::new(address.ip(), port)),
            (_, endpoint) => endpoint,
        };
        let local = health.send_proxy.map(|version| crate::proxy_protocol::encode(version, None));
        let mut stream =
            connect(target, server.config.host.as_deref(), health.timeout, health.tls.as_ref(), local.as_deref())
                .await
                .map_err(|e| format!("connect: {e}"))?;
        if health.kind == HealthKind::Tcp {
            return Ok(());
        }
        let host = match (&health.host, &server.config.host) {
            (Some(host), _) => host.clone(),
            (None, Some(name)) => format!("{name}:{}", address.port()),
            (None, None) if server.config.unix.is_some() => "localhost".to_string(),
            (None, None) => address.to_string(),
        };
        let (status, body) = if health.http2 {
            ask_over_http2(stream, health, &host).await?
        } else {
            let request = check_request(health, &host);
            stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            receive_answer(&mut stream, health).await?
        };
        if !passes(status, health.expect_status.as_deref()) {
            return Err(format!("status {status}"));
        }
        match &health.expect_body {
            Some(wanted) if !contains(&body, wanted.as_bytes()) => {
                Err(format!("status {status}, but the body does not contain `{wanted}`"))
            }
            _ => Ok(()),
        }
    };
    tokio::time::timeout(health.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", health.timeout.as_millis())))
}

/// The check on an HTTP/2 server (an h2c pool): the same request on a connection of its own,
/// the body read as far as `expect_body` needs.
async fn ask_over_http2(
    stream: crate::client::UpstreamStream,
    health: &Health,
    host: &str,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt;
    let handshake = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream));
    let (mut sender, connection) = handshake.await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    // Ends with the check: the connection is dropped with `sender`.
    let driver = tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(health.method.as_str())
        .uri(format!("{}://{host}{}", if health.tls.is_some() { "https" } else { "http" }, health.path))
        .header(http::header::USER_AGENT, "webstack-health-check")
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    for (name, value) in &health.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let answered = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP/2: {e}"))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        if health.expect_body.is_some() {
            let mut incoming = response.into_body();
            while body.len() < CHECK_BODY_LIMIT {
                match incoming.frame().await {
                    Some(Ok(frame)) => body.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    None => break,
                }
            }
            body.truncate(CHECK_BODY_LIMIT);
        }
        Ok((status, body))
    };
    let result = answered.await;
    driver.abort();
    result
}

/// Reads until [`read_check_answer`] has what the check needs.
async fn receive_answer(stream: &mut crate::client::UpstreamStream, health: &Health) -> Result<(u16, Vec<u8>), String> {
    let (head_request, want_body) = (health.method == "HEAD", health.expect_body.is_some());
    let mut received = Vec::with_capacity(1024);
    loop {
        let n = stream.read_buf(&mut received).await.map_err(|e| format!("read: {e}"))?;
        match read_check_answer(&received, head_request, want_body, n == 0)? {
            CheckAnswer::Complete { status, body } => return Ok((status, body)),
            CheckAnswer::Partial if n == 0 => return Err("connection closed before a complete answer".into()),
            CheckAnswer::Partial if received.len() >= MAX_CHECK_ANSWER => return Err("answer too large".into()),
            CheckAnswer::Partial => {}
        }
    }
}

/// The body bytes a check looks through for `expect_body` (HAProxy looks within its buffer,
/// 16 KiB by default): a health page says what it has to say early.
pub const CHECK_BODY_LIMIT: usize = 16 * 1024;
/// Past this, an answer that still does not give the check what it needs is a failure.
const MAX_CHECK_ANSWER: usize = crate::client::MAX_HEAD_BYTES + 2 * CHECK_BODY_LIMIT;

/// What a check has of an answer so far.
#[derive(Debug, PartialEq, Eq)]
pub enum CheckAnswer {
    /// More bytes are needed.
    Partial,
    /// The status, and the body's first bytes (none unless asked for), de-chunked.
    Complete { status: u16, body: Vec<u8> },
}

/// Reads a check's answer from the bytes received so far (`closed`: the server has closed
/// the connection since). Pure, for the fuzz target `health_answer`.
pub fn read_check_answer(
    received: &[u8],
    head_request: bool,
    want_body: bool,
    closed: bool,
) -> Result<CheckAnswer, String> {
    use crate::client::{parse_response_head, Framing};
    let mut buf = bytes::BytesMut::from(received);
    let head = match parse_response_head(&mut buf, head_request) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(CheckAnswer::Partial),
        Err(e) => return Err(e.to_string()),
    };
    let status = head.status.as_u16();
    if !want_body {
        return Ok(CheckAnswer::Complete { status, body: Vec::new() });
    }
    let (body, complete) = match head.framing {
        Framing::Empty => (Vec::new(), true),
        Framing::Length(length) => {
            let whole = usize::try_from(length).unwrap_or(usize::MAX);
            (buf[..buf.len().min(whole)].to_vec(), buf.len() >= whole)
        }
        Framing::UntilClose => (buf.to_vec(), closed),
        Framing::Chunked(mut chunked) => {
            let mut body = Vec::new();
            while let Some(piece) = chunked.decode(&mut buf).map_err(|e| e.to_string())? {
                body.extend_from_slice(&piece);
            }
            (body, chunked.is_done())
        }
    };
    if complete || body.len() >= CHECK_BODY_LIMIT {
        let mut body = body;
        body.truncate(CHECK_BODY_LIMIT);
        return Ok(CheckAnswer::Complete { status, body });
    }
    Ok(CheckAnswer::Partial)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_request(health: &Health, host: &str) -> String {
    let (method, path) = (&health.method, &health.path);
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: webstack-health-check\r\n");
    for (name, value) in &health.headers {
        // Validated at load: visible ASCII, so as text it is the same bytes.
        request.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())));
    }
    request.push_str("Connection: close\r\n\r\n");
    request
}

/// Whether a check's answer passes: one of `expected`, or any 2xx or 3xx without a list.
pub fn passes(status: u16, expected: Option<&[u16]>) -> bool {
    match expected {
        Some(list) => list.contains(&status),
        None => (200..400).contains(&status),
    }
}

/// Time to wait before the first check of each server, so checks of a pool spread out.
pub fn stagger(index: usize, count: usize, interval: Duration) -> Duration {
    interval.mul_f64(index as f64 / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_passes() {
        let mut v = Verdicts::new();
        assert_eq!(v.record(false, 2, 3), None);
        assert_eq!(v.record(false, 2, 3), None);
        assert_eq!(v.record(true, 2, 3), None, "a pass resets the failure streak");
        assert_eq!(v.record(false, 2, 3), None);
        assert_eq!(v.record(false, 2, 3), None);
        assert_eq!(v.record(false, 2, 3), Some(false));
        assert_eq!(v.record(true, 2, 3), None);
        assert_eq!(v.record(true, 2, 3), Some(true));
        assert!(v.up);
    }

    #[test]
    fn a_list_of_statuses_replaces_the_2xx_3xx_default() {
        assert!(passes(204, None) && passes(302, None) && !passes(404, None) && !passes(500, None));
        assert!(passes(200, Some(&[200])) && !passes(204, Some(&[200])) && passes(404, Some(&[200, 404])));
    }

    #[test]
    fn reads_a_checks_answer_as_far_as_the_check_needs() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: good";
        let complete = |status, body: &[u8]| Ok(CheckAnswer::Complete { status, body: body.to_vec() });
        assert_eq!(read_check_answer(&ok[..20], false, false, false), Ok(CheckAnswer::Partial));
        assert_eq!(read_check_answer(&ok[..ok.len() - 3], false, false, false), complete(200, b""), "status only");
        assert_eq!(read_check_answer(&ok[..ok.len() - 3], false, true, false), Ok(CheckAnswer::Partial));
        assert_eq!(read_check_answer(ok, false, true, false), complete(200, b"status: good"));
        let chunked =
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nstat\r\n4\r\nus: \r\n4\r\ndown\r\n0\r\n\r\n";
        assert_eq!(read_check_answer(chunked, false, true, false), complete(503, b"status: down"), "de-chunked");
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nup";
        assert_eq!(read_check_answer(until_close, false, true, false), Ok(CheckAnswer::Partial));
        assert_eq!(read_check_answer(until_close, false, true, true), complete(200, b"up"));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        assert_eq!(read_check_answer(head, true, true, false), complete(200, b""), "HEAD: no body follows");
        assert!(read_check_answer(b"SSH-2.0-OpenSSH\r\n\r\n", false, false, false).is_err());
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n{}", "a".repeat(CHECK_BODY_LIMIT + 5));
        match read_check_answer(big.as_bytes(), false, true, false) {
            Ok(CheckAnswer::Complete { body, .. }) => assert_eq!(body.len(), CHECK_BODY_LIMIT),
            other => panic!("{other:?}"),
        }
    }
}
