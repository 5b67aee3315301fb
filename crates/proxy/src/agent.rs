//! Agent checks (HAProxy's `agent-check`): a small agent on each server, on a TCP port of its
//! own, says in one line how the server is doing, and the proxy follows: a percentage scales
//! the server's weight from its configured one (a loaded server takes less), `drain`,
//! `maint` and `ready` set its admin state, `down` (`fail`, `stopped`) takes it out and `up`
//! brings it back. Words may be combined (`75% drain`), separated by spaces or commas, as
//! HAProxy reads them; anything else is ignored. An agent that does not answer changes
//! nothing: it is advice, the health checks are the judge.
//!
//! [`parse`] is a pure function over the agent's reply (the fuzz target `agent_reply`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::upstream::{AdminState, PoolState, ServerState};

/// The longest reply read; HAProxy takes a line of its buffer.
const MAX_REPLY: usize = 1024;

/// What an agent's reply says; each part `None` when it says nothing of it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// Percent of the configured weight, 0 to 100 (more is taken as 100, HAProxy's cap for
    /// weights past the configured one aside).
    pub weight_percent: Option<u32>,
    pub admin: Option<AdminState>,
    pub up: Option<bool>,
}

/// Reads a reply's first line.
pub fn parse(reply: &[u8]) -> Advice {
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut advice = Advice::default();
    for word in line.split([' ', ',', '\t', '\r']).filter(|w| !w.is_empty()) {
        let word = word.to_ascii_lowercase();
        if let Some(number) = word.strip_suffix('%') {
            if let Ok(percent) = number.parse::<u32>() {
                advice.weight_percent = Some(percent.min(100));
            }
            continue;
        }
        match word.as_str() {
            "ready" => advice.admin = Some(AdminState::Ready),
            "drain" => advice.admin = Some(AdminState::Drain),
            "maint" => advice.admin = Some(AdminState::Maint),
            "up" => advice.up = Some(true),
            "down" | "fail" | "failed" | "stopped" => advice.up = Some(false),
            _ => {}
        }
    }
    advice
}

/// A pool's `[pools.P.agent]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Asks `server`'s agent every interval, for as long as the task lives (restarted with the
/// checks at each reload).
pub async fn watch(pool: Arc<PoolState>, server: Arc<ServerState>, agent: AgentConfig) {
    let mut ticker = tokio::time::interval(agent.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Advice> = None;
    loop {
        ticker.tick().await;
        let Ok(reply) = ask(&server, &agent).await else { continue };
        let advice = parse(&reply);
        follow(&pool, &server, advice, last != Some(advice));
        last = Some(advice);
    }
}

async fn ask(server: &ServerState, agent: &AgentConfig) -> std::io::Result<Vec<u8>> {
    let address = std::net::SocketAddr::new(server.address().ip(), agent.port);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let mut reply = Vec::with_capacity(64);
        // The agent speaks first and closes, or at least ends its line.
        while reply.len() < MAX_REPLY && !reply.contains(&b'\n') {
            let n = (&mut stream).take((MAX_REPLY - reply.len()) as u64).read_buf(&mut reply).await?;
            if n == 0 {
                break;
            }
        }
        Ok(reply)
    };
    tokio::time::timeout(agent.timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "agent did not answer")))
}

/// Applies what the agent said; logs it when it changed.
fn follow(pool: &PoolState, server: &ServerState, advice: Advice, changed: bool) {
    let name = &server.config.name;
    if let Some(percent) = advice.weight_percent {
        let weight = server.config.weight * percent / 100;
        if server.weight() != weight {
            server.set_weight(weight);
            pool.rebalance();
        }
    }
    if let Some(admin) = advice.admin {
        server.set_admin(admin);
    }
    match advice.up {
        Some(false) if server.is_up() => {
            server.set_up(false);
            server.record_check("agent: down".into());
        }
        Some(true) if !server.is_up() && server.is_resolved() => {
            server.set_up(true);
            server.record_check("agent: up".into());
        }
        _ => {}
    }
    if changed {
        tracing::info!(pool = pool.config.name, server = name, ?advice, "agent check");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_haproxy_reads_them() {
        assert_eq!(parse(b"75%\n"), Advice { weight_percent: Some(75), ..Advice::default() });
        assert_eq!(
            parse(b"50%, DRAIN up\r\nignored: second line 10%"),
            Advice { weight_percent: Some(50), admin: Some(AdminState::Drain), up: Some(true) }
        );
        assert_eq!(parse(b"stopped"), Advice { up: Some(false), ..Advice::default() });
        assert_eq!(parse(b"maint"), Advice { admin: Some(AdminState::Maint), ..Advice::default() });
        assert_eq!(parse(b"250%").weight_percent, Some(100), "capped");
        assert_eq!(parse(b"-5% banana \xff"), Advice::default(), "nothing it knows");
        assert_eq!(parse(b""), Advice::default());
    }
}
