//! The db component's config file.
//!
//! ```toml
//! name = "server-02"
//! server_id = 3
//! datadir = "/var/lib/webstack/db/server-02"   # holds data/, my.cnf, the socket and logs
//! listen = "127.0.2.2:3306"
//! admin_listen = "127.0.2.2:9104"
//! role = "replica"                              # or "primary"
//! primary = "127.0.2.1:3306"                    # for a replica: where it replicates from
//! [accounts]
//! admin_password = "…"
//! repl_password = "…"
//! app_user = "foobar"
//! app_password = "…"
//! app_database = "foobar"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use webstack_config::{ConfigErrors, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    pub name: String,
    pub server_id: u32,
    pub datadir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub role: Role,
    pub primary: Option<SocketAddr>,
    /// Every node's SQL address (this one's too): at start, a node looks for a writable peer
    /// before it may become writable itself.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Every node's admin listener, in the order of `peers`: the failover managers'
    /// addresses. With fewer than two, no manager runs.
    #[serde(default)]
    pub managers: Vec<SocketAddr>,
    pub accounts: Accounts,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    pub admin_password: String,
    pub repl_password: String,
    pub app_user: String,
    pub app_password: String,
    pub app_database: String,
}

/// The account webstack administers each node with.
pub const ADMIN_USER: &str = "webstack_admin";
/// The account replicas replicate with.
pub const REPL_USER: &str = "webstack_repl";

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Passwords go into SQL string literals; keeping them to a safe alphabet avoids quoting bugs.
fn is_safe_password(s: &str) -> bool {
    s.len() >= 8 && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl DbConfig {
    pub fn load(path: impl AsRef<Path>) -> Result<DbConfig, ConfigErrors> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(src: &Source) -> Result<DbConfig, ConfigErrors> {
        let c: DbConfig = src.parse()?;
        let mut errors = Vec::new();
        if c.server_id == 0 {
            errors.push(src.error_at("server_id", "must be at least 1 (0 disables replication)"));
        }
        if !c.datadir.is_absolute() {
            errors.push(src.error_at("datadir", format!("{} must be an absolute path", c.datadir.display())));
        }
        // The server's Unix socket lives in the datadir: its path must fit in sun_path.
        if c.socket_path().as_os_str().len() > 100 {
            errors.push(
                src.error_at(
                    "datadir",
                    "is too long for the server's Unix socket path (100 bytes); use a shorter path",
                ),
            );
        }
        match (c.role, c.primary) {
            (Role::Replica, None) => errors.push(src.error_at("primary", "a replica needs the address of its primary")),
            (Role::Primary, Some(_)) => {
                errors.push(src.error_at("primary", "a primary replicates from nobody; remove `primary`"))
            }
            _ => {}
        }
        if c.listen == c.admin_listen {
            errors.push(src.error_at("admin_listen", "must differ from `listen`"));
        }
        for (field, value) in
            [("accounts.app_user", &c.accounts.app_user), ("accounts.app_database", &c.accounts.app_database)]
        {
            if !is_identifier(value) {
                errors.push(src.error_at(field, format!("`{value}` must be letters, digits and `_`")));
            }
        }
        for (field, value) in [
            ("accounts.admin_password", &c.accounts.admin_password),
            ("accounts.repl_password", &c.accounts.repl_password),
            ("accounts.app_password", &c.accounts.app_password),
        ] {
            if !is_safe_password(value) {
                errors.push(src.error_at(field, "must be 8 to 128 characters of letters, digits, `-`, `_`, `.`"));
            }
        }
        match errors.is_empty() {
            true => Ok(c),
            false => Err(ConfigErrors(errors)),
        }
    }

    pub fn data_path(&self) -> PathBuf {
        self.datadir.join("data")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.datadir.join("mysqld.sock")
    }

    pub fn cnf_path(&self) -> PathBuf {
        self.datadir.join("my.cnf")
    }

    pub fn error_log_path(&self) -> PathBuf {
        self.datadir.join("error.log")
    }

    /// Written once the accounts and replication are set up.
    pub fn provisioned_marker(&self) -> PathBuf {
        self.datadir.join("provisioned")
    }
}
