//! Each component's own config file, rendered from the topology. The formats are the
//! components' own (each component documents and validates its file); the end-to-end tests
//! check that every rendered file passes its component's validation.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::{Component, HealthCheck, Host, Topology};
use crate::plan::{PlannedComponent, Probe, Secrets, SiteCertificate};

pub(crate) struct Context<'a> {
    pub topology: &'a Topology,
    pub hosts: &'a [&'a Host],
    pub state_dir: &'a Path,
    pub secrets: &'a Secrets,
    pub certificate: Option<&'a SiteCertificate>,
    pub https_only: bool,
    /// The profile's embedded SQLite file (absolute), when it runs no MariaDB.
    pub embedded_database: Option<&'a Path>,
}

const APP_DB_USER: &str = "foobar";

impl Context<'_> {
    pub fn component(&self, host: &Host, component: Component) -> PlannedComponent {
        let ports = self.topology.ports;
        let at = |port| SocketAddr::new(host.address.into(), port);
        let (command, config, listen, probe, role_path) = match component {
            Component::Edge => {
                let main = SocketAddr::new(self.topology.vip.into(), ports.http);
                let https = SocketAddr::new(self.topology.vip.into(), ports.https);
                // Healthy when every web server is in the pool: a degraded pool shows.
                let probe = Probe::Http { address: at(ports.admin), path: "/ready".into() };
                let role = (self.hosts_with(Component::Edge).count() > 1).then(|| "/ha".to_string());
                let listen = match self.certificate {
                    Some(_) => vec![main, https, at(ports.admin)],
                    None => vec![main, at(ports.admin)],
                };
                ("proxy", self.edge(host), listen, probe, role)
            }
            Component::Web => {
                let probe = Probe::Http { address: at(ports.admin), path: "/ready".into() };
                ("proxy", self.web(host), vec![at(ports.http), at(ports.admin)], probe, None)
            }
            Component::App => {
                let probe = Probe::Http { address: at(ports.app), path: "/healthz".into() };
                ("app", self.app(host), vec![at(ports.app)], probe, None)
            }
            Component::Dns => {
                let probe = Probe::Tcp { address: at(ports.dns) };
                ("dns", self.dns(host), vec![at(ports.dns)], probe, None)
            }
            Component::Db => {
                let probe = Probe::Http { address: at(ports.db_admin), path: "/healthz".into() };
                let role = Some("/status".to_string());
                ("db", self.db(host), vec![at(ports.db), at(ports.db_admin)], probe, role)
            }
        };
        // A pair's node restarts by stopping: the VIP goes to its partner meanwhile (the
        // proxy refuses a take-over with [ha]).
        let paired = component == Component::Edge && self.hosts_with(Component::Edge).count() > 1;
        PlannedComponent {
            hands_over: command == "proxy" && !paired,
            component,
            command: command.into(),
            config_file: self.state_dir.join("config").join(format!("{}-{component}.toml", host.name)),
            config,
            listen,
            probe,
            role_path,
        }
    }

    /// The CA the edge verifies the web servers against when it speaks HTTPS to them: only in
    /// a profile with an edge, whose certificate the stack made (`tls.to_servers`, default on).
    fn servers_ca(&self) -> Option<&Path> {
        let has_edge = self.hosts_with(Component::Edge).next().is_some();
        let ca = self.certificate.and_then(|c| c.ca.as_deref())?;
        (has_edge && self.topology.tls.to_servers()).then_some(ca)
    }

    fn hosts_with(&self, component: Component) -> impl Iterator<Item = &&Host> {
        self.hosts.iter().filter(move |h| h.components.contains(&component))
    }

    fn edge(&self, host: &Host) -> String {
        let t = self.topology;
        let servers = self
            .hosts_with(Component::Web)
            .map(|h| Server { name: h.name.clone(), address: SocketAddr::new(h.address.into(), t.ports.http) })
            .collect();
        let config = ProxyConfig {
            name: host.name.clone(),
            admin: Admin { bind: SocketAddr::new(host.address.into(), t.ports.admin) },
            access_log: self.access_log(host, Component::Edge),
            ha: self.edge_pair(host),
            listeners: self.edge_listeners(),
            pools: [(
                "web".to_string(),
                Pool {
                    balance: t.edge_balance.clone(),
                    served_by_header: true,
                    // A server failing requests is out before its next health check.
                    passive: Some(Passive { failures: 3 }),
                    health: Some(t.edge_health.clone()),
                    tls: self.servers_ca().map(|ca| PoolTls { ca: ca.to_path_buf(), server_name: t.site_name.clone() }),
                    servers,
                },
            )]
            .into(),
        };
        to_toml(&config, &format!("edge proxy of {}", host.name))
    }

    fn edge_listeners(&self) -> Vec<Listener> {
        let t = self.topology;
        let to_pool = || vec![Route::to_pool("web")];
        let mut http = Listener {
            name: "www".into(),
            bind: SocketAddr::new(t.vip.into(), t.ports.http),
            trust_forwarded: false,
            redirect_https_port: None,
            compress: false,
            tls: None,
            routes: to_pool(),
        };
        let Some(certificate) = self.certificate else { return vec![http] };
        if t.tls.redirect_http || self.https_only {
            http.redirect_https_port = Some(t.ports.https);
        }
        let hsts = match (self.https_only, t.tls.hsts_max_age) {
            (_, age) if age > 0 => Some(age),
            (true, _) => Some(31_536_000),
            (false, _) => None,
        };
        let https = Listener {
            name: "www-tls".into(),
            bind: SocketAddr::new(t.vip.into(), t.ports.https),
            trust_forwarded: false,
            redirect_https_port: None,
            compress: false,
            tls: Some(ListenerTls {
                hsts_max_age: hsts,
                certificates: vec![CertificatePair { cert: certificate.cert.clone(), key: certificate.key.clone() }],
            }),
            routes: to_pool(),
        };
        vec![http, https]
    }

    /// The pair's settings for one of two edge hosts: the first listed is preferred.
    fn edge_pair(&self, host: &Host) -> Option<HaSection> {
        let t = self.topology;
        let edges: Vec<&&Host> = self.hosts_with(Component::Edge).collect();
        if edges.len() < 2 {
            return None;
        }
        let index = edges.iter().position(|h| h.name == host.name)?;
        Some(HaSection {
            id: index as u32 + 1,
            priority: 200 - 100 * index.min(1) as u8,
            bind: SocketAddr::new(host.address.into(), t.ports.ha),
            peers: edges
                .iter()
                .filter(|h| h.name != host.name)
                .map(|h| SocketAddr::new(h.address.into(), t.ports.ha))
                .collect(),
            vip: t.vip,
            key: self.secrets.ha_key.clone(),
            advert_interval_ms: 50,
            preempt: true,
            preempt_delay_ms: 1000,
            // The servers are the witnesses: an edge that cannot see most of them steps down.
            witnesses: self
                .hosts_with(Component::Web)
                .map(|h| SocketAddr::new(h.address.into(), t.ports.http))
                .collect(),
        })
    }

    fn web(&self, host: &Host) -> String {
        let t = self.topology;
        let config = ProxyConfig {
            name: host.name.clone(),
            admin: Admin { bind: SocketAddr::new(host.address.into(), t.ports.admin) },
            access_log: self.access_log(host, Component::Web),
            ha: None,
            listeners: vec![Listener {
                name: "site".into(),
                bind: SocketAddr::new(host.address.into(), t.ports.http),
                // The edge in front sets X-Forwarded-For/-Proto; the web server keeps them.
                trust_forwarded: self.hosts_with(Component::Edge).next().is_some(),
                redirect_https_port: None,
                compress: true,
                // HTTPS from the edge, with the site's certificate (it names every host too).
                tls: self.servers_ca().zip(self.certificate).map(|(_, certificate)| ListenerTls {
                    hsts_max_age: None,
                    certificates: vec![CertificatePair {
                        cert: certificate.cert.clone(),
                        key: certificate.key.clone(),
                    }],
                }),
                routes: vec![
                    Route {
                        prefix: "/static/".into(),
                        pool: None,
                        static_root: Some(t.static_root.clone()),
                        cache_control: Some("public, max-age=3600".into()),
                        precompressed: Some(true),
                    },
                    Route::to_pool("app"),
                ],
            }],
            pools: [(
                "app".to_string(),
                Pool {
                    balance: "roundrobin".into(),
                    served_by_header: false,
                    passive: None,
                    // The app is local and the only server: notice quickly that it is back.
                    health: Some(HealthCheck { interval_ms: 500, rise: 1, fall: 2, ..HealthCheck::default() }),
                    tls: None,
                    servers: vec![Server {
                        name: "app".into(),
                        address: SocketAddr::new(host.address.into(), t.ports.app),
                    }],
                },
            )]
            .into(),
        };
        to_toml(&config, &format!("web server of {}", host.name))
    }

    fn access_log(&self, host: &Host, component: Component) -> AccessLog {
        AccessLog {
            path: self.state_dir.join("logs").join(format!("{}-{component}-access.log", host.name)),
            format: "combined".into(),
        }
    }

    /// The zone: the apex and the site's name lead to the VIP (checked on the port clients
    /// use), and every host of the profile has its own record.
    fn dns(&self, host: &Host) -> String {
        let t = self.topology;
        let site_port = if self.certificate.is_some() { t.ports.https } else { t.ports.http };
        let label = t.site_name.strip_suffix(&format!(".{}", t.domain)).unwrap_or("www").to_string();
        let mut records = vec![
            DnsRecord { name: "@".into(), addresses: vec![t.vip], check_port: None },
            DnsRecord { name: label, addresses: vec![t.vip], check_port: Some(site_port) },
        ];
        records.extend(self.hosts.iter().map(|h| DnsRecord {
            name: h.name.clone(),
            addresses: vec![h.address],
            check_port: None,
        }));
        let config = DnsConfig {
            name: host.name.clone(),
            listen: SocketAddr::new(host.address.into(), t.ports.dns),
            zone: t.domain.clone(),
            ttl: 30,
            nameserver: host.name.clone(),
            records,
        };
        to_toml(&config, &format!("DNS server of {}", host.name))
    }

    fn db_nodes(&self) -> Vec<Node> {
        self.hosts_with(Component::Db)
            .map(|h| Node { name: h.name.clone(), address: SocketAddr::new(h.address.into(), self.topology.ports.db) })
            .collect()
    }

    fn app(&self, host: &Host) -> String {
        let t = self.topology;
        let config = AppConfig {
            name: host.name.clone(),
            listen: SocketAddr::new(host.address.into(), t.ports.app),
            database: match self.embedded_database {
                Some(file) => AppDatabase::Embedded(format!("sqlite://{}", file.display())),
                None => AppDatabase::Cluster(AppCluster {
                    name: t.db_name.clone(),
                    user: APP_DB_USER.into(),
                    password: self.secrets.db_app_password.clone(),
                    local: host.name.clone(),
                    nodes: self.db_nodes(),
                }),
            },
            admin: AppAdmin { email: shop_admin_email(&t.domain), password: self.secrets.shop_admin_password.clone() },
        };
        to_toml(&config, &format!("application server of {}", host.name))
    }

    fn db(&self, host: &Host) -> String {
        let t = self.topology;
        let server_id = self.hosts.iter().position(|h| h.name == host.name).unwrap_or(0) as u32 + 1;
        let primary = self.hosts.iter().find(|h| h.name == t.db_primary).map(|h| h.address);
        let is_primary = host.name == t.db_primary;
        let config = DbConfig {
            name: host.name.clone(),
            server_id,
            datadir: self.state_dir.join("db").join(&host.name),
            listen: SocketAddr::new(host.address.into(), t.ports.db),
            admin_listen: SocketAddr::new(host.address.into(), t.ports.db_admin),
            role: if is_primary { "primary" } else { "replica" }.into(),
            primary: match is_primary {
                true => None,
                false => primary.map(|a: Ipv4Addr| SocketAddr::new(a.into(), t.ports.db)),
            },
            peers: self.db_nodes().into_iter().map(|n| n.address).collect(),
            managers: self
                .hosts_with(Component::Db)
                .map(|h| SocketAddr::new(h.address.into(), t.ports.db_admin))
                .collect(),
            accounts: DbAccounts {
                admin_password: self.secrets.db_admin_password.clone(),
                repl_password: self.secrets.db_repl_password.clone(),
                app_user: APP_DB_USER.into(),
                app_password: self.secrets.db_app_password.clone(),
                app_database: t.db_name.clone(),
            },
        };
        to_toml(&config, &format!("database of {}", host.name))
    }
}

