//! `webstack dns` answers as an authoritative server should, checked with dig (Debian's
//! bind9-dnsutils) over UDP and TCP; and a proxy with `[resolvers]` follows a server's name as
//! those answers change.

mod support;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::Stop;

fn dig(args: &[&str]) -> String {
    dig_at("@127.208.4.1", args)
}

fn dig_at(server: &str, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([server, "-p", "5353", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (Debian's bind9-dnsutils; scripts/setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `webstack COMPONENT --config CONFIG`, stopped when the test lets go of it.
fn start(component: &str, config: &std::path::Path) -> Stop {
    Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args([component, "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn short(args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(&all).lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

#[test]
fn dig_gets_authoritative_answers_nxdomain_nodata_and_health_following_records() {
    // Two addresses for www: one with a listener on the checked port, one without.
    let healthy = std::net::TcpListener::bind("127.208.1.10:8443").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dns.toml");
    std::fs::write(
        &config,
        "name = \"ns-01\"\nlisten = \"127.208.4.1:5353\"\nzone = \"foobar.com\"\nttl = 30\nnameserver = \"ns-01\"\n\
         [[records]]\nname = \"@\"\naddresses = [\"127.208.1.10\"]\n\
         [[records]]\nname = \"www\"\naddresses = [\"127.208.1.10\", \"127.208.1.11\"]\ncheck_port = 8443\n\
         [[records]]\nname = \"ns-01\"\naddresses = [\"127.208.4.1\"]\n\
         [[records]]\nname = \"server-01\"\naddresses = [\"127.208.2.1\"]\n",
    )
    .unwrap();
    let _dns = start("dns", &config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while short(&["server-01.foobar.com"]).is_empty() {
        assert!(Instant::now() < deadline, "no answer from webstack dns");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(short(&["server-01.foobar.com"]), ["127.208.2.1"]);
    assert_eq!(short(&["foobar.com"]), ["127.208.1.10"]);
    assert_eq!(short(&["+tcp", "server-01.foobar.com"]), ["127.208.2.1"], "over TCP too");
    assert_eq!(short(&["foobar.com", "NS"]), ["ns-01.foobar.com."]);
    assert!(short(&["foobar.com", "SOA"])[0].starts_with("ns-01.foobar.com. hostmaster.foobar.com. 1 "));

    let full = dig(&["www.foobar.com"]);
    assert!(full.contains("flags: qr aa"), "authoritative: {full}");

    let nx = dig(&["nope.foobar.com"]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains("AUTHORITY: 1"), "{nx}");
    let nodata = dig(&["www.foobar.com", "AAAA"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"),
        "{nodata}"
    );
    let other = dig(&["example.org"]);
    assert!(other.contains("status: REFUSED"), "{other}");

    // The address without a listener is withdrawn once its check fails; the other stays.
    let deadline = Instant::now() + Duration::from_secs(5);
    while short(&["www.foobar.com"]) != ["127.208.1.10"] {
        assert!(Instant::now() < deadline, "www kept its dead address: {:?}", short(&["www.foobar.com"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    // With no healthy address left, every address is given rather than none.
    drop(healthy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while short(&["www.foobar.com"]).len() != 2 {
        assert!(Instant::now() < deadline, "www lost all its addresses");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `webstack proxy` answering every request with `body` on `bind`: a real web server for
/// the load balancer to find by name.
fn respond_server(dir: &std::path::Path, name: &str, bind: &str, body: &str) -> Stop {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\n[[listeners]]\nname = \"www\"\nbind = \"{bind}\"\n\
             [[listeners.routes]]\nprefix = \"/\"\nrespond = {{ body = \"{body}\" }}\n"
        ),
    )
    .unwrap();
    start("proxy", &config)
}

#[test]
fn a_load_balancer_with_resolvers_follows_a_server_name_that_dns_moves() {
    let dir = tempfile::tempdir().unwrap();
    let site: std::net::SocketAddr = "127.208.7.10:8080".parse().unwrap();
    let admin: std::net::SocketAddr = "127.208.7.10:8404".parse().unwrap();
    // `web` has two addresses, each given out while its port 8080 accepts (the DNS's checks).
    let mut web_a = Some(respond_server(dir.path(), "web-a", "127.208.7.1:8080", "A"));
    let dns_config = dir.path().join("dns.toml");
    let zone =
        "name = \"ns-01\"\nlisten = \"127.208.7.53:5353\"\nzone = \"foobar.com\"\nttl = 30\nnameserver = \"ns-01\"\n\
         [[records]]\nname = \"ns-01\"\naddresses = [\"127.208.7.53\"]\n";
    let web_record = "[[records]]\nname = \"web\"\naddresses = [\"127.208.7.1\", \"127.208.7.2\"]\ncheck_port = 8080\n";
    let dns_serving = |records: &str| {
        std::fs::write(&dns_config, format!("{zone}{records}")).unwrap();
        start("dns", &dns_config)
    };
    let mut dns = dns_serving(web_record);
    let web = || {
        let mut lines: Vec<String> =
            dig_at("@127.208.7.53", &["+short", "web.foobar.com"]).lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    support::wait_for("DNS to give web only its listening address", Duration::from_secs(10), || {
        web() == ["127.208.7.1"]
    });

    let lb_config = dir.path().join("lb.toml");
    std::fs::write(
        &lb_config,
        format!(
            "name = \"lb\"\n[admin]\nbind = \"{admin}\"\n[resolvers]\nnameservers = [\"127.208.7.53:5353\"]\n\
             hold_valid_ms = 200\ntimeout_ms = 500\n\
             [[listeners]]\nname = \"www\"\nbind = \"{site}\"\n[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
             [pools.web]\nconnect_timeout_ms = 500\n[[pools.web.servers]]\nname = \"web\"\naddress = \"web.foobar.com:8080\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("lb.log");
    let _lb = Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args(["proxy", "--config"])
            .arg(&lb_config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let body = || support::get(site, "/").ok().filter(|r| r.status == 200).map(|r| r.body);
    support::wait_for("the load balancer to serve A", Duration::from_secs(10), || body().as_deref() == Some("A"));

    // The server behind the name moves: B comes up, A goes away; DNS follows its checks, and
    // the load balancer follows DNS without a reload.
    let _web_b = respond_server(dir.path(), "web-b", "127.208.7.2:8080", "B");
    web_a.take();
    support::wait_for("DNS to give web's new address", Duration::from_secs(10), || web() == ["127.208.7.2"]);
    support::wait_for("the load balancer to serve B", Duration::from_secs(10), || body().as_deref() == Some("B"));
    let servers = support::get(admin, "/api/servers").unwrap().body;
    assert!(servers.contains("\"127.208.7.2:8080\""), "the admin API shows the address in use: {servers}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("server address changed (DNS)") && logged.contains("127.208.7.2:8080"),
        "the log says the server moved: {logged}"
    );
    for _ in 0..20 {
        assert_eq!(body().as_deref(), Some("B"), "every request goes to the address DNS gives");
    }

    // DNS down: no answer is no reason to take a server out; its last address stands.
    drop(dns);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(body().as_deref(), Some("B"), "served through five unanswered rounds");

    // The name is gone (NXDOMAIN): the server takes no requests, and the stats say why.
    dns = dns_serving("");
    let status = || support::get(site, "/").map(|r| r.status).unwrap_or(0);
    support::wait_for("a 503 once DNS says the name is gone", Duration::from_secs(10), || status() == 503);
    let servers = support::get(admin, "/api/servers").unwrap().body;
    assert!(servers.contains("DNS: web.foobar.com: no such name"), "{servers}");

    // The name is back: so is the server, without a reload.
    drop(dns);
    let _dns = dns_serving(web_record);
    support::wait_for("the server back with its name", Duration::from_secs(10), || body().as_deref() == Some("B"));
}

#[test]
fn the_proxys_resolver_reads_answers_nxdomain_nodata_and_asks_again_over_tcp_when_truncated() {
    use proxy::resolvers::{resolve, Answer};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dns.toml");
    // 40 addresses do not fit a 512-byte datagram: webstack dns sends the header alone, truncated.
    let many: Vec<String> = (1..=40).map(|i| format!("\"127.208.8.{i}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "name = \"ns-01\"\nlisten = \"127.208.8.53:5353\"\nzone = \"foobar.com\"\nnameserver = \"ns-01\"\n\
             [[records]]\nname = \"ns-01\"\naddresses = [\"127.208.8.53\"]\n\
             [[records]]\nname = \"many\"\naddresses = [{}]\n",
            many.join(", ")
        ),
    )
    .unwrap();
    let _dns = start("dns", &config);
    let (ns, timeout) = (["127.208.8.53:5353".parse().unwrap()], Duration::from_secs(2));
    support::wait_for("webstack dns to answer", Duration::from_secs(10), || {
        resolve("ns-01.foobar.com", &ns, timeout).is_ok()
    });
    assert_eq!(
        resolve("ns-01.foobar.com", &ns, timeout).unwrap(),
        Answer::Addresses(vec!["127.208.8.53".parse().unwrap()])
    );
    let Answer::Addresses(all) = resolve("many.foobar.com", &ns, timeout).unwrap() else { panic!("no addresses") };
    assert_eq!(all.len(), 40, "the whole answer, over TCP");
    assert_eq!(resolve("gone.foobar.com", &ns, timeout).unwrap(), Answer::NoSuchName);
    assert_eq!(resolve("foobar.com", &ns, timeout).unwrap(), Answer::NoAddress, "the apex has SOA and NS only");
    // A nameserver that is not there is skipped for the next one.
    let both = ["127.208.8.54:5353".parse().unwrap(), ns[0]];
    assert!(matches!(resolve("many.foobar.com", &both, timeout), Ok(Answer::Addresses(_))));
}

#[test]
fn a_server_template_fills_and_empties_its_slots_as_dns_gives_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let site: std::net::SocketAddr = "127.208.9.10:8080".parse().unwrap();
    let admin: std::net::SocketAddr = "127.208.9.10:8404".parse().unwrap();
    let _a = respond_server(dir.path(), "web-a", "127.208.9.1:8080", "A");
    let mut b = Some(respond_server(dir.path(), "web-b", "127.208.9.2:8080", "B"));
    // Three addresses for `web`; DNS gives those whose port 8080 accepts: A and B for now.
    let dns_config = dir.path().join("dns.toml");
    std::fs::write(
        &dns_config,
        "name = \"ns-01\"\nlisten = \"127.208.9.53:5353\"\nzone = \"foobar.com\"\nnameserver = \"ns-01\"\n\
         [[records]]\nname = \"ns-01\"\naddresses = [\"127.208.9.53\"]\n\
         [[records]]\nname = \"web\"\naddresses = [\"127.208.9.1\", \"127.208.9.2\", \"127.208.9.3\"]\ncheck_port = 8080\n",
    )
    .unwrap();
    let _dns = start("dns", &dns_config);
    let web = || {
        let mut lines: Vec<String> =
            dig_at("@127.208.9.53", &["+short", "web.foobar.com"]).lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    support::wait_for("DNS to give A and B", Duration::from_secs(10), || web() == ["127.208.9.1", "127.208.9.2"]);

    let lb_config = dir.path().join("lb.toml");
    std::fs::write(
        &lb_config,
        format!(
            "name = \"lb\"\n[admin]\nbind = \"{admin}\"\n[resolvers]\nnameservers = [\"127.208.9.53:5353\"]\n\
             hold_valid_ms = 200\n[[listeners]]\nname = \"www\"\nbind = \"{site}\"\n\
             [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n[pools.web]\nconnect_timeout_ms = 500\n\
             [[pools.web.server_templates]]\nname = \"web\"\ncount = 3\naddress = \"web.foobar.com:8080\"\n"
        ),
    )
    .unwrap();
    let _lb = start("proxy", &lb_config);
    // Which servers answer a dozen requests (round robin over the filled slots).
    let answering = || {
        let mut seen: Vec<String> =
            (0..12).filter_map(|_| support::get(site, "/").ok().filter(|r| r.status == 200).map(|r| r.body)).collect();
        seen.sort();
        seen.dedup();
        seen
    };
    support::wait_for("A and B behind the template", Duration::from_secs(10), || answering() == ["A", "B"]);
    let servers = support::get(admin, "/api/servers").unwrap().body;
    assert!(servers.contains("\"web3\"") && servers.contains("DNS: no address for this slot yet"), "{servers}");

    // B goes away and C comes up: B's slot empties, C fills one, A stays where it was.
    b.take();
    let _c = respond_server(dir.path(), "web-c", "127.208.9.3:8080", "C");
    support::wait_for("DNS to give A and C", Duration::from_secs(10), || web() == ["127.208.9.1", "127.208.9.3"]);
    support::wait_for("A and C behind the template", Duration::from_secs(10), || answering() == ["A", "C"]);
    let servers: serde_json::Value = serde_json::from_str(&support::get(admin, "/api/servers").unwrap().body).unwrap();
    let addresses: Vec<String> = servers["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(addresses[0], "127.208.9.1:8080", "A kept its slot: {addresses:?}");
    assert!(addresses.contains(&"127.208.9.3:8080".to_string()), "{addresses:?}");
}
