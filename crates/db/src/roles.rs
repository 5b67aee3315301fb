//! Changing a node's role: demote a primary (read-only, writes stop), promote a replica once it
//! has applied a given GTID position, and point a node at a new primary (a demoted primary
//! included: its replication position starts from its own binlog). A planned switchover is
//! these three in order (`webstack db switchover`); the failover manager will use the same.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use crate::config::{DbConfig, Role};

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
    point_at(config, conn, primary).await?;
    run(conn, "START SLAVE").await
}

/// `CHANGE MASTER TO` the primary, on a node whose replication was just stopped. The node's
/// failover manager and a switchover may repoint it at the same moment (each from its own
/// process): when the other's `START SLAVE` lands between this one's `STOP SLAVE` and
/// `CHANGE MASTER`, MariaDB refuses with 1198 — stopped again, it is tried again.
async fn point_at(config: &DbConfig, conn: &mut MySqlConnection, primary: SocketAddr) -> Result<(), String> {
    let statement = crate::sql::change_master(config, primary);
    for _ in 0..3 {
        match sqlx::query(&statement).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()) == Some(1198) =>
            {
                run(conn, "STOP SLAVE").await?;
            }
            Err(e) => return Err(format!("{statement}: {e}")),
        }
    }
    run(conn, &statement).await
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

/// Rebuilds the node from `primary`: for a node holding transactions the cluster never
/// received (replication stops with error 1236), which cannot simply replicate again. Its
/// binlog and the app's database are replaced by a consistent dump of the primary's
/// (`mariadb-dump --single-transaction --gtid`), and it replicates from the dump's position.
/// What it alone held is gone; the caller asked for that with `--force`.
pub async fn rebuild_from(
    config: &DbConfig,
    conn: &mut MySqlConnection,
    primary: SocketAddr,
) -> Result<String, String> {
    let dump_bin = crate::locate::find(&["mariadb-dump", "mysqldump"]).map_err(|e| e.to_string())?;
    let client_bin = crate::locate::find(&["mariadb", "mysql"]).map_err(|e| e.to_string())?;
    let database = &config.accounts.app_database;
    let dump = tokio::process::Command::new(&dump_bin)
        .args(["-h", &primary.ip().to_string(), "-P", &primary.port().to_string(), "-u", crate::config::ADMIN_USER])
        .args(["--single-transaction", "--gtid", "--master-data=2", "--databases", database])
        .env("MYSQL_PWD", &config.accounts.admin_password)
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", dump_bin.display()))?;
    if !dump.status.success() {
        return Err(format!("the dump of the primary failed: {}", String::from_utf8_lossy(&dump.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&dump.stdout);
    let position = text
        .lines()
        .find_map(|l| l.split("gtid_slave_pos='").nth(1)?.split('\'').next().map(str::to_string))
        .filter(|p| well_formed_gtids(p))
        .ok_or("the dump carries no GTID position")?;
    run(conn, "STOP SLAVE").await?;
    run(conn, "SET GLOBAL read_only = ON").await?;
    remember_role(config, Role::Replica)?;
    // Forget what only this node held: its binlog and GTID state, and the app's data.
    run(conn, "RESET MASTER").await?;
    run(conn, "SET SESSION sql_log_bin = 0").await?;
    run(conn, &format!("DROP DATABASE IF EXISTS `{database}`")).await?;
    let mut load = tokio::process::Command::new(&client_bin)
        .arg(format!("--socket={}", config.socket_path().display()))
        .args(["-u", crate::config::ADMIN_USER, "--init-command=SET SESSION sql_log_bin = 0"])
        .env("MYSQL_PWD", &config.accounts.admin_password)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", client_bin.display()))?;
    if let Some(mut stdin) = load.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(&dump.stdout).await.map_err(|e| format!("loading the dump: {e}"))?;
    }
    let loaded = load.wait_with_output().await.map_err(|e| format!("loading the dump: {e}"))?;
    if !loaded.status.success() {
        return Err(format!("loading the dump failed: {}", String::from_utf8_lossy(&loaded.stderr).trim()));
    }
    run(conn, &format!("SET GLOBAL gtid_slave_pos = '{position}'")).await?;
    run(conn, &crate::sql::change_master(config, primary)).await?;
    run(conn, "START SLAVE").await?;
    Ok(position)
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
