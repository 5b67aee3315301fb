//! The model of a webstack: `webstack.toml` describes the hosts, their addresses, which
//! components run where, the site's domain and ports, and profiles that pick hosts for the
//! seed's steps (`single`, `distributed`). This crate is the only place that knows the whole
//! picture: it validates the file once ([`Topology::load`]) and turns a profile into a
//! [`Plan`] — per host, the components to run, each with its own rendered config file.

mod model;
mod plan;
mod render;
mod subnet;

pub use model::TlsSettings;
pub use model::{Component, Topology};
pub use plan::{Plan, PlannedComponent, PlannedHost, Probe, Secrets, SiteCertificate};
pub use render::shop_admin_email;
pub use subnet::Subnet;
