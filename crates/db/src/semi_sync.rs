//! Semi-synchronous replication, watched. A writable node's commits wait (AFTER_SYNC: after
//! the binlog is written, before the commit is visible) until a replica has the transaction,
//! so a write the client saw acknowledged survives the primary's loss. MariaDB turns this off
//! by itself when no replica answers within the timeout, and says so nowhere but a status
//! variable: this watch turns it on once a replica is attached, and reports every fallback to
//! asynchronous replication loudly (log, `/status`, `/metrics`).

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use crate::config::DbConfig;
use crate::sql;

/// How long a commit waits for a replica's acknowledgement before the primary falls back to
/// asynchronous replication.
pub const ACK_TIMEOUT_MS: u64 = 1000;
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The semi-sync state of a node, as `/status` reports it.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct SemiSync {
    /// Commits are to wait for a replica (`rpl_semi_sync_master_enabled`).
    pub enabled: bool,
    /// They do now (`Rpl_semi_sync_master_status`); false while fallen back to asynchronous.
    pub active: bool,
    /// Replicas attached as semi-sync clients.
    pub clients: u64,
    /// Commits a replica acknowledged, and commits that went out without one.
    pub acknowledged: u64,
    pub not_acknowledged: u64,
    pub wait_point: String,
    /// This node acknowledges its primary's transactions (as a replica).
    pub replica_acknowledging: bool,
}

impl SemiSync {
    /// Enabled, but not waiting for any replica: acknowledged writes could be lost.
    pub fn fallen_back(&self) -> bool {
        self.enabled && !self.active
    }
}

/// The node's semi-sync variables and counters.
pub async fn read(conn: &mut MySqlConnection) -> Result<SemiSync, sqlx::Error> {
    let mut s = SemiSync::default();
    let rows = sqlx::query(
        "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME LIKE 'RPL_SEMI_SYNC_%' \
         UNION ALL SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES \
         WHERE VARIABLE_NAME IN ('RPL_SEMI_SYNC_MASTER_ENABLED', 'RPL_SEMI_SYNC_MASTER_WAIT_POINT')",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let name: String = row.try_get_unchecked(0)?;
        let value: String = row.try_get_unchecked(1)?;
        let on = value.eq_ignore_ascii_case("ON");
        let count = value.parse().unwrap_or(0);
        match name.to_ascii_uppercase().as_str() {
            "RPL_SEMI_SYNC_MASTER_ENABLED" => s.enabled = on,
            "RPL_SEMI_SYNC_MASTER_STATUS" => s.active = on,
            "RPL_SEMI_SYNC_MASTER_CLIENTS" => s.clients = count,
            "RPL_SEMI_SYNC_MASTER_YES_TX" => s.acknowledged = count,
            "RPL_SEMI_SYNC_MASTER_NO_TX" => s.not_acknowledged = count,
            "RPL_SEMI_SYNC_MASTER_WAIT_POINT" => s.wait_point = value,
            "RPL_SEMI_SYNC_SLAVE_STATUS" => s.replica_acknowledging = on,
            _ => {}
        }
    }
    Ok(s)
}

/// The last state the watch saw, for `/status` and the transitions it logs.
#[derive(Debug, Default)]
pub struct Watch {
    last: Mutex<Option<SemiSync>>,
}

impl Watch {
    pub fn last(&self) -> Option<SemiSync> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, now: SemiSync) -> Option<SemiSync> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).replace(now)
    }
}

/// Watches the node for as long as it runs: on a writable node, turns semi-sync on once a
/// replica is attached (on at boot, the first commits would stall with none attached yet),
/// and logs every change between waiting for replicas and not.
pub async fn watch(config: &DbConfig, watch: &Watch) {
    let mut conn: Option<MySqlConnection> = None;
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        if conn.is_none() {
            conn = sql::admin(config).await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        match step(config, c, watch).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(node = config.name, error = %e, "semi-sync watch lost its connection");
                conn = None;
            }
        }
    }
}

async fn step(config: &DbConfig, conn: &mut MySqlConnection, watch: &Watch) -> Result<(), sqlx::Error> {
    let read_only: i64 = sqlx::query_scalar("SELECT @@global.read_only").fetch_one(&mut *conn).await?;
    let mut now = read(conn).await?;
    if read_only == 0 && !now.enabled && now.clients > 0 {
        sqlx::query("SET GLOBAL rpl_semi_sync_master_enabled = ON").execute(&mut *conn).await?;
        tracing::info!(
            node = config.name,
            clients = now.clients,
            "semi-synchronous replication on: each commit waits until a replica has it (AFTER_SYNC)"
        );
        now = read(conn).await?;
    }
    let before = watch.record(now.clone());
    let was_fallen_back = before.as_ref().is_some_and(SemiSync::fallen_back);
    if now.fallen_back() && !was_fallen_back {
        tracing::error!(
            node = config.name,
            clients = now.clients,
            not_acknowledged = now.not_acknowledged,
            "SEMI-SYNC FELL BACK TO ASYNCHRONOUS REPLICATION: no replica acknowledged a commit within {} ms; \
             writes acknowledged from now on may be lost if this primary fails",
            ACK_TIMEOUT_MS
        );
    } else if was_fallen_back && now.enabled && now.active {
        tracing::warn!(
            node = config.name,
            clients = now.clients,
            "semi-sync is back: commits wait for a replica again"
        );
    }
    Ok(())
}