fn to_toml<T: Serialize>(value: &T, what: &str) -> String {
    let body = toml::to_string(value).unwrap_or_else(|e| format!("# rendering failed: {e}\n"));
    format!("# The {what}, rendered by `webstack up` from the topology; edit webstack.toml, not this file.\n\n{body}")
}

#[derive(Serialize)]
struct ProxyConfig {
    name: String,
    admin: Admin,
    access_log: AccessLog,
    #[serde(skip_serializing_if = "Option::is_none")]
    ha: Option<HaSection>,
    listeners: Vec<Listener>,
    pools: std::collections::BTreeMap<String, Pool>,
}

#[derive(Serialize)]
struct HaSection {
    id: u32,
    priority: u8,
    bind: SocketAddr,
    peers: Vec<SocketAddr>,
    vip: Ipv4Addr,
    key: String,
    advert_interval_ms: u64,
    preempt: bool,
    preempt_delay_ms: u64,
    witnesses: Vec<SocketAddr>,
}

#[derive(Serialize)]
struct AccessLog {
    path: PathBuf,
    format: String,
}

#[derive(Serialize)]
struct Passive {
    failures: u32,
}

#[derive(Serialize)]
struct Admin {
    bind: SocketAddr,
}

#[derive(Serialize)]
struct Listener {
    name: String,
    bind: SocketAddr,
    trust_forwarded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_https_port: Option<u16>,
    compress: bool,
    // Tables come after plain keys in TOML: keep `tls` and `routes` last.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<ListenerTls>,
    routes: Vec<Route>,
}

