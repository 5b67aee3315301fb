//! The HTTP engine of webstack, in two roles: *edge* (HAProxy's job: balance a pool of web
//! servers with health checks) and *web* (nginx's job: serve the code base's static files and
//! reverse-proxy the rest to the application server). One engine, one config format: a role is
//! only a choice of listeners, routes and pools.
//!
//! The proxy runs alone with its own config file (`webstack proxy --config FILE`); it knows
//! nothing of the rest of webstack. [`config::ProxyConfig::load`] validates the file before any
//! socket is bound, and [`run`] serves it until the shutdown future completes.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod agent;
pub mod balancer;
pub mod basic_auth;
pub mod body;
pub mod cache;
pub mod client;
pub mod client_cert;
pub mod compression;
pub mod config;
pub mod forward;
pub mod health;
pub mod preemption;
pub mod process;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod redundancy;
pub mod resolvers;
pub mod server;
pub mod stall;
pub mod static_files;
pub mod takeover;
pub mod tls;
pub mod upstream;

pub use config::ProxyConfig;
pub use server::{run, run_launched};
pub use takeover::Launch;

/// The runtime a proxy with this config runs on: one thread (tokio's current-thread
/// scheduler, the cheapest per request: no work stealing, no cross-thread wake-ups) or
/// `workers` threads sharing the connections (the multi-thread scheduler). The shared state
/// (config, pools, counters) is already behind `Arc`s and atomics.
pub fn runtime(config: &ProxyConfig) -> std::io::Result<tokio::runtime::Runtime> {
    match config.workers {
        0 | 1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}
