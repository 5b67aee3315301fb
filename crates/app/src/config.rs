//! The app's config file.
//!
//! ```toml
//! name = "server-01"                 # this server; shown in logs and headers
//! listen = "127.0.2.1:9000"
//! [database]
//! name = "foobar"
//! user = "foobar"
//! password = "…"
//! local = "server-01"                # the node reads go to
//! max_lag_ms = 2000                  # ... while it is no further behind than this
//! [[database.nodes]]
//! name = "server-01"
//! address = "127.0.2.1:3306"
//! [admin]                            # optional: the account that adds and edits products
//! email = "admin@foobar.com"
//! password = "…"                     # made sure of at every start
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use webstack_config::{ConfigErrors, Source};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: String,
    pub user: String,
    pub password: String,
    pub local: String,
    /// Reads avoid a node further behind the writer than this.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    pub nodes: Vec<NodeConfig>,
}

fn default_max_lag_ms() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub address: SocketAddr,
}

impl AppConfig {
    pub fn load(path: impl AsRef<Path>) -> Result<AppConfig, ConfigErrors> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(src: &Source) -> Result<AppConfig, ConfigErrors> {
        let config: AppConfig = src.parse()?;
        let mut errors = Vec::new();
        let db = &config.database;
        if db.nodes.is_empty() {
            errors.push(src.error_at("database.nodes", "at least one database node is needed"));
        }
        let mut names = BTreeSet::new();
        for (i, node) in db.nodes.iter().enumerate() {
            if !names.insert(node.name.as_str()) {
                errors.push(
                    src.error_at(&format!("database.nodes[{i}].name"), format!("node `{}` is listed twice", node.name)),
                );
            }
        }
        if let Some(admin) = &config.admin {
            if let Err(e) = crate::accounts::valid_email(&admin.email) {
                errors.push(src.error_at("admin.email", e));
            }
            if let Err(e) = crate::accounts::valid_password(&admin.password) {
                errors.push(src.error_at("admin.password", e));
            }
        }
        if !db.nodes.iter().any(|n| n.name == db.local) {
            errors.push(src.error_at("database.local", format!("`{}` is not one of database.nodes", db.local)));
        }
        if db.name.is_empty() || !db.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            errors.push(
                src.error_at("database.name", format!("`{}` is not a database name (letters, digits, `_`)", db.name)),
            );
        }
        if db.user.is_empty() {
            errors.push(src.error_at("database.user", "must not be empty"));
        }
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(errors)),
        }
    }

    /// The position of the local node in `database.nodes`.
    pub fn local_index(&self) -> usize {
        self.database.nodes.iter().position(|n| n.name == self.database.local).unwrap_or(0)
    }
}
