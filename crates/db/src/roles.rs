//! Changing a node's role: demote a primary (read-only, writes stop), promote a replica once it
//! has applied a given GTID position, and point a node at a new primary (a demoted primary
//! included: its replication position starts from its own binlog). A planned switchover is
//! these three in order (`webstack db switchover`); the failover manager will use the same.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use crate::config::{DbConfig, Role, REPL_USER};

/// How long a promotion waits for the replica to apply what it was sent.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the node read-only and returns its binlog position: every transaction a client saw
/// committed here is in it. `read_only` waits for commits in progress.
pub async fn demote(config: &DbConfig, conn: &mut MySqlConnection) -> Result<String, String> {
    run(conn, "SET GLOBAL read_only = ON").await?;
    remember_role(config, Role::Replica)?;
    let pos: String =
        sqlx::query_scalar("SELECT @@global.gtid_binlog_pos").fetch_one(&mut *conn).await.map_err(|e| e.to_string())?;
    Ok(pos)
}

/// Waits until the node has applied `after` (the old primary's last position, when given),
/// stops replicating and becomes writable.
pub async fn promote(config: &DbConfig, conn: &mut MySqlConnection, after: Option<&str>) -> Result<(), String> {
    if let Some(gtid) = after.filter(|g| !g.is_empty()) {
        if !well_formed_gtids(gtid) {
            return Err(format!("`{gtid}` is not a GTID position"));
        }
        let waited: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
            .bind(gtid)
            .bind(APPLY_TIMEOUT.as_secs_f64())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if waited != Some(0) {
            return Err(format!("did not apply {gtid} within {} s; not promoted", APPLY_TIMEOUT.as_secs()));
        }
    }
    run(conn, "STOP SLAVE").await?;
    run(conn, "RESET SLAVE ALL").await?;
    remember_role(config, Role::Primary)?;
    run(conn, "SET GLOBAL read_only = OFF").await
}

/// Points the node at `primary` and starts replicating. A node that was itself a primary
/// first takes its own binlog position as where its replication stands.
pub async fn replicate_from(config: &DbConfig, conn: &mut MySqlConnection, primary: SocketAddr) -> Result<(), String> {
    run(conn, "SET GLOBAL read_only = ON").await?;
    remember_role(config, Role::Replica)?;
    let replicating = sqlx::query("SHOW SLAVE STATUS").fetch_optional(&mut *conn).await.map_err(|e| e.to_string())?;
    run(conn, "STOP SLAVE").await?;
    if replicating.is_none() {
        run(conn, "SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos").await?;
    }
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, MASTER_USER = '{REPL_USER}', \
         MASTER_PASSWORD = '{}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
        primary.ip(),
        primary.port(),
        config.accounts.repl_password
    );
    run(conn, &change).await?;
    run(conn, "START SLAVE").await
}

/// The role the node last had: the one a switchover or promotion gave it, else its config's.
pub fn last_role(config: &DbConfig) -> Role {
    match std::fs::read_to_string(role_file(config)).as_deref().map(str::trim) {
        Ok("primary") => Role::Primary,
        Ok("replica") => Role::Replica,
        _ => config.role,
    }
}

/// Records the node's role for its next start.
pub fn remember_role(config: &DbConfig, role: Role) -> Result<(), String> {
    let text = match role {
        Role::Primary => "primary\n",
        Role::Replica => "replica\n",
    };
    std::fs::write(role_file(config), text).map_err(|e| format!("recording the role: {e}"))
}

fn role_file(config: &DbConfig) -> std::path::PathBuf {
    config.datadir.join("role")
}

/// Whether another node than this one answers as writable: a node that restarts must not
/// become a second primary.
pub async fn writable_peer(config: &DbConfig, peers: &[SocketAddr]) -> Option<SocketAddr> {
    for peer in peers.iter().filter(|p| **p != config.listen) {
        let Ok(mut conn) = crate::sql::connect_tcp(config, *peer).await else { continue };
        let read_only = sqlx::query("SELECT @@global.read_only AS ro").fetch_one(&mut conn).await;
        if let Ok(row) = read_only {
            if row.try_get_unchecked::<i64, _>("ro").is_ok_and(|ro| ro == 0) {
                return Some(*peer);
            }
        }
    }
    None
}

async fn run(conn: &mut MySqlConnection, statement: &str) -> Result<(), String> {
    sqlx::query(statement).execute(&mut *conn).await.map(|_| ()).map_err(|e| format!("{statement}: {e}"))
}

/// `0-1-42` or a comma-separated list of such: what a GTID position looks like.
pub fn well_formed_gtids(text: &str) -> bool {
    text.split(',').all(|g| {
        let parts: Vec<&str> = g.trim().split('-').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_positions_are_checked_before_they_reach_sql() {
        assert!(well_formed_gtids("0-1-42"));
        assert!(well_formed_gtids("0-1-42,1-2-7"));
        for bad in ["", "0-1", "0-1-x", "0-1-1'; DROP TABLE x; --", "0--1"] {
            assert!(!well_formed_gtids(bad), "{bad}");
        }
    }
}
