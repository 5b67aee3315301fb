//! The failover manager beside each database node. Every 200 ms it looks for the writable
//! node among all of them. When none answers, it counts; after [`FAIL_AFTER`] misses in a
//! row it asks the other managers what they see, and only when a majority of all managers
//! (itself included) sees no writable node is the primary declared dead: a manager cut off
//! alone never starts a failover. Then the node that has *received* the most (its GTID IO
//! position) is promoted by its own manager, after applying its relay log; every manager whose
//! node replicates from elsewhere points it at the new primary; an old primary coming back does
//! the same at start ([`crate::instance`]). Anti-flap: no second automatic failover within
//! [`FAILOVER_WINDOW`]. A cluster coming up for the first time (no writer seen yet, no data on
//! any node) is not failed over: the configured primary becomes writable by itself.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use crate::config::DbConfig;
use crate::{roles, sql};

const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Checks in a row without a writable node before this manager votes the primary dead.
pub const FAIL_AFTER: u32 = 3;
/// No second automatic failover within this long of the last one.
pub const FAILOVER_WINDOW: Duration = Duration::from_secs(30);
const PEER_TIMEOUT: Duration = Duration::from_millis(300);

/// What a manager sees, served at `/manager` for the other managers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct View {
    pub node: String,
    /// The writable node's SQL address, if one answered at the last check.
    pub writer: Option<SocketAddr>,
    /// Checks in a row that found no writable node.
    pub misses: u32,
    /// The last failover this manager carried out or saw, as `node at unix-seconds`.
    #[serde(default)]
    pub last_failover: Option<String>,
}

/// The manager's state, shared with the admin listener.
#[derive(Debug, Default)]
pub struct Manager {
    view: Mutex<View>,
}

impl Manager {
    pub fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, view: View) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }
}

/// One node as the manager found it.
#[derive(Debug, Clone)]
struct Seen {
    address: SocketAddr,
    writable: bool,
    /// How far it has got: received (a replica's IO position) or written (anyone else's).
    progress: u64,
    /// Where it replicates from, if it does.
    source: Option<SocketAddr>,
    io_position: String,
}

