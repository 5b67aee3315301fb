//! `webstack up` in the foreground, as `make up` runs it: it prints the site once healthy,
//! restarts a component that crashes, and Ctrl-C stops everything.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{get, repo_root, webstack_bin, Stack};

#[test]
fn foreground_up_restarts_crashes_and_stops_on_ctrl_c() {
    let stack = Stack::new();
    let mut up = Command::new(webstack_bin())
        .args(["up", "--profile", "single", "--subnet", "127.204.0.0/16", "--state-dir"])
        .arg(stack.state_dir())
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start webstack up");
    // Kill the foreground process whatever happens below; the Stack guard cleans the rest.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = up.stdout.take().unwrap();
    let up = KillOnDrop(up);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("all healthy")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!("never healthy; printed:\n{}\n{}", printed.join("\n"), stack.logs()),
        }
    }
    assert!(printed.iter().any(|l| l.contains("http://127.204.2.1:8080/")), "{printed:?}");
    let site: SocketAddr = "127.204.2.1:8080".parse().unwrap();
    assert_eq!(get(site, "/").unwrap().status, 200);

    // A crash (not a drill) is restarted, and the app's migrations run again harmlessly.
    let app_pid = |s: &serde_json::Value| {
        s["hosts"][0]["components"].as_array().unwrap().iter().find(|c| c["name"] == "app").unwrap()["pid"].as_u64()
    };
    let old = app_pid(&stack.status()).expect("app pid");
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = stack.status();
        let app =
            status["hosts"][0]["components"].as_array().unwrap().iter().find(|c| c["name"] == "app").unwrap().clone();
        let all_healthy = status["hosts"][0]["components"].as_array().unwrap().iter().all(|c| c["health"] == "healthy");
        // The web server's own health check must also have seen the app come back.
        if app_pid(&status).is_some_and(|p| p != old) && all_healthy {
            assert!(app["restarts"].as_u64().unwrap() >= 1, "{app}");
            break;
        }
        assert!(Instant::now() < deadline, "the crashed app was not restarted: {app}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = get(site, "/?q=Espresso").unwrap();
    assert_eq!(home.status, 200);
    assert_eq!(home.body.matches("Espresso cup").count(), 1, "seed data loaded twice");
    assert!(get(site, "/").unwrap().body.contains("1008 products"), "the catalog was seeded more than once");

    // The logs command shows each component's log.
    let logs = stack.run_ok(&["logs", "server-01/db"]);
    assert!(logs.contains("database is up"), "{logs}");

    // Ctrl-C stops everything, in order, and the command exits 0.
    let pid = up.0.id();
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut up = up;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "webstack up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(stack.processes_left().is_empty(), "left after Ctrl-C: {:?}", stack.processes_left());
    assert!(get(site, "/").is_err());
}
