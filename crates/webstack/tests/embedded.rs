//! The `single-sqlite` profile: one server whose app keeps the shop in an embedded SQLite file
//! in the state dir, with no database server. What a user checks: the stack runs without
//! MariaDB, the file holds the shop, an acknowledged order survives a `kill -9` of the app, and
//! the data (and only one run of the migrations) survives `down` and `up`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{http, HttpResponse, Stack};

const SITE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 239, 2, 1)), 8080);

fn up(stack: &Stack) {
    stack.run_ok(&["up", "-d", "--profile", "single-sqlite", "--subnet", "127.239.0.0/16", "--timeout", "60"]);
}

fn json(method: &str, path: &str, cookies: &str, body: &str) -> HttpResponse {
    http(method, SITE, path, &[("Content-Type", "application/json"), ("Cookie", cookies)], body).expect("answer")
}

fn session_cookie(r: &HttpResponse) -> String {
    let value = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next()?.strip_prefix("foobar_session="))
        .next()
        .expect("a session cookie");
    format!("foobar_session={value}")
}

fn order_ids(cookies: &str) -> Vec<i64> {
    let history: serde_json::Value = serde_json::from_str(&json("GET", "/api/v1/orders", cookies, "").body).unwrap();
    history["orders"].as_array().map(|o| o.iter().filter_map(|o| o["id"].as_i64()).collect()).unwrap_or_default()
}

/// Asks until `path` answers 200 again (the app restarting), for at most 20 s.
fn wait_for_200(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while json("GET", path, "", "").status != 200 {
        assert!(Instant::now() < deadline, "{path} never answered 200 again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_shop_lives_in_one_file_and_survives_kill_and_restart() {
    let stack = Stack::new();
    up(&stack);
    let file = stack.state_dir().join("foobar.db");
    assert!(file.is_file(), "the shop's file is in the state dir");

    // No MariaDB: server-01 runs its web server and app, nothing else.
    let status = stack.status();
    let components: Vec<&str> =
        status["hosts"][0]["components"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(components, ["web", "app"], "{status}");
    let db_status = stack.run(&["db", "status"]);
    assert!(!db_status.status.success());
    assert!(String::from_utf8_lossy(&db_status.stderr).contains("embedded SQLite file"), "{db_status:?}");

    let home = json("GET", "/", "", "");
    assert_eq!(home.status, 200);
    assert_eq!(home.header("x-db-read"), Some("sqlite"), "the page says where its data came from");
    assert!(home.body.contains("data from sqlite"), "{}", home.body);
    assert_eq!(json("GET", "/healthz", "", "").status, 200);

    let created = json("POST", "/api/v1/users", "", r#"{"email": "ada@example.com", "password": "analytical"}"#);
    assert_eq!(created.status, 201, "{}", created.body);
    let buyer = session_cookie(&created);
    let order = json("POST", "/api/v1/orders", &buyer, r#"{"items": [{"product_id": 3, "quantity": 2}]}"#);
    assert_eq!(order.status, 201, "{}", order.body);
    let placed: serde_json::Value = serde_json::from_str(&order.body).unwrap();
    let id = placed["id"].as_i64().expect("an order id");

    // kill -9 right after the answer: an acknowledged order is on disk.
    stack.run_ok(&["kill", "server-01/app"]);
    assert_eq!(json("GET", "/api/v1/products", "", "").status, 502, "the web server says the app is gone");
    stack.run_ok(&["start", "server-01/app"]);
    wait_for_200("/api/v1/products");
    assert_eq!(order_ids(&buyer), [id], "the order survived kill -9");

    // Down and up again: the same file, the same shop, the migrations not run twice.
    stack.run_ok(&["down"]);
    assert!(stack.processes_left().is_empty(), "down stops everything");
    up(&stack);
    let login = json("POST", "/api/v1/session", "", r#"{"email": "ada@example.com", "password": "analytical"}"#);
    assert_eq!(login.status, 200, "the account is still there: {}", login.body);
    assert_eq!(order_ids(&session_cookie(&login)), [id]);
    let catalog: serde_json::Value = serde_json::from_str(&json("GET", "/api/v1/products", "", "").body).unwrap();
    assert_eq!(catalog["total"], 1008, "the seed was loaded once");
    let counts = support::sqlite(&file, "SELECT COUNT(*), MAX(version) FROM schema_migrations");
    assert_eq!(counts, [7, 7], "each migration ran once");
    let stock = support::sqlite(&file, "SELECT stock FROM products WHERE id = 3");
    assert_eq!(stock, [5 + (3 * 37) % 60 - 2], "the order took its two units");
    stack.run_ok(&["down"]);
}
