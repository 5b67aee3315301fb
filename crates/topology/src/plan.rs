//! A profile of the topology, made concrete: what runs on which host, with which config.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Component, Host, Topology};
use crate::render;

/// Passwords of the database accounts; generated once per state dir by the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub db_admin_password: String,
    pub db_app_password: String,
    pub db_repl_password: String,
    /// The load-balancer pair's advert key.
    #[serde(default)]
    pub ha_key: String,
    /// The shop's admin account's password (the account is `admin@DOMAIN`).
    #[serde(default)]
    pub shop_admin_password: String,
}

/// The site's certificate chain and key, as PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SiteCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The local CA that issued it, when the stack made it: what the edge verifies the web
    /// servers against when it speaks HTTPS to them.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// Everything the supervisor needs to run one profile; written as `plan.json` in the state dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub profile: String,
    /// Where a browser reaches the site, e.g. `http://127.0.1.10:8080/`.
    pub site_url: String,
    /// Where the site answers over TLS, when the profile has a load balancer and a certificate.
    #[serde(default)]
    pub site_https_url: Option<String>,
    /// The CA a client must trust for the HTTPS URL, when the stack made its own certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub site_name: String,
    pub hosts: Vec<PlannedHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedHost {
    pub name: String,
    pub address: Ipv4Addr,
    pub components: Vec<PlannedComponent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedComponent {
    pub component: Component,
    /// The subcommand of the `webstack` binary that runs it (`proxy`, `app`, `db`).
    pub command: String,
    /// Where its rendered config is written.
    pub config_file: PathBuf,
    /// The rendered config itself.
    pub config: String,
    /// Main service first, then admin and metrics listeners.
    pub listen: Vec<SocketAddr>,
    /// How the supervisor tells that it is healthy.
    pub probe: Probe,
    /// An admin URL path answering JSON `{"role": …, "lag_seconds": …}` where a role applies.
    pub role_path: Option<String>,
    /// A restart hands over to a new process (`--take-over PID`) instead of stopping first: a
    /// proxy with no partner to fail over to.
    #[serde(default)]
    pub hands_over: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    /// Healthy when `GET path` on `address` answers 200.
    Http { address: SocketAddr, path: String },
    /// Healthy when `address` accepts a TCP connection.
    Tcp { address: SocketAddr },
}

impl PlannedComponent {
    /// `HOST/COMPONENT`, the name the CLI uses.
    pub fn id(&self, host: &str) -> String {
        format!("{host}/{}", self.component)
    }
}

impl Topology {
    /// Renders `profile` for a stack whose state lives in `state_dir` (an absolute path).
    /// The site's certificate, for the edge's HTTPS listener: the topology's own, or
    /// `generated` (a local CA's) when the topology names none.
    pub fn site_certificate(
        &self,
        generated: impl FnOnce() -> Result<SiteCertificate, String>,
    ) -> Result<SiteCertificate, String> {
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Ok(SiteCertificate { cert: cert.clone(), key: key.clone(), ca: None }),
            _ => generated(),
        }
    }

    /// Every name the site's certificate should cover: the domain, the site's name, each host.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.domain.clone(), self.site_name.clone()];
        for host in &self.hosts {
            names.push(format!("{}.{}", host.name, self.domain));
        }
        names.dedup();
        names
    }

    pub fn plan(
        &self,
        profile: &str,
        state_dir: &Path,
        secrets: &Secrets,
        certificate: Option<&SiteCertificate>,
    ) -> Result<Plan, String> {
        let names = self.profiles.get(profile).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            format!("no profile `{profile}` in {}; defined: {}", self.path.display(), known.join(", "))
        })?;
        let hosts: Vec<&Host> = names.iter().filter_map(|n| self.host(n)).collect();
        let https_only = self.https_only.contains(profile);
        // Relative to the state dir, where the stack keeps its data.
        let embedded_database = self.embedded_databases.get(profile).map(|file| state_dir.join(file));
        let ctx = render::Context {
            topology: self,
            hosts: &hosts,
            state_dir,
            secrets,
            certificate,
            https_only,
            embedded_database: embedded_database.as_deref(),
        };
        // With an embedded database the app keeps the data itself: no MariaDB runs.
        let runs = |c: &&Component| embedded_database.is_none() || **c != Component::Db;
        let planned = hosts
            .iter()
            .map(|host| PlannedHost {
                name: host.name.clone(),
                address: host.address,
                components: host.components.iter().filter(runs).map(|c| ctx.component(host, *c)).collect(),
            })
            .collect();
        let has_edge = hosts.iter().any(|h| h.components.contains(&Component::Edge));
        let site = match has_edge {
            true => self.vip,
            false => hosts
                .iter()
                .find(|h| h.components.contains(&Component::Web))
                .map(|h| h.address)
                .ok_or_else(|| format!("profile `{profile}` has no web server"))?,
        };
        Ok(Plan {
            profile: profile.to_string(),
            site_url: format!("http://{site}:{}/", self.ports.http),
            site_https_url: (has_edge && certificate.is_some())
                .then(|| format!("https://{}:{}/", self.site_name, self.ports.https)),
            ca_file: None,
            site_name: self.site_name.clone(),
            hosts: planned,
        })
    }
}

impl Plan {
    /// Every (host, component) pair, hosts in plan order.
    pub fn components(&self) -> impl Iterator<Item = (&PlannedHost, &PlannedComponent)> {
        self.hosts.iter().flat_map(|h| h.components.iter().map(move |c| (h, c)))
    }
}
