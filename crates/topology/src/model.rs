//! `webstack.toml` as written (the `Raw*` serde types) and as validated ([`Topology`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use webstack_config::{ConfigError, ConfigErrors, Source};

use crate::subnet::Subnet;

/// What runs on a host. The names are the ones the CLI and `status` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// The proxy in its load-balancer role (HAProxy's job), on load-balancer hosts.
    Edge,
    /// The proxy in its web-server role (nginx's job): static files, reverse proxy to the app.
    Web,
    /// The application server, foobar.com.
    App,
    /// A MariaDB instance.
    Db,
    /// The authoritative DNS server of the site's zone.
    Dns,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Edge => "edge",
            Component::Web => "web",
            Component::App => "app",
            Component::Db => "db",
            Component::Dns => "dns",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    profile: String,
    site: RawSite,
    network: RawNetwork,
    ports: Ports,
    #[serde(default)]
    edge: RawEdge,
    #[serde(default)]
    tls: TlsSettings,
    web: RawWeb,
    database: RawDatabase,
    hosts: Vec<RawHost>,
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    domain: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    subnet: String,
    vip: Ipv4Addr,
}

/// The ports every host uses; hosts differ by address, not port.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    /// The load-balancer pair's adverts (UDP).
    pub ha: u16,
    /// DNS, UDP and TCP.
    pub dns: u16,
    pub admin: u16,
    pub app: u16,
    pub db: u16,
    pub db_admin: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    #[serde(default = "default_balance")]
    balance: String,
    #[serde(default)]
    health: HealthCheck,
}

impl Default for RawEdge {
    fn default() -> Self {
        RawEdge { balance: default_balance(), health: HealthCheck::default() }
    }
}

fn default_balance() -> String {
    "roundrobin".into()
}

/// How the edge checks the web servers (HAProxy's `check inter rise fall`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck { path: "/healthz".into(), interval_ms: 1000, timeout_ms: 1000, rise: 2, fall: 3 }
    }
}

/// HTTPS on the edge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The site's chain and key; both absent: a local CA's certificate is made.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub redirect_http: bool,
    #[serde(default)]
    pub hsts_max_age: u64,
    /// HTTPS from the edge to the web servers too (default on), when the stack made the
    /// certificate: its local CA is what the edge verifies them against.
    pub to_servers: Option<bool>,
}

impl TlsSettings {
    pub fn to_servers(&self) -> bool {
        self.to_servers.unwrap_or(true)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    static_root: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    primary: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: Ipv4Addr,
    components: Vec<Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    hosts: Vec<String>,
    /// Plain HTTP redirects to HTTPS and browsers are told to stay there (HSTS, one year).
    #[serde(default)]
    https_only: bool,
    /// `sqlite://PATH`: the app keeps the shop in an embedded SQLite file (relative to the
    /// state dir) and no MariaDB runs.
    database: Option<String>,
}

/// A validated `webstack.toml`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub path: PathBuf,
    pub default_profile: String,
    pub domain: String,
    pub site_name: String,
    pub subnet: Subnet,
    pub vip: Ipv4Addr,
    pub ports: Ports,
    pub edge_balance: String,
    pub edge_health: HealthCheck,
    pub tls: TlsSettings,
    /// Absolute path of the code base's static files.
    pub static_root: PathBuf,
    pub db_primary: String,
    pub db_name: String,
    pub hosts: Vec<Host>,
    pub profiles: BTreeMap<String, Vec<String>>,
    /// Profiles that send HTTP to HTTPS and set HSTS.
    pub https_only: BTreeSet<String>,
    /// Profiles whose app keeps the shop in an embedded SQLite file: the file, relative to
    /// the state dir unless absolute.
    pub embedded_databases: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: Ipv4Addr,
    pub components: Vec<Component>,
}

