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
//!
//! Or, with no database server, an embedded SQLite file (relative to this file's directory
//! unless absolute; created with the schema at the first start):
//!
//! ```toml
//! database = "sqlite:///var/lib/foobar/shop.db"
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use webstack_config::{ConfigErrors, Source};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub database: DatabaseSetting,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub email: String,
    pub password: String,
}

/// Where the shop's data lives.
#[derive(Debug, Clone)]
pub enum DatabaseSetting {
    /// MariaDB nodes, one of them writable (a `[database]` table).
    Cluster(DatabaseConfig),
    /// An embedded SQLite file (`database = "sqlite://PATH"`), absolute once loaded.
    Embedded(PathBuf),
}

impl<'de> Deserialize<'de> for DatabaseSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> Visitor<'de> for Setting {
            type Value = DatabaseSetting;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a `sqlite://PATH` URL or a [database] table of MariaDB nodes")
            }

            fn visit_str<E: de::Error>(self, url: &str) -> Result<DatabaseSetting, E> {
                webstack_config::sqlite_file(url).map(DatabaseSetting::Embedded).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DatabaseSetting, A::Error> {
                DatabaseConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(DatabaseSetting::Cluster)
            }
        }
        deserializer.deserialize_any(Setting)
    }
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
        let mut config: AppConfig = src.parse()?;
        let mut errors = Vec::new();
        match &mut config.database {
            DatabaseSetting::Cluster(db) => check_cluster(db, src, &mut errors),
            DatabaseSetting::Embedded(file) => {
                let base = src.path().parent().unwrap_or(Path::new("."));
                *file = std::path::absolute(base.join(&*file)).unwrap_or_else(|_| base.join(&*file));
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
        match errors.is_empty() {
            true => Ok(config),
            false => Err(ConfigErrors(errors)),
        }
    }
}

fn check_cluster(db: &DatabaseConfig, src: &Source, errors: &mut Vec<webstack_config::ConfigError>) {
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
}

impl DatabaseConfig {
    /// The position of the local node in `nodes`.
    pub fn local_index(&self) -> usize {
        self.nodes.iter().position(|n| n.name == self.local).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AppConfig, ConfigErrors> {
        AppConfig::from_source(&Source::from_text("/etc/foobar/app.toml", text))
    }

    #[test]
    fn an_embedded_database_is_a_file_next_to_the_config_unless_absolute() {
        let base = "name = \"server-01\"\nlisten = \"127.0.0.1:9000\"\n";
        let relative = load(&format!("{base}database = \"sqlite://shop.db\"")).expect("valid");
        assert!(matches!(&relative.database, DatabaseSetting::Embedded(p) if p == Path::new("/etc/foobar/shop.db")));
        let absolute = load(&format!("{base}database = \"sqlite:///var/lib/shop.db\"")).expect("valid");
        assert!(matches!(&absolute.database, DatabaseSetting::Embedded(p) if p == Path::new("/var/lib/shop.db")));
    }

    #[test]
    fn a_bad_database_setting_names_line_and_field() {
        let base = "name = \"server-01\"\nlisten = \"127.0.0.1:9000\"\n";
        let err = load(&format!("{base}database = \"sqlite::memory:\"")).expect_err("in memory").to_string();
        assert!(err.contains("app.toml:3") && err.contains("database") && err.contains("in memory"), "{err}");
        let err = load(&format!(
            "{base}[database]\nname = \"foobar\"\nuser = \"u\"\npassword = \"p\"\nlocal = \"x\"\nnodes = []\nport = 1"
        ))
        .expect_err("unknown field")
        .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
