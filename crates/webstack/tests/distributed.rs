//! The seed's distributed design end to end: one load balancer, three servers (web + app +
//! MariaDB), a primary and two replicas — brought up by `webstack up` on loopback addresses of
//! its own, used through the load balancer as a user would, then drilled.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{get, http, Stack};

/// This test's own address range: no other test and no user's stack uses it.
const SUBNET: &str = "127.201.0.0/16";

fn lb() -> SocketAddr {
    "127.201.1.10:8080".parse().unwrap()
}

#[test]
fn distributed_stack_serves_balances_survives_a_dead_web_server_and_replicates() {
    let stack = Stack::new();
    let up = stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", SUBNET, "--timeout", "150"]);
    assert!(up.contains("all healthy"), "{up}");

    // status --json: four hosts, every component running, one primary and two replicas.
    let status = stack.status();
    let hosts = status["hosts"].as_array().expect("hosts array");
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lb-01", "server-01", "server-02", "server-03"]);
    for h in hosts {
        for c in h["components"].as_array().unwrap() {
            assert_eq!(c["state"], "running", "{h}");
            assert!(c["pid"].as_u64().is_some(), "{c}");
            assert!(!c["listen"].as_array().unwrap().is_empty(), "{c}");
        }
    }
    let role = |host: usize| {
        hosts[host]["components"].as_array().unwrap().iter().find(|c| c["name"] == "db").unwrap()["role"].clone()
    };
    assert_eq!(role(1), "primary");
    assert_eq!(role(2), "replica");
    assert_eq!(role(3), "replica");

    // The home page through the load balancer comes from all three servers in turn, with
    // products read from the database.
    let mut served_by = Vec::new();
    for _ in 0..6 {
        let page = get(lb(), "/").expect("home page");
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Studio Titanium Tray") && page.body.contains("1008 products"), "{}", page.body);
        served_by.push(page.header("x-served-by").expect("X-Served-By").to_string());
    }
    let distinct: BTreeSet<&str> = served_by.iter().map(String::as_str).collect();
    assert_eq!(distinct, BTreeSet::from(["server-01", "server-02", "server-03"]), "{served_by:?}");
    assert_ne!(served_by[0], served_by[1], "round robin alternates: {served_by:?}");

    // HTTPS on the VIP with the stack's own CA, HTTP/2 through ALPN, as a user would check it.
    let ca = stack.state_dir().join("certs/ca.pem");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--cacert"])
        .arg(&ca)
        .args(["--resolve", "www.foobar.com:8443:127.201.1.10", "https://www.foobar.com:8443/"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200 2", "{}", String::from_utf8_lossy(&curl.stderr));

    // Static files come from the web role.
    let css = get(lb(), "/static/site.css").expect("css");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    // Drill: kill server-02's web server. Requests keep succeeding; count the failures
    // before the health check takes it out, and require none after.
    stack.run_ok(&["kill", "server-02/web"]);
    let killed_at = Instant::now();
    let (mut before, mut total_before) = (0, 0);
    let admin: SocketAddr = "127.201.1.1:8404".parse().unwrap();
    let deadline = killed_at + Duration::from_secs(15);
    loop {
        let metrics = get(admin, "/metrics").expect("edge metrics").body;
        if metrics.contains("webstack_proxy_server_up{pool=\"web\",server=\"server-02\"} 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the health check never took server-02 out:\n{metrics}");
        total_before += 1;
        if get(lb(), "/").map(|r| r.status != 200).unwrap_or(true) {
            before += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "server-02/web killed: health check acted after {} ms; {before} of {total_before} requests failed before that",
        killed_at.elapsed().as_millis()
    );
    let mut after = Vec::new();
    for _ in 0..40 {
        let page = get(lb(), "/").expect("home page after the kill");
        assert_eq!(page.status, 200, "a request failed after the health check acted: {}", page.body);
        after.push(page.header("x-served-by").unwrap_or("").to_string());
    }
    assert!(!after.iter().any(|s| s == "server-02"), "{after:?}");
    let stats = stack.status();
    let web02 =
        &stats["hosts"][2]["components"].as_array().unwrap().iter().find(|c| c["name"] == "web").unwrap().clone();
    assert_eq!(web02["state"], "stopped", "a killed component is not restarted: {web02}");

    // A product created through the load balancer (a write, on the primary) is read back
    // from a replica. Only the shop's admin adds products.
    let anonymous = http(
        "POST",
        lb(),
        "/api/v1/products",
        &[("Content-Type", "application/json")],
        r#"{"name": "Cold brew bottle", "price_cents": 2400}"#,
    )
    .expect("create");
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let admin = support::admin_session(&stack, lb());
    let created = http(
        "POST",
        lb(),
        "/api/v1/products",
        &[("Content-Type", "application/json"), ("Cookie", &admin)],
        r#"{"name": "Cold brew bottle", "description": "1 litre, glass.", "price_cents": 2400}"#,
    )
    .expect("create");
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("x-db-write"), Some("server-01"));
    let product: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let path = format!("/api/v1/products/{}", product["id"]);
    let mut from_replica = None;
    for _ in 0..50 {
        let read = get(lb(), &path).expect("read back");
        let node = read.header("x-db-read").unwrap_or("").to_string();
        if read.status == 200 && node != "server-01" {
            from_replica = Some((node, read.body));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (node, body) = from_replica.expect("the product was never read from a replica");
    assert_eq!(node, "server-03", "server-02's web is down, so the replica read is server-03's");
    assert!(body.contains("Cold brew bottle"), "{body}");
    // And straight from server-02's app, which reads its own replica.
    let direct = get("127.201.2.2:9000".parse().unwrap(), &path).expect("server-02 app");
    assert_eq!((direct.status, direct.header("x-db-read")), (200, Some("server-02")), "{}", direct.body);

    // The form: a write, then a redirect to the product page that shows it at once. The
    // form's page hands out the CSRF token the post must carry.
    let form_page = http("GET", lb(), "/products/new", &[("Cookie", &admin)], "").expect("form page");
    assert_eq!(form_page.status, 200, "{}", form_page.body);
    let csrf = form_page.header("set-cookie").and_then(|c| c.split(';').next()).expect("csrf cookie").to_string();
    let token = csrf.split_once('=').map(|(_, t)| t.to_string()).unwrap_or_default();
    assert!(form_page.body.contains(&token), "the form carries the token");
    let cookies = format!("{admin}; {csrf}");
    let form = http(
        "POST",
        lb(),
        "/products",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookies)],
        &format!("name=Latte+glass&description=Double+wall&price=7.50&csrf={token}"),
    )
    .expect("form post");
    assert_eq!(form.status, 303, "{}", form.body);
    let location = form.header("location").expect("redirect").to_string();
    let cookie = form.header("set-cookie").expect("gtid cookie").split(';').next().unwrap().to_string();
    let page = http("GET", lb(), &location, &[("Cookie", &cookie)], "").expect("product page");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Latte glass") && page.body.contains("$7.50"), "{}", page.body);

    // Bad input gets a 4xx, not a crash.
    let bad = http(
        "POST",
        lb(),
        "/api/v1/products",
        &[("Content-Type", "application/json"), ("Cookie", &admin)],
        r#"{"name": "", "price_cents": -5}"#,
    )
    .unwrap();
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("name is required"), "{}", bad.body);

    // `webstack start` brings the killed web server back, and the LB uses it again.
    stack.run_ok(&["start", "server-02/web"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = get(lb(), "/").expect("home page");
        if page.header("x-served-by") == Some("server-02") {
            break;
        }
        assert!(Instant::now() < deadline, "server-02 never came back into the pool");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A replica that stops replicating falls behind; its server's reads move to a node within
    // the lag bound (2 s), and come back once it catches up.
    let secrets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stack.state_dir().join("secrets.json")).unwrap()).unwrap();
    let admin = |sql: &str| {
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-h", "127.201.2.2", "-P", "3306", "-u", "webstack_admin"])
            .arg(format!("-p{}", secrets["db_admin_password"].as_str().unwrap()))
            .args(["-e", sql])
            .output()
            .expect("mariadb client");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let app02: SocketAddr = "127.201.2.2:9000".parse().unwrap();
    let read_from =
        || get(app02, "/api/v1/products?per_page=1").ok().and_then(|r| r.header("x-db-read").map(str::to_string));
    assert_eq!(read_from().as_deref(), Some("server-02"));
    admin("STOP SLAVE");
    let stopped = Instant::now();
    while read_from().as_deref() == Some("server-02") {
        assert!(stopped.elapsed() < Duration::from_secs(15), "reads never left the stopped replica");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("replication stopped on server-02: its reads moved after {} ms", stopped.elapsed().as_millis());
    admin("START SLAVE");
    let started = Instant::now();
    while read_from().as_deref() != Some("server-02") {
        assert!(started.elapsed() < Duration::from_secs(15), "reads never came back to server-02");
        std::thread::sleep(Duration::from_millis(200));
    }

    // down leaves no process running.
    let pids = stack.pids();
    assert!(pids.len() >= 11, "{pids:?}");
    stack.run_ok(&["down"]);
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
        .collect();
    assert!(alive.is_empty(), "still running after down: {alive:?}");
    assert!(stack.processes_left().is_empty(), "processes of this stack left: {:?}", stack.processes_left());
    let after_down = stack.status();
    assert_eq!(after_down["supervisor_pid"], serde_json::Value::Null);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(true)
}