impl Topology {
    /// Reads and validates a topology file, reporting every problem with file, line and field.
    pub fn load(path: impl AsRef<Path>) -> Result<Topology, ConfigErrors> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(source: &Source) -> Result<Topology, ConfigErrors> {
        let raw: RawTopology = source.parse()?;
        let base_dir = source.path().parent().map(Path::to_path_buf).unwrap_or_default();
        validate(raw, source, &base_dir)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Moves every address of the stack into `subnet`, keeping host parts.
    pub fn rebase(&mut self, subnet: Subnet) {
        self.vip = self.subnet.rebase(self.vip, &subnet);
        for host in &mut self.hosts {
            host.address = self.subnet.rebase(host.address, &subnet);
        }
        self.subnet = subnet;
    }
}

fn validate(raw: RawTopology, src: &Source, base_dir: &Path) -> Result<Topology, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut err = |field: &str, msg: String| errors.push(src.error_at(field, msg));

    if !is_domain(&raw.site.domain) {
        err("site.domain", format!("`{}` is not a domain name like foobar.com", raw.site.domain));
    }
    if !is_domain(&raw.site.name) {
        err("site.name", format!("`{}` is not a host name like www.foobar.com", raw.site.name));
    } else if !raw.site.name.ends_with(&format!(".{}", raw.site.domain)) && raw.site.name != raw.site.domain {
        err("site.name", format!("`{}` is not in the domain {}", raw.site.name, raw.site.domain));
    }

    let subnet = match raw.network.subnet.parse::<Subnet>() {
        Ok(s) => Some(s),
        Err(e) => {
            err("network.subnet", e);
            None
        }
    };
    let in_subnet = |a: Ipv4Addr| subnet.is_none_or(|s| s.contains(a));
    if !in_subnet(raw.network.vip) {
        err("network.vip", format!("{} is outside network.subnet {}", raw.network.vip, raw.network.subnet));
    }

    let ports = [
        ("http", raw.ports.http),
        ("https", raw.ports.https),
        ("ha", raw.ports.ha),
        ("dns", raw.ports.dns),
        ("admin", raw.ports.admin),
        ("app", raw.ports.app),
        ("db", raw.ports.db),
        ("db_admin", raw.ports.db_admin),
    ];
    for (i, (name, port)) in ports.iter().enumerate() {
        if *port == 0 {
            err(&format!("ports.{name}"), "port 0 is not a port a host can listen on".into());
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            err(
                &format!("ports.{name}"),
                format!("port {port} is also ports.{other}; components of one host need distinct ports"),
            );
        }
    }

    if !is_balance(&raw.edge.balance) {
        err(
            "edge.balance",
            format!(
                "unknown balance `{}`; expected roundrobin, leastconn, random, source, uri, hdr(NAME) or cookie(NAME)",
                raw.edge.balance
            ),
        );
    }
    check_health(&raw.edge.health, "edge.health", &mut err);

    if raw.tls.cert.is_some() != raw.tls.key.is_some() {
        err("tls", "give both `cert` and `key`, or neither (then a local CA's certificate is made)".into());
    }
    let mut tls = raw.tls.clone();
    tls.cert = tls.cert.map(|c| base_dir.join(c));
    tls.key = tls.key.map(|k| base_dir.join(k));

    let static_root = base_dir.join(&raw.web.static_root);
    if !static_root.is_dir() {
        err("web.static_root", format!("{} is not a directory", static_root.display()));
    }

    let mut names = BTreeSet::new();
    let mut addresses = BTreeMap::new();
    for (i, host) in raw.hosts.iter().enumerate() {
        if !is_host_name(&host.name) {
            err(
                &format!("hosts[{i}].name"),
                format!("`{}` is not a host name (lowercase letters, digits, `-`)", host.name),
            );
        }
        if !names.insert(host.name.as_str()) {
            err(&format!("hosts[{i}].name"), format!("host `{}` is defined twice", host.name));
        }
        if !in_subnet(host.address) {
            err(
                &format!("hosts[{i}].address"),
                format!("{} is outside network.subnet {}", host.address, raw.network.subnet),
            );
        }
        if host.address == raw.network.vip {
            err(
                &format!("hosts[{i}].address"),
                format!("{} is the VIP (network.vip); a host needs its own address", host.address),
            );
        }
        if let Some(other) = addresses.insert(host.address, host.name.as_str()) {
            err(&format!("hosts[{i}].address"), format!("{} is also the address of `{other}`", host.address));
        }
        let mut seen = BTreeSet::new();
        for c in &host.components {
            if !seen.insert(*c) {
                err(&format!("hosts[{i}].components"), format!("`{c}` is listed twice"));
            }
        }
        if host.components.contains(&Component::Edge) && host.components.contains(&Component::Web) {
            err(
                &format!("hosts[{i}].components"),
                "`edge` and `web` both use the http port; put them on different hosts".into(),
            );
        }
        if host.components.contains(&Component::App) && !host.components.contains(&Component::Db) {
            err(&format!("hosts[{i}].components"), "`app` reads from the database on its own host; add `db`".into());
        }
        if host.components.contains(&Component::Web) && !host.components.contains(&Component::App) {
            err(&format!("hosts[{i}].components"), "`web` forwards to the app on its own host; add `app`".into());
        }
    }

