//! The two databases the shop runs on: MariaDB nodes (the seed's MySQL) and an embedded SQLite
//! file (one server, no database server). sqlx gives each its own types; this module holds the
//! few enums that carry either, the [`per_backend!`] macro that writes a query once for both,
//! and the words the two SQL dialects spell differently.

use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

/// A node's connections: a MariaDB server's, or the embedded SQLite file's.
#[derive(Clone)]
pub enum Pool {
    Mysql(MySqlPool),
    Sqlite(SqlitePool),
}

/// A connection taken from a [`Pool`], held for a write.
pub enum Pooled {
    Mysql(PoolConnection<MySql>),
    Sqlite(PoolConnection<Sqlite>),
}

/// The connection a write runs on.
pub enum Conn<'c> {
    Mysql(&'c mut MySqlConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Runs `$body` with `$c` bound to the concrete pool or connection inside `$on` (a [`Pool`] or
/// a [`Conn`]) and `$d` to its [`Dialect`]. sqlx's types differ per database; the code that
/// binds and reads them does not, so it is written once and compiled for each.
macro_rules! per_backend {
    ($on:expr, $kind:ident, |$c:ident, $d:ident| $body:expr) => {
        match $on {
            $crate::backend::$kind::Mysql($c) => {
                #[allow(unused_variables)]
                let $d = $crate::backend::Dialect::Mysql;
                $body
            }
            $crate::backend::$kind::Sqlite($c) => {
                #[allow(unused_variables)]
                let $d = $crate::backend::Dialect::Sqlite;
                $body
            }
        }
    };
}
pub(crate) use per_backend;

impl Pool {
    /// A MariaDB node's pool; connects on first use.
    pub fn mariadb(
        address: std::net::SocketAddr,
        database: &str,
        user: &str,
        password: &str,
        acquire: Duration,
    ) -> Pool {
        let options = MySqlConnectOptions::new()
            .host(&address.ip().to_string())
            .port(address.port())
            .username(user)
            .password(password)
            .database(database)
            .ssl_mode(MySqlSslMode::Disabled);
        let pool = MySqlPoolOptions::new()
            .max_connections(16)
            .min_connections(0)
            // Short: a dead node must fail a query fast (and the request with a clear 503, or
            // the write over to the new primary), not hold it for seconds.
            .acquire_timeout(acquire)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options);
        Pool::Mysql(pool)
    }

    /// The embedded database's two pools: readers, and the one connection that writes.
    /// SQLite lets one writer in at a time; one writing connection queues the writes in the
    /// app instead of failing them with SQLITE_BUSY, and WAL lets the readers read meanwhile.
    pub fn sqlite(path: &std::path::Path, acquire: Duration, write_wait: Duration) -> (Pool, Pool) {
        let base = SqliteConnectOptions::new().filename(path).busy_timeout(Duration::from_secs(5));
        // Only the writer creates the file and turns WAL on (a lasting property of the file;
        // switching takes an exclusive lock, so one connection does it).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(write_wait)
            .idle_timeout(None)
            .connect_lazy_with(base.clone().create_if_missing(true).journal_mode(SqliteJournalMode::Wal));
        let readers = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(acquire)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(base);
        (Pool::Sqlite(readers), Pool::Sqlite(writer))
    }

    pub async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match self {
            Pool::Mysql(p) => Pooled::Mysql(p.acquire().await?),
            Pool::Sqlite(p) => Pooled::Sqlite(p.acquire().await?),
        })
    }
}

impl Pooled {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Mysql(c) => Conn::Mysql(c),
            Pooled::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Mysql,
    Sqlite,
}

/// Words the two dialects spell differently, as migrations write them (`{name}`), in MariaDB
/// and in SQLite. Everything else in a migration is SQL both understand.
const SPELLINGS: [(&str, &str, &str); 4] = [
    ("{serial}", "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("{table}", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", ""),
    ("{add_column}", "ADD COLUMN IF NOT EXISTS", "ADD COLUMN"),
    ("{insert_ignore}", "INSERT IGNORE", "INSERT OR IGNORE"),
];

impl Dialect {
    /// The statement of this dialect among two.
    pub fn pick(self, mysql: &'static str, sqlite: &'static str) -> &'static str {
        match self {
            Dialect::Mysql => mysql,
            Dialect::Sqlite => sqlite,
        }
    }

    /// A migration's statement in this dialect.
    pub fn render(self, statement: &str) -> String {
        let mut sql = statement.to_string();
        for (word, mysql, sqlite) in SPELLINGS {
            if sql.contains(word) {
                sql = sql.replace(word, self.pick(mysql, sqlite));
            }
        }
        sql
    }
}

/// A result row of either backend, read by column name.
pub trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}
columns_of!(sqlx::mysql::MySqlRow);
columns_of!(sqlx::sqlite::SqliteRow);

/// The id an `INSERT` gave its row.
pub trait Inserted {
    fn inserted_id(&self) -> i64;
}

impl Inserted for sqlx::mysql::MySqlQueryResult {
    fn inserted_id(&self) -> i64 {
        self.last_insert_id() as i64
    }
}

impl Inserted for sqlx::sqlite::SqliteQueryResult {
    fn inserted_id(&self) -> i64 {
        self.last_insert_rowid()
    }
}

fn mysql_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

/// InnoDB chose this transaction as a deadlock victim (1213) or gave up waiting for a lock
/// (1205): the transaction may simply run again.
pub fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(mysql_error_number(e), Some(1213 | 1205))
}

/// The node is read-only (1290, "--read-only option"): it refused the statement, wrote nothing.
pub fn is_read_only(e: &sqlx::Error) -> bool {
    mysql_error_number(e) == Some(1290)
}

/// A unique key says no (MariaDB's "duplicate entry", SQLite's UNIQUE constraint).
pub fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// The schema has not reached this node yet (MariaDB's 42S02; SQLite says "no such table").
pub fn is_missing_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().as_deref() == Some("42S02") || db.message().starts_with("no such table"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_render_in_each_dialect() {
        let create = "CREATE TABLE t (id {serial}, n INT){table}";
        assert_eq!(
            Dialect::Mysql.render(create),
            "CREATE TABLE t (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, n INT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        );
        assert_eq!(Dialect::Sqlite.render(create), "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INT)");
        assert_eq!(Dialect::Sqlite.render("{insert_ignore} INTO u"), "INSERT OR IGNORE INTO u");
        assert_eq!(Dialect::Mysql.render("SELECT 1"), "SELECT 1");
    }
}
