//! Two edge proxies share a VIP: the MASTER serves it, SIGKILL moves it to the BACKUP, and the
//! preferred node takes it back when it returns — measured, with the requests that failed; a
//! MASTER that stops (SIGTERM) hands it over without a refused connection.

mod support;

use std::process::{Command, Stdio};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{body_if_ok as get, ha_state_in, wait_for, Stop};

/// The VIP of a test's own 127.209.NET.0/24.
fn vip(net: u8) -> String {
    format!("127.209.{net}.10:8080")
}

fn config(dir: &std::path::Path, id: u32, priority: u8) -> std::path::PathBuf {
    let peer = format!("127.209.1.{}:5405", 3 - id);
    config_with(dir, 1, id, priority, &[peer.as_str()], &[])
}

/// A node of the pair: `peers` it sends adverts to, `witnesses` it needs a majority of.
fn config_with(
    dir: &std::path::Path,
    net: u8,
    id: u32,
    priority: u8,
    peers: &[&str],
    witnesses: &[&str],
) -> std::path::PathBuf {
    let me = format!("127.209.{net}.{id}");
    let vip = vip(net);
    let list = |items: &[&str]| items.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "name = \"lb-0{id}\"\n[admin]\nbind = \"{me}:8404\"\n\
         [ha]\nid = {id}\npriority = {priority}\nbind = \"{me}:5405\"\npeers = [{}]\nvip = \"127.209.{net}.10\"\n\
         key = \"a test key of some length\"\nadvert_interval_ms = 50\npreempt_delay_ms = 300\nwitnesses = [{}]\n\
         [[listeners]]\nname = \"www\"\nbind = \"{vip}\"\n[[listeners.routes]]\nprefix = \"/\"\nrespond = {{ body = \"lb-0{id}\" }}\n",
        list(peers),
        list(witnesses)
    );
    let path = dir.join(format!("lb-0{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(path: &std::path::Path) -> Stop {
    Stop(
        Command::new(env!("CARGO_BIN_EXE_webstack"))
            .args(["proxy", "--config"])
            .arg(path)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn ha_state(net: u8, id: u32) -> String {
    ha_state_in(&get(&format!("127.209.{net}.{id}:8404"), "/ha").unwrap_or_default())
}

#[test]
fn the_vip_moves_to_the_backup_on_sigkill_and_back_to_the_preferred_node() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (config(dir.path(), 1, 200), config(dir.path(), 2, 100));
    let mut lb1 = start(&a);
    let _lb2 = start(&b);
    wait_for("lb-01 MASTER and lb-02 BACKUP", Duration::from_secs(10), || {
        ha_state(1, 1) == "MASTER" && ha_state(1, 2) == "BACKUP"
    });
    assert_eq!(get(&vip(1), "/").as_deref(), Some("lb-01"));

    // A client keeps asking the VIP every 10 ms, counting what failed.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU32::new(0));
    let last_from = Arc::new(std::sync::Mutex::new(String::new()));
    let client = {
        let (stop, failed, last_from) = (stop.clone(), failed.clone(), last_from.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match get(&vip(1), "/") {
                    Some(from) => *last_from.lock().unwrap() = from,
                    None => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(failed.load(Ordering::SeqCst), 0);

    // kill -9 the MASTER: a silent advertiser.
    let killed = Instant::now();
    let _ = lb1.0.kill();
    let _ = lb1.0.wait();
    wait_for("lb-02 to answer on the VIP", Duration::from_secs(3), || *last_from.lock().unwrap() == "lb-02");
    let takeover = killed.elapsed();
    let failed_at_takeover = failed.load(Ordering::SeqCst);
    eprintln!(
        "SIGKILL of the MASTER: lb-02 answered on the VIP after {} ms; {failed_at_takeover} requests failed",
        takeover.as_millis()
    );
    assert_eq!(ha_state(1, 2), "MASTER");

    // lb-01 returns and takes the VIP back after its preempt delay, with no failed request.
    lb1 = start(&a);
    wait_for("lb-01 to take the VIP back", Duration::from_secs(5), || *last_from.lock().unwrap() == "lb-01");
    std::thread::sleep(Duration::from_millis(200));
    let failed_at_preemption = failed.load(Ordering::SeqCst) - failed_at_takeover;
    eprintln!("preemption back to lb-01: {failed_at_preemption} requests failed");
    assert_eq!(failed_at_preemption, 0, "the planned hand-over refused requests");
    assert_eq!((ha_state(1, 1).as_str(), ha_state(1, 2).as_str()), ("MASTER", "BACKUP"));

    // The MASTER stops (SIGTERM, as a restart or `down` does): it resigns and keeps the VIP's
    // listeners until lb-02 holds it, so no connection is refused in between.
    let before_stop = failed.load(Ordering::SeqCst);
    let stopped = Command::new("kill").arg(lb1.0.id().to_string()).status().unwrap();
    assert!(stopped.success());
    wait_for("lb-02 to answer on the VIP", Duration::from_secs(3), || *last_from.lock().unwrap() == "lb-02");
    let _ = lb1.0.wait();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let failed_at_stop = failed.load(Ordering::SeqCst) - before_stop;
    eprintln!("the MASTER stopped: {failed_at_stop} requests failed");
    assert_eq!(failed_at_stop, 0, "a MASTER that stopped left the VIP without a listener");
    assert_eq!(ha_state(1, 2), "MASTER");
}

#[test]
fn split_brain_the_node_cut_off_from_its_witnesses_never_holds_the_vip() {
    // The two load balancers cannot hear each other (no adverts either way). lb-01, the
    // preferred one, also cannot reach its witnesses; lb-02 reaches a majority of its own.
    // keepalived would have both hold the VIP; here only the side with the quorum does.
    let witnesses: Vec<std::net::TcpListener> =
        (21..=23).map(|i| std::net::TcpListener::bind(format!("127.209.2.{i}:8080")).unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let unreachable = ["127.209.2.31:8080", "127.209.2.32:8080", "127.209.2.33:8080"];
    let reachable = ["127.209.2.21:8080", "127.209.2.22:8080", "127.209.2.23:8080"];
    let _lb1 = start(&config_with(dir.path(), 2, 1, 200, &[], &unreachable));
    let _lb2 = start(&config_with(dir.path(), 2, 2, 100, &[], &reachable));
    wait_for("lb-02 MASTER", Duration::from_secs(10), || ha_state(2, 2) == "MASTER");
    // Watch for a while: lb-01 never leaves FAULT, and the VIP is only ever lb-02's.
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        assert_eq!(ha_state(2, 1), "FAULT", "the node without a quorum took part");
        assert_eq!(get(&vip(2), "/").as_deref(), Some("lb-02"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Losing a majority of witnesses makes lb-02 step down too: nobody rather than both.
    drop(witnesses);
    wait_for("lb-02 to step down", Duration::from_secs(5), || ha_state(2, 2) == "FAULT");
    assert_eq!(get(&vip(2), "/"), None);
}

#[test]
fn a_master_that_cannot_bind_the_vip_steps_down_and_says_why() {
    // Something else holds the VIP's port: the node may win the election but cannot serve, so
    // it must not sit on the VIP as MASTER (its peer would never take over).
    let blocker = std::net::TcpListener::bind(vip(3)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _lb = start(&config_with(dir.path(), 3, 1, 200, &[], &[]));
    let ha = || {
        let body = get("127.209.3.1:8404", "/ha").unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    wait_for("the failure to show", Duration::from_secs(10), || ha()["vip_error"].is_string());
    assert!(ha()["vip_error"].as_str().unwrap_or("").contains("cannot bind"), "{}", ha());
    // Watched for a while: never MASTER while it cannot hold the listeners.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert_ne!(ha_state(3, 1), "MASTER", "{}", ha());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The port is free again: after its hold-down the node takes the VIP and serves.
    drop(blocker);
    wait_for("the node to serve the VIP", Duration::from_secs(10), || get(&vip(3), "/").as_deref() == Some("lb-01"));
    assert_eq!(ha_state(3, 1), "MASTER");
    assert!(ha()["vip_error"].is_null(), "{}", ha());
}
