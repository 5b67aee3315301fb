//! Active health checks, as HAProxy's `check inter rise fall` with `option httpchk`: every
//! interval, `GET path` on a new connection, with the configured Host; 2xx and 3xx pass, or
//! the statuses of `expect_status` (HAProxy's `http-check expect status`); with
//! `kind = "tcp"`, a connect passes. A pool with `tls` is checked over TLS, its certificate
//! verified (HAProxy's `check-ssl`, implied by `ssl` on its servers). A server that is up goes down
//! after `fall` failures in a row, and a server that is down comes back after `rise` passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::connect;
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
        let mut stream = connect(address, server.config.host.as_deref(), health.timeout, health.tls.as_ref())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if health.kind == HealthKind::Tcp {
            return Ok(());
        }
        let request = match (&health.host, &server.config.host) {
            (Some(host), _) => check_request(&health.path, host),
            (None, Some(name)) => check_request(&health.path, &format_args!("{name}:{}", address.port())),
            (None, None) => check_request(&health.path, &address),
        };
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut head[len..]).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            len += n;
        }
        match parse_status(&head[..len]) {
            Some(status) if passes(status, health.expect_status.as_deref()) => Ok(()),
            Some(status) => Err(format!("status {status}")),
            None => Err("not an HTTP response".to_string()),
        }
    };
    tokio::time::timeout(health.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", health.timeout.as_millis())))
}

fn check_request(path: &str, host: &dyn std::fmt::Display) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: webstack-health-check\r\nConnection: close\r\n\r\n")
}

/// Whether a check's answer passes: one of `expected`, or any 2xx or 3xx without a list.
pub fn passes(status: u16, expected: Option<&[u16]>) -> bool {
    match expected {
        Some(list) => list.contains(&status),
        None => (200..400).contains(&status),
    }
}

/// The status code of an HTTP/1.x status line at the start of `head`.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
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
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
    }
}
