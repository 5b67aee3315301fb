//! Authoritative DNS for the site's zone (`foobar.com`): `www` and the apex lead to the VIP,
//! every host has its A record, with SOA and NS at the apex, correct NXDOMAIN and NODATA
//! answers, over UDP and TCP. Records can carry a health check: an address whose check fails
//! is withdrawn from answers while another address of the same name passes (all failing: all
//! are given, as a resolver would rather try a dead address than get nothing).
//!
//! Messages are read and written with hickory-proto; the zone logic ([`zone::Zone::answer`]) is
//! pure and tested without sockets.

pub mod config;
pub mod server;
pub mod zone;

pub use config::DnsConfig;
pub use server::run;
