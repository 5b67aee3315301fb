//! The SQL webstack runs on a node: accounts, replication wiring, and reading its state.

use std::time::Duration;

use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlSslMode};
use sqlx::{ConnectOptions, Row};

use crate::config::{DbConfig, Role, ADMIN_USER, REPL_USER};

/// Connects over the node's Unix socket as `user`.
pub async fn connect(config: &DbConfig, user: &str, password: Option<&str>) -> Result<MySqlConnection, sqlx::Error> {
    let mut options =
        MySqlConnectOptions::new().socket(config.socket_path()).username(user).ssl_mode(MySqlSslMode::Disabled);
    if let Some(p) = password {
        options = options.password(p);
    }
    tokio::time::timeout(Duration::from_secs(5), options.connect()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// Connects to another node (or this one) over TCP as the admin account.
pub async fn connect_tcp(config: &DbConfig, address: std::net::SocketAddr) -> Result<MySqlConnection, sqlx::Error> {
    let options = MySqlConnectOptions::new()
        .host(&address.ip().to_string())
        .port(address.port())
        .username(ADMIN_USER)
        .password(&config.accounts.admin_password)
        .ssl_mode(MySqlSslMode::Disabled);
    tokio::time::timeout(Duration::from_secs(2), options.connect()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}

pub async fn admin(config: &DbConfig) -> Result<MySqlConnection, sqlx::Error> {
    connect(config, ADMIN_USER, Some(&config.accounts.admin_password)).await
}

/// Creates the accounts (not replicated: each node makes its own) and, on a replica, points
/// replication at the primary. Safe to run again after a crash halfway.
pub async fn provision(config: &DbConfig, conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    let a = &config.accounts;
    let statements = vec![
        "SET SESSION sql_log_bin = 0".to_string(),
        format!("CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'localhost' IDENTIFIED BY '{}'", a.admin_password),
        format!("GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'localhost' WITH GRANT OPTION"),
        format!("CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'127.%' IDENTIFIED BY '{}'", a.admin_password),
        format!("GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.%' WITH GRANT OPTION"),
        format!("CREATE USER IF NOT EXISTS '{REPL_USER}'@'127.%' IDENTIFIED BY '{}'", a.repl_password),
        format!("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{REPL_USER}'@'127.%'"),
        // The app's account has no SUPER or READ ONLY ADMIN, so read_only really stops it.
        format!("CREATE USER IF NOT EXISTS '{}'@'127.%' IDENTIFIED BY '{}'", a.app_user, a.app_password),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, REFERENCES, \
             CREATE TEMPORARY TABLES, LOCK TABLES ON `{}`.* TO '{}'@'127.%'",
            a.app_database, a.app_user
        ),
        format!("ALTER USER 'root'@'localhost' IDENTIFIED BY '{}'", a.admin_password),
    ];
    for s in &statements {
        sqlx::query(s).execute(&mut *conn).await?;
    }
    match (config.role, config.primary) {
        (Role::Primary, _) => {
            // Logged, so the replicas get the database through replication.
            sqlx::query("SET SESSION sql_log_bin = 1").execute(&mut *conn).await?;
            let create = format!("CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4", a.app_database);
            sqlx::query(&create).execute(&mut *conn).await?;
        }
        (Role::Replica, Some(primary)) => {
            sqlx::query("STOP SLAVE").execute(&mut *conn).await?;
            sqlx::query(&change_master(config, primary)).execute(&mut *conn).await?;
            sqlx::query("START SLAVE").execute(&mut *conn).await?;
        }
        (Role::Replica, None) => {}
    }
    Ok(())
}

/// The statement that points a node at `primary`: GTID replication from where the node's
/// `gtid_slave_pos` stands, retrying a lost primary every second.
pub fn change_master(config: &DbConfig, primary: std::net::SocketAddr) -> String {
    format!(
        "CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, MASTER_USER = '{REPL_USER}', \
         MASTER_PASSWORD = '{}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
        primary.ip(),
        primary.port(),
        config.accounts.repl_password
    )
}

/// What `/status` reports about a node.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NodeStatus {
    pub name: String,
    /// `primary` (writable), `replica` (replicating) or `read-only` (neither).
    pub role: String,
    pub read_only: bool,
    pub gtid_current_pos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaStatus>,
    /// Semi-sync replication as last watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semi_sync: Option<crate::semi_sync::SemiSync>,
    /// Set when the node holds transactions the primary never received, so it cannot
    /// replicate: which, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
    /// What this node's failover manager sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<crate::manager::View>,
    /// A word on the role for `webstack status`: a primary's semi-sync state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicaStatus {
    pub primary: String,
    pub io_running: bool,
    pub sql_running: bool,
    /// `Seconds_Behind_Master`; `None` while replication is stopped or broken.
    pub lag_seconds: Option<u64>,
    pub gtid_io_pos: String,
    pub last_error: String,
    /// `Last_IO_Errno`: 1236 means the primary lacks transactions this node holds.
    pub last_io_errno: u32,
}

/// A replica stopped by error 1236 holds transactions its primary does not have.
fn replica_diverged(replica: &Option<ReplicaStatus>, position: &str, node: &str) -> Option<String> {
    let r = replica.as_ref().filter(|r| r.last_io_errno == 1236)?;
    Some(format!(
        "holds transactions the cluster never received (its position {position}; the primary answered: {}); \
         kept out of the cluster. `webstack db rejoin {node} --force` rebuilds it from the primary",
        r.last_error
    ))
}

pub async fn status(config: &DbConfig, conn: &mut MySqlConnection) -> Result<NodeStatus, sqlx::Error> {
    let row =
        sqlx::query("SELECT @@global.read_only AS ro, @@global.gtid_current_pos AS pos").fetch_one(&mut *conn).await?;
    let read_only: i64 = row.try_get_unchecked("ro")?;
    let gtid_current_pos: String = row.try_get_unchecked("pos")?;
    let replica = match sqlx::query("SHOW SLAVE STATUS").fetch_optional(&mut *conn).await? {
        Some(r) => {
            let text = |name: &str| r.try_get_unchecked::<Option<String>, _>(name).ok().flatten().unwrap_or_default();
            let lag = r.try_get_unchecked::<Option<u64>, _>("Seconds_Behind_Master").ok().flatten();
            Some(ReplicaStatus {
                primary: format!(
                    "{}:{}",
                    text("Master_Host"),
                    r.try_get_unchecked::<u32, _>("Master_Port").unwrap_or(0)
                ),
                io_running: text("Slave_IO_Running") == "Yes",
                sql_running: text("Slave_SQL_Running") == "Yes",
                lag_seconds: lag,
                gtid_io_pos: text("Gtid_IO_Pos"),
                last_io_errno: r.try_get_unchecked::<u32, _>("Last_IO_Errno").unwrap_or(0),
                last_error: [text("Last_IO_Error"), text("Last_SQL_Error")]
                    .into_iter()
                    .filter(|e| !e.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
        None => None,
    };
    let role = match (read_only == 0, &replica) {
        (true, _) => "primary",
        (false, Some(_)) => "replica",
        (false, None) => "read-only",
    };
    let diverged = replica_diverged(&replica, &gtid_current_pos, &config.name);
    Ok(NodeStatus {
        name: config.name.clone(),
        role: role.into(),
        read_only: read_only != 0,
        gtid_current_pos,
        replica,
        diverged,
        semi_sync: None,
        manager: None,
        role_note: None,
    })
}
