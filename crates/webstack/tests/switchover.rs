//! A planned switchover on the distributed stack: while a client keeps writing through the
//! load balancer, `webstack db switchover --to server-02` moves the primary. No write fails,
//! none is lost, the pause is short; the old primary replicates from the new one, and stays a
//! replica when it restarts (it never becomes a second writable node).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{http, Stack};

const SUBNET: &str = "127.229.0.0/16";

fn lb() -> SocketAddr {
    "127.229.1.10:8080".parse().unwrap()
}

/// `webstack db status --json`, by node name: its role.
fn roles(stack: &Stack) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&stack.run_ok(&["db", "status", "--json"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap_or("").to_string(), n["role"].as_str().unwrap_or("down").to_string()))
        .collect()
}

fn wait_for_roles(stack: &Stack, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = roles(stack);
        if want.iter().all(|(n, r)| now.iter().any(|(name, role)| name == n && role == r)) {
            return;
        }
        assert!(Instant::now() < deadline, "roles never became {want:?}: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_switchover_under_writes_loses_nothing_and_fences_the_old_primary() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", SUBNET, "--timeout", "150"]);
    let admin = support::admin_session(&stack, lb());

    let stop = AtomicBool::new(false);
    let (acknowledged, failed) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let (mut ids, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 3000 {
                i += 1;
                let body = format!(r#"{{"name": "Switchover item {i}", "price_cents": 100}}"#);
                let headers = [("Content-Type", "application/json"), ("Cookie", admin.as_str())];
                match http("POST", lb(), "/api/v1/products", &headers, &body) {
                    Ok(r) if r.status == 201 => {
                        let p: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                        ids.push(p["id"].as_i64().unwrap());
                    }
                    Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ids, failed)
        });
        std::thread::sleep(Duration::from_millis(800));
        let said = stack.run_ok(&["db", "switchover", "--to", "server-02"]);
        let paused: u64 = said
            .split("paused for ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pause in: {said}"));
        eprintln!("switchover: {said}");
        assert!(paused < 1000, "writes paused for {paused} ms: {said}");
        assert!(said.contains("server-01 replicates from server-02"), "{said}");
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap()
    });
    assert!(failed.is_empty(), "no write fails during a switchover: {failed:?}");
    assert!(acknowledged.len() > 50, "the client kept writing: {}", acknowledged.len());
    wait_for_roles(&stack, &[("server-01", "replica"), ("server-02", "primary"), ("server-03", "replica")]);
    assert_eq!(
        support::products_present(&stack, "127.229.2.2:3306", &acknowledged),
        acknowledged.len(),
        "every acknowledged write"
    );

    // The old primary restarts: it finds server-02 writable and stays its replica.
    stack.run_ok(&["kill", "server-01/db"]);
    stack.run_ok(&["start", "server-01/db"]);
    wait_for_roles(&stack, &[("server-01", "replica"), ("server-02", "primary")]);
    let primaries = roles(&stack).iter().filter(|(_, r)| r == "primary").count();
    assert_eq!(primaries, 1, "never two writable nodes");
    let deadline = Instant::now() + Duration::from_secs(20);
    while support::products_present(&stack, "127.229.2.1:3306", &acknowledged) != acknowledged.len() {
        assert!(Instant::now() < deadline, "the old primary never caught up as a replica");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Diverged: server-01 acts as an old primary holding a transaction nobody else got. It
    // is kept out and reported; `rejoin` refuses; `rejoin --force` rebuilds it.
    support::mariadb(
        &stack,
        "127.229.2.1:3306",
        "STOP SLAVE; RESET SLAVE ALL; INSERT INTO foobar.products (name, description, price_cents, stock) \
         VALUES ('Only on the old primary', '', 100, 1)",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let reported = loop {
        let table = stack.run_ok(&["db", "status"]);
        if table.lines().any(|l| l.starts_with("server-01") && l.contains("DIVERGED")) {
            break table;
        }
        assert!(Instant::now() < deadline, "the diverged node was never reported:\n{table}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(reported.contains("rejoin server-01 --force"), "{reported}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.run_ok(&["status"]).contains("replica (DIVERGED)") {
        assert!(Instant::now() < deadline, "webstack status never showed the diverged replica");
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = stack.run(&["db", "rejoin", "server-01"]);
    assert!(!refused.status.success(), "a plain rejoin of a diverged node must refuse");
    let rebuilt = stack.run_ok(&["db", "rejoin", "server-01", "--force"]);
    assert!(rebuilt.contains("was rebuilt from server-02"), "{rebuilt}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes: serde_json::Value = serde_json::from_str(&stack.run_ok(&["db", "status", "--json"])).unwrap();
        let old = nodes.as_array().unwrap().iter().find(|n| n["name"] == "server-01").cloned().unwrap_or_default();
        let clean = old["role"] == "replica" && old["diverged"].is_null() && old["replica"]["io_running"] == true;
        if clean && support::products_present(&stack, "127.229.2.1:3306", &acknowledged) == acknowledged.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuilt node never replicated cleanly: {old}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let only_here = support::mariadb(
        &stack,
        "127.229.2.1:3306",
        "SELECT COUNT(*) FROM foobar.products WHERE name = 'Only on the old primary'",
    );
    assert_eq!(only_here.trim(), "0", "what only the old primary held is gone");
}