    let host_named = |name: &str| raw.hosts.iter().find(|h| h.name == name);
    if host_named(&raw.database.primary).is_none_or(|h| !h.components.contains(&Component::Db)) {
        err("database.primary", format!("`{}` is not a host with a `db` component", raw.database.primary));
    }
    if !is_identifier(&raw.database.name) {
        err("database.name", format!("`{}` is not a database name (letters, digits, `_`)", raw.database.name));
    }

    if !raw.profiles.contains_key(&raw.profile) {
        err("profile", format!("no profile `{}` in [profiles]; defined: {}", raw.profile, list(raw.profiles.keys())));
    }
    for (name, profile) in &raw.profiles {
        let field = format!("profiles.{name}.hosts");
        let mut members = Vec::new();
        for (i, h) in profile.hosts.iter().enumerate() {
            match host_named(h) {
                Some(host) => members.push(host),
                None => err(&format!("{field}[{i}]"), format!("no host `{h}` in [[hosts]]")),
            }
        }
        let runs = |c: Component| members.iter().any(|h| h.components.contains(&c));
        if !runs(Component::Web) {
            err(&field, "a profile needs at least one host with `web`".into());
        }
        if runs(Component::Db) && profile.database.is_none() && !profile.hosts.contains(&raw.database.primary) {
            err(&field, format!("database.primary `{}` is not in this profile", raw.database.primary));
        }
        if members.iter().filter(|h| h.components.contains(&Component::Edge)).count() > 2 {
            err(&field, "at most two `edge` hosts per profile: a MASTER and its BACKUP".into());
        }
        if let Some(url) = &profile.database {
            let field = format!("profiles.{name}.database");
            match webstack_config::sqlite_file(url) {
                Err(e) => err(&field, e),
                Ok(_) => {
                    let apps = members.iter().filter(|h| h.components.contains(&Component::App)).count();
                    if apps != 1 {
                        err(
                            &field,
                            format!(
                                "an embedded SQLite database serves one app server, and this profile has {apps}; \
                                 leave `database` out to run MariaDB"
                            ),
                        );
                    }
                }
            }
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let Some(subnet) = subnet else { unreachable!("a bad subnet was reported above") };
    Ok(Topology {
        path: src.path().to_path_buf(),
        default_profile: raw.profile,
        domain: raw.site.domain,
        site_name: raw.site.name,
        subnet,
        vip: raw.network.vip,
        ports: raw.ports,
        edge_balance: raw.edge.balance,
        edge_health: raw.edge.health,
        tls,
        static_root: std::path::absolute(&static_root).unwrap_or(static_root),
        db_primary: raw.database.primary,
        db_name: raw.database.name,
        hosts: raw
            .hosts
            .into_iter()
            .map(|h| Host { name: h.name, address: h.address, components: h.components })
            .collect(),
        https_only: raw.profiles.iter().filter(|(_, p)| p.https_only).map(|(k, _)| k.clone()).collect(),
        embedded_databases: raw
            .profiles
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), webstack_config::sqlite_file(p.database.as_deref()?).ok()?)))
            .collect(),
        profiles: raw.profiles.into_iter().map(|(k, v)| (k, v.hosts)).collect(),
    })
}