#[derive(Serialize)]
struct ListenerTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    hsts_max_age: Option<u64>,
    certificates: Vec<CertificatePair>,
}

#[derive(Serialize)]
struct CertificatePair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Serialize)]
struct Route {
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    static_root: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precompressed: Option<bool>,
}

impl Route {
    fn to_pool(pool: &str) -> Route {
        Route {
            prefix: "/".into(),
            pool: Some(pool.into()),
            static_root: None,
            cache_control: None,
            precompressed: None,
        }
    }
}

#[derive(Serialize)]
struct Pool {
    balance: String,
    served_by_header: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    passive: Option<Passive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<PoolTls>,
    servers: Vec<Server>,
}

#[derive(Serialize)]
struct PoolTls {
    ca: PathBuf,
    server_name: String,
}

#[derive(Serialize)]
struct Server {
    name: String,
    address: SocketAddr,
}

#[derive(Serialize)]
struct AppConfig {
    name: String,
    listen: SocketAddr,
    database: AppDatabase,
    admin: AppAdmin,
}

/// MariaDB nodes (a table), or an embedded SQLite file (`"sqlite://PATH"`).
#[derive(Serialize)]
#[serde(untagged)]
enum AppDatabase {
    Embedded(String),
    Cluster(AppCluster),
}

