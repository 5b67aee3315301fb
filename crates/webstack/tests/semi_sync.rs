//! Semi-synchronous replication on the distributed stack's MariaDB cluster: the primary's
//! commits wait for a replica (AFTER_SYNC) as soon as one is attached; losing both replicas
//! makes it fall back to asynchronous replication, which `/status`, `/metrics`, the logs and
//! `webstack status` all say loudly; a replica's return turns it back on.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{get, Stack};

const SUBNET: &str = "127.228.0.0/16";

fn primary_admin() -> SocketAddr {
    "127.228.2.1:9104".parse().unwrap()
}

fn semi_sync() -> serde_json::Value {
    let status = get(primary_admin(), "/status").expect("the primary's status");
    let json: serde_json::Value = serde_json::from_str(&status.body).expect("JSON status");
    json["semi_sync"].clone()
}

/// Waits (bounded) until the primary's semi-sync state satisfies `want`.
fn wait_for(what: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = semi_sync();
        if want(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never {what}: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until `webstack status` shows `text`: the supervisor's next probe of the
/// database carries a change there.
fn status_shows(stack: &Stack, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let table = stack.run_ok(&["status"]);
        if table.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "`webstack status` never showed {text}:\n{table}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn semi_sync_waits_for_a_replica_and_a_fallback_is_reported_loudly() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", SUBNET, "--timeout", "150"]);

    let on = wait_for("on with both replicas", |s| s["active"] == true && s["clients"] == 2);
    assert_eq!(on["wait_point"], "AFTER_SYNC", "{on}");
    assert_eq!(on["enabled"], true);
    // The apps' heartbeats are commits: replicas acknowledge them.
    wait_for("acknowledging commits", |s| s["acknowledged"].as_u64().unwrap_or(0) > 0);
    status_shows(&stack, "primary (semi-sync)");
    let metrics = get(primary_admin(), "/metrics").unwrap().body;
    assert!(metrics.contains("webstack_db_semi_sync_active 1"), "{metrics}");
    let cluster = stack.run_ok(&["db", "status"]);
    let line = |table: &str, node: &str| table.lines().find(|l| l.starts_with(node)).unwrap_or("").to_string();
    assert!(
        line(&cluster, "server-01").contains("primary") && line(&cluster, "server-01").contains("on: 2 replica(s)"),
        "{cluster}"
    );
    assert!(
        line(&cluster, "server-02").contains("replica") && line(&cluster, "server-02").contains("acknowledging"),
        "{cluster}"
    );
    let replica = get("127.228.2.2:9104".parse().unwrap(), "/status").unwrap().body;
    assert!(replica.contains("\"replica_acknowledging\":true"), "{replica}");

    // Both replicas gone: the next commits wait out the timeout, then go out unacknowledged.
    stack.run_ok(&["kill", "server-02/db"]);
    stack.run_ok(&["kill", "server-03/db"]);
    let fallen = wait_for("fallen back to asynchronous", |s| s["enabled"] == true && s["active"] == false);
    assert!(fallen["not_acknowledged"].as_u64().unwrap_or(0) > 0 || fallen["clients"] == 0, "{fallen}");
    status_shows(&stack, "primary (ASYNC!)");
    assert!(get(primary_admin(), "/metrics").unwrap().body.contains("webstack_db_semi_sync_active 0"));
    let logs = stack.run_ok(&["logs", "server-01/db"]);
    assert!(logs.contains("SEMI-SYNC FELL BACK TO ASYNCHRONOUS REPLICATION"), "{logs}");
    let cluster = stack.run_ok(&["db", "status"]);
    assert!(line(&cluster, "server-01").contains("FELL BACK TO ASYNC"), "{cluster}");
    assert!(line(&cluster, "server-03").contains("DOWN"), "{cluster}");
    let json: serde_json::Value = serde_json::from_str(&stack.run_ok(&["db", "status", "--json"])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3), "{json}");

    // One replica back: it catches up, acknowledges, and semi-sync is on again.
    stack.run_ok(&["start", "server-02/db"]);
    wait_for("back on with one replica", |s| s["active"] == true && s["clients"] == 1);
    let logs = stack.run_ok(&["logs", "server-01/db"]);
    assert!(logs.contains("semi-sync is back"), "{logs}");
}