fn check_health(h: &HealthCheck, field: &str, err: &mut impl FnMut(&str, String)) {
    if !h.path.starts_with('/') {
        err(&format!("{field}.path"), format!("`{}` must start with /", h.path));
    }
    // The proxy refuses more than a week (a deadline past that overflows the clock); say so here.
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    for (key, value) in [("interval_ms", h.interval_ms), ("timeout_ms", h.timeout_ms)] {
        if value == 0 {
            err(&format!("{field}.{key}"), "must be more than 0".into());
        } else if value > WEEK_MS {
            err(&format!("{field}.{key}"), format!("{value} is more than a week ({WEEK_MS} ms)"));
        }
    }
    if h.rise == 0 {
        err(&format!("{field}.rise"), "must be at least 1".into());
    }
    if h.fall == 0 {
        err(&format!("{field}.fall"), "must be at least 1".into());
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// The edge proxy's balancing algorithms, as its config spells them.
fn is_balance(s: &str) -> bool {
    let named = |prefix: &str| {
        s.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    matches!(s, "roundrobin" | "leastconn" | "random" | "source" | "uri") || named("hdr(") || named("cookie(")
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.contains('.') && s.split('.').all(is_host_name)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_TOPOLOGY: &str = include_str!("../../../webstack.toml");

    fn load(text: &str) -> Result<Topology, ConfigErrors> {
        // The repo's file names its static root relative to the repo root.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../webstack.toml");
        Topology::from_source(&Source::from_text(path, text))
    }

    fn errors(text: &str) -> Vec<String> {
        load(text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.field, e.message))
            .collect()
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
    }

    #[test]
    fn the_repo_topology_is_valid() {
        let t = load(REPO_TOPOLOGY).unwrap();
        assert_eq!(t.hosts.len(), 6);
        assert_eq!(t.profiles["distributed"].len(), 4);
        assert_eq!(t.profiles["secured"].len(), 6);
        assert!(t.https_only.contains("secured"));
        assert_eq!(t.default_profile, "secured");
    }

    #[test]
    fn a_duplicate_address_names_its_line_and_field() {
        let text = REPO_TOPOLOGY.replace("address = \"127.0.2.2\"", "address = \"127.0.2.1\"");
        let errs = errors(&text);
        let line = line_of(&text, "name = \"server-02\"") + 1;
        assert_eq!(errs, vec![format!("{line}:hosts[3].address: 127.0.2.1 is also the address of `server-01`")]);
    }

    #[test]
    fn an_address_outside_the_subnet_is_reported() {
        let text = REPO_TOPOLOGY.replace("address = \"127.0.2.3\"", "address = \"127.9.2.3\"");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{}:hosts[4].address: 127.9.2.3 is outside", line_of(&text, "127.9.2.3"))),
            "{errs:?}"
        );
    }

    #[test]
    fn an_unknown_component_is_a_parse_error_with_line() {
        let text = REPO_TOPOLOGY.replacen("components = [\"edge\"]", "components = [\"egde\"]", 1);
        let e = load(&text).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, Some(line_of(&text, "egde")));
        assert_eq!(e.0[0].field, "hosts[0].components[0]");
        assert!(e.0[0].message.contains("unknown variant `egde`"), "{}", e.0[0].message);
    }

    #[test]
    fn an_unknown_field_is_rejected() {
        let text = REPO_TOPOLOGY.replace("[database]\n", "[database]\nprimay = \"x\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.0[0].field, "database.primay");
        assert_eq!(e.0[0].line, Some(line_of(&text, "primay")));
    }

    #[test]
    fn profile_errors_are_all_reported() {
        let text = REPO_TOPOLOGY
            .replace("hosts = [\"lb-01\", \"server-01\"", "hosts = [\"lb-01\", \"server-09\"")
            .replace("profile = \"secured\"", "profile = \"tertiary\"");
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.contains("profile: no profile `tertiary`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("profiles.distributed.hosts[1]: no host `server-09`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("database.primary `server-01` is not in this profile")), "{errs:?}");
    }

    #[test]
    fn an_embedded_database_profile_runs_no_mariadb() {
        let t = load(REPO_TOPOLOGY).unwrap();
        assert_eq!(t.embedded_databases.get("single-sqlite"), Some(&PathBuf::from("foobar.db")));
        let secrets = crate::Secrets {
            db_admin_password: "a".into(),
            db_app_password: "b".into(),
            db_repl_password: "c".into(),
            ha_key: String::new(),
            shop_admin_password: "d".into(),
        };
        let plan = t.plan("single-sqlite", Path::new("/var/lib/webstack"), &secrets, None).unwrap();
        let ran: Vec<Component> = plan.components().map(|(_, c)| c.component).collect();
        assert_eq!(ran, [Component::Web, Component::App]);
        let app = plan.components().find(|(_, c)| c.component == Component::App).unwrap().1;
        assert!(app.config.contains("database = \"sqlite:///var/lib/webstack/foobar.db\""), "{}", app.config);
        let single = t.plan("single", Path::new("/var/lib/webstack"), &secrets, None).unwrap();
        assert!(single.components().any(|(_, c)| c.component == Component::Db));
    }

    #[test]
    fn the_edge_speaks_https_to_the_web_servers_when_the_stack_made_the_certificate() {
        let secrets = crate::Secrets {
            db_admin_password: "a".into(),
            db_app_password: "b".into(),
            db_repl_password: "c".into(),
            ha_key: "k".repeat(32),
            shop_admin_password: "d".into(),
        };
        let state = Path::new("/var/lib/webstack");
        let made = crate::SiteCertificate {
            cert: state.join("certs/site.pem"),
            key: state.join("certs/site-key.pem"),
            ca: Some(state.join("certs/ca.pem")),
        };
        let config_of = |t: &Topology, certificate: &crate::SiteCertificate, host: &str, component: Component| {
            let plan = t.plan("secured", state, &secrets, Some(certificate)).unwrap();
            let (_, c) = plan.components().find(|(h, c)| h.name == host && c.component == component).unwrap();
            c.config.clone()
        };
        let t = load(REPO_TOPOLOGY).unwrap();
        let edge = config_of(&t, &made, "lb-01", Component::Edge);
        assert!(
            edge.contains("[pools.web.tls]\nca = \"/var/lib/webstack/certs/ca.pem\"\nserver_name = \"www.foobar.com\""),
            "{edge}"
        );
        let web = config_of(&t, &made, "server-01", Component::Web);
        assert!(
            web.contains("[[listeners.tls.certificates]]")
                && web.contains("cert = \"/var/lib/webstack/certs/site.pem\""),
            "{web}"
        );

        // The site's own certificate (no local CA to verify the servers with), or told not to:
        // plain HTTP between them, as before.
        let own = crate::SiteCertificate { ca: None, ..made.clone() };
        assert!(!config_of(&t, &own, "lb-01", Component::Edge).contains("[pools.web.tls]"));
        assert!(!config_of(&t, &own, "server-01", Component::Web).contains("[listeners.tls"));
        let off = load(&REPO_TOPOLOGY.replace("to_servers = true", "to_servers = false")).unwrap();
        assert!(!config_of(&off, &made, "lb-01", Component::Edge).contains("[pools.web.tls]"));
        assert!(!config_of(&off, &made, "server-01", Component::Web).contains("[listeners.tls"));
    }

    #[test]
    fn a_bad_embedded_database_is_reported() {
        let text = REPO_TOPOLOGY.replace("database = \"sqlite://foobar.db\"", "database = \"sqlite::memory:\"");
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains("profiles.single-sqlite.database") && e.contains("in memory")),
            "{errs:?}"
        );
        let text = REPO_TOPOLOGY
            .replace("hosts = [\"server-01\"]\ndatabase", "hosts = [\"server-01\", \"server-02\"]\ndatabase");
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.contains("serves one app server, and this profile has 2")), "{errs:?}");
    }

    #[test]
    fn colliding_ports_and_bad_health_are_reported() {
        let text = REPO_TOPOLOGY
            .replace("app = 9000", "app = 8404")
            .replace("rise = 2", "rise = 0")
            .replace("timeout_ms = 1000", "timeout_ms = 18446744073709551615");
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.contains("ports.app: port 8404 is also ports.admin")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("edge.health.rise: must be at least 1")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("edge.health.timeout_ms: 18446744073709551615 is more than a week")),
            "{errs:?}"
        );
    }

    #[test]
    fn rebase_moves_every_address() {
        let mut t = load(REPO_TOPOLOGY).unwrap();
        t.rebase("127.42.0.0/16".parse().unwrap());
        assert_eq!(t.vip, Ipv4Addr::new(127, 42, 1, 10));
        assert_eq!(t.host("server-02").unwrap().address, Ipv4Addr::new(127, 42, 2, 2));
    }
}