#[derive(Serialize)]
struct AppAdmin {
    email: String,
    password: String,
}

/// The shop's admin account: `admin@` the site's domain.
pub fn shop_admin_email(domain: &str) -> String {
    format!("admin@{domain}")
}

#[derive(Serialize)]
struct AppCluster {
    name: String,
    user: String,
    password: String,
    local: String,
    nodes: Vec<Node>,
}

#[derive(Serialize)]
struct Node {
    name: String,
    address: SocketAddr,
}

#[derive(Serialize)]
struct DbConfig {
    name: String,
    server_id: u32,
    datadir: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary: Option<SocketAddr>,
    /// Every database node's SQL address, this one's included.
    peers: Vec<SocketAddr>,
    /// Every node's admin listener, in the same order: where the failover managers talk.
    managers: Vec<SocketAddr>,
    accounts: DbAccounts,
}

#[derive(Serialize)]
struct DbAccounts {
    admin_password: String,
    repl_password: String,
    app_user: String,
    app_password: String,
    app_database: String,
}

#[derive(Serialize)]
struct DnsConfig {
    name: String,
    listen: SocketAddr,
    zone: String,
    ttl: u32,
    nameserver: String,
    records: Vec<DnsRecord>,
}

#[derive(Serialize)]
struct DnsRecord {
    name: String,
    addresses: Vec<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_port: Option<u16>,
}
