//! `webstack restart`: after a rebuild, a component runs the new binary without a failed
//! request where the design allows it. The web server (a proxy) hands over to a new process
//! (`webstack proxy --take-over`) under load; the app, which has no partner, stops and starts.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{body_if_ok, wait_for, Load, Stack};

const SUBNET: &str = "127.241.0.0/16";
const SITE: &str = "127.241.2.1:8080";

fn pid_of(stack: &Stack, component: &str) -> Option<u64> {
    let status = stack.status();
    status["hosts"].as_array()?.iter().find(|h| h["name"] == "server-01")?["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == component)?["pid"]
        .as_u64()
}

#[test]
fn a_restart_hands_the_web_server_over_without_a_failed_request_and_restarts_the_app() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "single-sqlite", "--subnet", SUBNET, "--timeout", "60"]);
    let site: SocketAddr = SITE.parse().expect("address");
    let old_web = pid_of(&stack, "web").expect("web runs");

    // A file the web server serves itself: what is measured is its hand-over, not how the
    // debug-built app copes with four clients on a shared machine.
    let load = Load::start(site, "/static/site.css", 2, 2);
    std::thread::sleep(Duration::from_millis(300));
    let said = stack.run_ok(&["restart", "server-01/web"]);
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed) = load.finish();
    let failed: Vec<String> = failed.iter().map(|f| f.chars().take(300).collect()).collect();
    assert!(
        failed.is_empty(),
        "requests failed while the web server was handed over: {failed:?}\n{said}\n{}",
        stack.logs()
    );
    assert!(answered >= 20, "the clients kept requesting through the restart ({answered} requests)");
    assert!(said.contains("server-01/web handed over"), "{said}");
    let new_web = pid_of(&stack, "web").expect("web runs again");
    assert_ne!(new_web, old_web, "a new process serves");
    assert!(!std::path::Path::new(&format!("/proc/{old_web}")).exists(), "the old web process has exited");
    let info = support::get("127.241.2.1:8404".parse().expect("admin"), "/api/info").expect("admin answers");
    assert!(info.body.contains(&format!("\"pid\":{new_web}")), "the new process answers its admin: {}", info.body);

    // The app has no partner here: it stops, then starts, and the shop comes back.
    let old_app = pid_of(&stack, "app").expect("app runs");
    let said = stack.run_ok(&["restart", "server-01/app"]);
    assert!(said.contains("restarted server-01/app"), "{said}");
    assert_ne!(pid_of(&stack, "app"), Some(old_app), "a new app process");
    wait_for("the shop to answer again", Duration::from_secs(30), || body_if_ok(SITE, "/").is_some());

    let unknown = stack.run(&["restart", "server-01/nothing"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no component `nothing` on server-01"));
}

#[test]
fn a_rolling_restart_behind_the_load_balancer_fails_no_request() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", "127.242.0.0/16", "--timeout", "120"]);
    // Through the load balancer to a page each app renders without the database.
    let site: SocketAddr = "127.242.1.10:8080".parse().expect("address");
    let load = Load::start(site, "/login", 2, 2);
    std::thread::sleep(Duration::from_millis(300));
    // A whole server (its database replica, app and web server): out of the load balancer's
    // pool first, back once all of it is healthy.
    let app = stack.run_ok(&["restart", "server-02"]);
    // The web server: handed over to a new process.
    let web = stack.run_ok(&["restart", "server-03/web"]);
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed) = load.finish();
    let failed: Vec<String> = failed.iter().map(|f| f.chars().take(300).collect()).collect();
    assert!(failed.is_empty(), "requests failed in the rolling restart: {failed:?}\n{app}\n{web}\n{}", stack.logs());
    assert!(answered >= 20, "the clients kept requesting through the restarts ({answered} requests)");
    assert!(app.contains("out of lb-01/edge's pool first"), "{app}");
    for component in ["db", "app"] {
        assert!(app.contains(&format!("restarted server-02/{component}: pid")), "{app}");
    }
    assert!(app.contains("server-02/web handed over"), "{app}");
    assert!(app.contains("server-02 healthy again"), "{app}");
    assert!(app.contains("back in lb-01/edge's pool"), "{app}");
    assert!(web.contains("server-03/web handed over"), "{web}");
    let servers = support::get("127.242.1.1:8404".parse().expect("admin"), "/api/servers").expect("edge admin");
    let servers: serde_json::Value = serde_json::from_str(&servers.body).expect("json");
    let server_02 = servers["pools"][0]["servers"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "server-02"));
    assert_eq!(server_02.map(|s| s["admin"].clone()), Some("ready".into()), "back in the pool: {servers}");
}
