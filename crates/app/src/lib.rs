//! foobar.com, the seed's "application server" and "code base": a small shop served as HTML
//! pages and a JSON API under `/api/v1`, over MariaDB nodes of which exactly one is writable,
//! or over an embedded SQLite file when one server runs alone without a database server.
//!
//! Reads go to the database on the same server; writes go to the node that is not
//! `read_only`, found by asking the nodes (no primary address is configured, so the app
//! follows a promotion by itself). Schema migrations run at start on the writer, once, under a
//! named lock, and are idempotent. Static assets are not served here: the web role serves the
//! code base's `static/` directory.

pub mod accounts;
pub mod backend;
pub mod config;
pub mod data;
pub mod pages;
pub mod schema;
pub mod server;

pub use config::AppConfig;
pub use server::run;
