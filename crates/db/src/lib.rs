//! MariaDB instances, managed from Rust. `webstack db --config FILE` runs one node: it finds
//! `mariadbd` on the machine, initialises the datadir on first start, runs the server as its
//! child (the server dies with it, so a drill's SIGKILL reaches the database), creates the
//! accounts, wires a replica to its primary with GTID replication, and answers `/healthz`,
//! `/status` (role, lag, GTID positions) and `/metrics` on an admin listener.
//!
//! Every instance starts with `read_only=ON`; the node configured as primary is made writable
//! once it is up. Replication is semi-synchronous (AFTER_SYNC) and watched: a fallback to
//! asynchronous replication is reported loudly ([`semi_sync`]).

pub mod admin;
pub mod config;
pub mod instance;
pub mod locate;
pub mod manager;
pub mod roles;
pub mod semi_sync;
pub mod sql;

pub use config::DbConfig;
pub use instance::run;
