//! Losing the primary under write load (the distributed stack): `webstack kill server-01/db`
//! while a client writes through the load balancer every 10 ms. The managers of the two
//! replicas agree that no node is writable, the replica that received the most is promoted,
//! the other follows it, the apps follow by themselves; no acknowledged write is missing; the
//! old primary, started again, comes back as a replica of the new one.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{http, Stack};

const SUBNET: &str = "127.230.0.0/16";

fn lb() -> SocketAddr {
    "127.230.1.10:8080".parse().unwrap()
}

fn db_status(stack: &Stack) -> Vec<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_str(&stack.run_ok(&["db", "status", "--json"])).unwrap();
    json.as_array().cloned().unwrap_or_default()
}

/// One write the client made: when it was answered, and the product id if acknowledged.
struct Write {
    answered: Instant,
    id: Option<i64>,
    error: Option<String>,
}

#[test]
fn the_primary_s_loss_under_writes_promotes_a_replica_and_loses_no_acknowledged_write() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", SUBNET, "--timeout", "150"]);
    let admin = support::admin_session(&stack, lb());

    let stop = AtomicBool::new(false);
    let mut killed_at = Instant::now();
    let writes: Vec<Write> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut writes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 2000 {
                i += 1;
                let body = format!(r#"{{"name": "Failover item {i}", "price_cents": 100}}"#);
                let headers = [("Content-Type", "application/json"), ("Cookie", admin.as_str())];
                let answer = http("POST", lb(), "/api/v1/products", &headers, &body);
                let answered = Instant::now();
                writes.push(match answer {
                    Ok(r) if r.status == 201 => {
                        let p: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                        Write { answered, id: p["id"].as_i64(), error: None }
                    }
                    Ok(r) => Write { answered, id: None, error: Some(format!("{}: {}", r.status, r.body)) },
                    Err(e) => Write { answered, id: None, error: Some(e) },
                });
                std::thread::sleep(Duration::from_millis(10));
            }
            writes
        });
        std::thread::sleep(Duration::from_millis(1000));
        killed_at = Instant::now();
        stack.run_ok(&["kill", "server-01/db"]);
        std::thread::sleep(Duration::from_millis(5000));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap()
    });

    let acknowledged: Vec<i64> = writes.iter().filter_map(|w| w.id).collect();
    let before = writes.iter().filter(|w| w.id.is_some() && w.answered < killed_at).count();
    // The longest wait between two acknowledged writes around the kill: how long writes stopped.
    let acknowledged_times: Vec<Instant> = writes.iter().filter(|w| w.id.is_some()).map(|w| w.answered).collect();
    let back = acknowledged_times.windows(2).filter(|pair| pair[1] > killed_at).map(|pair| pair[1] - pair[0]).max();
    let errors: Vec<&String> = writes.iter().filter_map(|w| w.error.as_ref()).collect();
    eprintln!(
        "failover: {} writes acknowledged ({before} before the kill), writes stopped for at most {:?}, \
         {} failed: {errors:?}",
        acknowledged.len(),
        back,
        errors.len()
    );
    let back = back.expect("writes never came back after the primary's loss");
    // A write caught in the crash may fail, clearly (503, its outcome unknown to the app);
    // nothing else may: no 4xx, no hang.
    assert!(errors.iter().all(|e| e.starts_with("503")), "{errors:?}");
    assert!(acknowledged.len() - before > 50, "the client kept writing after the failover");
    assert!(back < Duration::from_secs(10), "writes came back only after {back:?}");
    assert!(before > 20, "the client wrote before the kill");

    // One primary among the survivors, the other replicating from it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_primary = loop {
        let nodes = db_status(&stack);
        let primaries: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["role"] == "primary").collect();
        let replicas = nodes.iter().filter(|n| n["role"] == "replica").count();
        if primaries.len() == 1 && replicas == 1 {
            break primaries[0]["name"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no single primary after the failover: {nodes:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(new_primary, "server-01");
    let new_sql = if new_primary == "server-02" { "127.230.2.2:3306" } else { "127.230.2.3:3306" };
    assert_eq!(
        support::products_present(&stack, new_sql, &acknowledged),
        acknowledged.len(),
        "an acknowledged write went missing"
    );
    let logs = stack.run_ok(&["logs", &format!("{new_primary}/db")]);
    assert!(logs.contains("PRIMARY LOST") && logs.contains("promoted"), "{logs}");
    for line in logs.lines().filter(|l| l.contains("PRIMARY LOST") || l.contains("promoted")) {
        eprintln!("failover: {line}");
    }

    // The old primary comes back fenced: a replica of the new one, with every write.
    stack.run_ok(&["start", "server-01/db"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = db_status(&stack);
        let old = nodes.iter().find(|n| n["name"] == "server-01");
        let is_replica = old.is_some_and(|n| n["role"] == "replica");
        let primaries = nodes.iter().filter(|n| n["role"] == "primary").count();
        if is_replica
            && primaries == 1
            && support::products_present(&stack, "127.230.2.1:3306", &acknowledged) == acknowledged.len()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the old primary never rejoined: {nodes:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_manager_that_alone_loses_sight_of_the_primary_causes_no_failover() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "distributed", "--subnet", "127.234.0.0/16", "--timeout", "150"]);
    // server-03's node comes back with a config in which the primary's address leads
    // nowhere: its manager cannot see the primary, as if cut off from it alone.
    stack.run_ok(&["kill", "server-03/db"]);
    let config = stack.state_dir().join("config").join("server-03-db.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"127.234.2.1:3306\""), "{text}");
    std::fs::write(&config, text.replace("\"127.234.2.1:3306\"", "\"127.234.2.1:3399\"")).unwrap();
    stack.run_ok(&["start", "server-03/db"]);

    let admin: SocketAddr = "127.234.2.3:9104".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = support::get(admin, "/manager").map(|r| r.body).unwrap_or_default();
        let view: serde_json::Value = serde_json::from_str(&view).unwrap_or_default();
        if view["writer"].is_null() && view["misses"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "server-03's manager never lost sight of the primary: {view}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = stack.run_ok(&["logs", "server-03/db"]);
    assert!(logs.contains("no majority of managers agrees: no failover"), "{logs}");
    let nodes = db_status(&stack);
    let primaries: Vec<&str> =
        nodes.iter().filter(|n| n["role"] == "primary").filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(primaries, ["server-01"], "the primary stayed where it was: {nodes:?}");
    let everyone = stack.run_ok(&["logs"]);
    assert!(!everyone.contains("PRIMARY LOST"), "no manager promoted anything");
}
