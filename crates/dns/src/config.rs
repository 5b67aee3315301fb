//! The DNS component's config file.
//!
//! ```toml
//! name = "ns-01"
//! listen = "127.0.4.1:5353"        # UDP and TCP
//! zone = "foobar.com"
//! ttl = 30
//! nameserver = "ns-01"             # the NS record's host, which needs a record below
//! [[records]]
//! name = "@"                       # the apex; other names are relative to the zone
//! addresses = ["127.0.1.10"]
//! [[records]]
//! name = "www"
//! addresses = ["127.0.1.10"]
//! check_port = 8443                # optional: an address is up while this port accepts
//! ```

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;
use webstack_config::{ConfigErrors, Source};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub zone: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    pub nameserver: String,
    pub records: Vec<RecordConfig>,
}

fn default_ttl() -> u32 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
    pub check_port: Option<u16>,
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl DnsConfig {
    pub fn load(path: impl AsRef<Path>) -> Result<DnsConfig, ConfigErrors> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(src: &Source) -> Result<DnsConfig, ConfigErrors> {
        let c: DnsConfig = src.parse()?;
        let mut errors = Vec::new();
        if c.zone.split('.').any(|l| !is_label(l)) || !c.zone.contains('.') {
            errors.push(src.error_at("zone", format!("`{}` is not a domain like foobar.com", c.zone)));
        }
        let mut names = BTreeSet::new();
        for (i, r) in c.records.iter().enumerate() {
            if r.name != "@" && r.name.split('.').any(|l| !is_label(l)) {
                errors.push(src.error_at(
                    &format!("records[{i}].name"),
                    format!("`{}` is not a name (labels of letters, digits, -; or @)", r.name),
                ));
            }
            if !names.insert(r.name.to_ascii_lowercase()) {
                errors.push(src.error_at(&format!("records[{i}].name"), format!("`{}` is listed twice", r.name)));
            }
            if r.addresses.is_empty() {
                errors.push(src.error_at(&format!("records[{i}].addresses"), "a record needs at least one address"));
            }
        }
        if !names.contains(&c.nameserver.to_ascii_lowercase()) {
            errors.push(src.error_at(
                "nameserver",
                format!("`{}` needs a record of its own (the NS record points to it)", c.nameserver),
            ));
        }
        if c.ttl == 0 {
            errors.push(src.error_at("ttl", "must be at least 1 second"));
        }
        match errors.is_empty() {
            true => Ok(c),
            false => Err(ConfigErrors(errors)),
        }
    }
}