/// Runs the manager for as long as the node runs. `admins` are every manager's admin
/// listeners, in the same order as `config.peers`.
pub async fn run(config: &DbConfig, admins: &[SocketAddr], manager: &Manager) {
    let mut misses = 0u32;
    let mut links: Vec<Option<MySqlConnection>> = config.peers.iter().map(|_| None).collect();
    // A cluster still coming up has no writer yet: that is no primary's loss. Its absence
    // counts once a writer was seen, or once any node holds data (a cluster that ran before).
    let mut ever_saw_writer = false;
    let mut last_failover: Option<Instant> = None;
    let mut last_failover_text = None;
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let seen = look(config, &mut links).await;
        let writers: Vec<SocketAddr> = seen.iter().filter(|s| s.writable).map(|s| s.address).collect();
        if writers.len() > 1 {
            // Never follow either of two writable nodes: the apps refuse writes meanwhile, and
            // an operator decides (`webstack db status`, then switchover or rejoin).
            tracing::error!(node = config.name, ?writers, "MORE THAN ONE WRITABLE DATABASE NODE: not following either");
            continue;
        }
        let writer = writers.first().copied();
        misses = if writer.is_some() { 0 } else { misses.saturating_add(1) };
        manager.set(View { node: config.name.clone(), writer, misses, last_failover: last_failover_text.clone() });
        if let Some(writer) = writer {
            ever_saw_writer = true;
            follow(config, &seen, writer).await;
            continue;
        }
        let cluster_ran = ever_saw_writer || seen.iter().any(|s| s.progress > 0);
        if misses < FAIL_AFTER || !cluster_ran {
            continue;
        }
        if last_failover.is_some_and(|t| t.elapsed() < FAILOVER_WINDOW) {
            if misses == FAIL_AFTER {
                tracing::error!(
                    node = config.name,
                    "no writable database node, and the last failover was under {} s ago: not failing over again \
                     (anti-flap); use `webstack db switchover` once a node is sound",
                    FAILOVER_WINDOW.as_secs()
                );
            }
            continue;
        }
        let votes = votes_for_failover(config, admins).await;
        let majority = config.peers.len() / 2 + 1;
        if votes < majority {
            if misses == FAIL_AFTER {
                tracing::warn!(
                    node = config.name,
                    votes,
                    majority,
                    "this node sees no writable database node, but no majority of managers agrees: no failover"
                );
            }
            continue;
        }
        let Some(candidate) = best_candidate(&seen) else { continue };
        if candidate.address != config.listen {
            // The candidate's own manager promotes it; this one follows once it is writable.
            continue;
        }
        tracing::error!(
            node = config.name,
            votes,
            received = candidate.io_position,
            "PRIMARY LOST ({votes} of {} managers see no writable node): promoting this node, which has received the most",
            config.peers.len()
        );
        let started = Instant::now();
        match promote_self(config, &candidate).await {
            Ok(()) => {
                tracing::error!(
                    node = config.name,
                    ms = started.elapsed().as_millis() as u64,
                    "promoted: this node is the primary"
                );
                last_failover = Some(Instant::now());
                last_failover_text = Some(format!("{} at {}", config.name, unix_seconds()));
                misses = 0;
            }
            Err(e) => tracing::error!(node = config.name, error = %e, "promotion failed"),
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Every node that answers, with what the manager needs to know of it. The connections stay
/// open between checks (one per peer in `links`): a check is then a query, not a new login; a
/// connection that fails or times out is dropped and made again at the next check.
async fn look(config: &DbConfig, links: &mut [Option<MySqlConnection>]) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (address, link) in config.peers.iter().zip(links.iter_mut()) {
        if link.is_none() {
            *link =
                tokio::time::timeout(PEER_TIMEOUT, sql::connect_tcp(config, *address)).await.ok().and_then(Result::ok);
        }
        let Some(conn) = link.as_mut() else { continue };
        match tokio::time::timeout(PEER_TIMEOUT, describe(conn, *address)).await {
            Ok(Ok(node)) => seen.push(node),
            _ => *link = None,
        }
    }
    seen
}

async fn describe(conn: &mut MySqlConnection, address: SocketAddr) -> Result<Seen, sqlx::Error> {
    let row =
        sqlx::query("SELECT @@global.read_only AS ro, @@global.gtid_current_pos AS pos").fetch_one(&mut *conn).await?;
    let read_only: i64 = row.try_get_unchecked("ro")?;
    let current: String = row.try_get_unchecked("pos")?;
    let replica = sqlx::query("SHOW SLAVE STATUS").fetch_optional(&mut *conn).await?;
    let (source, io_position) = match &replica {
        Some(r) => {
            let host: String = r.try_get_unchecked("Master_Host").unwrap_or_default();
            let port: u32 = r.try_get_unchecked("Master_Port").unwrap_or(0);
            let io: String = r.try_get_unchecked("Gtid_IO_Pos").unwrap_or_default();
            (format!("{host}:{port}").parse().ok(), io)
        }
        None => (None, current.clone()),
    };
    let progress = sequence(&io_position).max(sequence(&current));
    Ok(Seen { address, writable: read_only == 0, progress, source, io_position })
}

/// The highest sequence number in a GTID position (domain 0 is the only one written here).
pub fn sequence(position: &str) -> u64 {
    position.split(',').filter_map(|g| g.trim().rsplit('-').next()?.parse().ok()).max().unwrap_or(0)
}

/// The node to promote: the most received; on a tie, the lowest address (all managers agree).
fn best_candidate(seen: &[Seen]) -> Option<Seen> {
    seen.iter().max_by(|a, b| a.progress.cmp(&b.progress).then(b.address.cmp(&a.address))).cloned()
}

/// How many managers, this one included, see no writable node now.
async fn votes_for_failover(config: &DbConfig, admins: &[SocketAddr]) -> usize {
    let mut votes = 1;
    for admin in admins.iter().filter(|a| **a != config.admin_listen) {
        let view = supervisor_free_get(*admin).await;
        if view.is_some_and(|v| v.writer.is_none() && v.misses > 0) {
            votes += 1;
        }
    }
    votes
}

/// A peer manager's view (plain HTTP/1.1 on its admin listener), or `None` if it does not
/// answer in time.
async fn supervisor_free_get(admin: SocketAddr) -> Option<View> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let request = format!("GET /manager HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(PEER_TIMEOUT, exchange).await.ok().flatten()
}

async fn promote_self(config: &DbConfig, me: &Seen) -> Result<(), String> {
    let mut conn = sql::admin(config).await.map_err(|e| e.to_string())?;
    // What it received must be applied first: waiting on the IO position does that.
    let after = (!me.io_position.is_empty()).then_some(me.io_position.as_str());
    roles::promote(config, &mut conn, after).await
}

/// A writable node exists: this node, if it replicates from somewhere else (or from nowhere
/// while not the writer), is pointed at it.
async fn follow(config: &DbConfig, seen: &[Seen], writer: SocketAddr) {
    if writer == config.listen {
        return;
    }
    let Some(me) = seen.iter().find(|s| s.address == config.listen) else { return };
    if me.source == Some(writer) {
        return;
    }
    let Ok(mut conn) = sql::admin(config).await else { return };
    match roles::replicate_from(config, &mut conn, writer).await {
        Ok(()) => tracing::warn!(node = config.name, %writer, "now replicating from the primary at {writer}"),
        Err(e) => tracing::error!(node = config.name, %writer, error = %e, "could not replicate from the new primary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(address: &str, progress: u64) -> Seen {
        Seen { address: address.parse().unwrap(), writable: false, progress, source: None, io_position: String::new() }
    }

    #[test]
    fn the_candidate_is_the_one_that_received_most_and_ties_go_to_the_lowest_address() {
        let seen = [node("127.0.2.2:3306", 40), node("127.0.2.3:3306", 42)];
        assert_eq!(best_candidate(&seen).unwrap().address, "127.0.2.3:3306".parse().unwrap());
        let tie = [node("127.0.2.3:3306", 42), node("127.0.2.2:3306", 42)];
        assert_eq!(best_candidate(&tie).unwrap().address, "127.0.2.2:3306".parse().unwrap());
        assert!(best_candidate(&[]).is_none());
    }

    #[test]
    fn sequences_come_from_gtid_positions() {
        assert_eq!(sequence("0-1-42"), 42);
        assert_eq!(sequence("0-1-42,0-2-57"), 57);
        assert_eq!(sequence(""), 0);
    }
}
