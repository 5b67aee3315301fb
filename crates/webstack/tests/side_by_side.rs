//! The seed's first step (`single`: one server with web, app and database), twice at once:
//! two stacks with their own state dirs and address ranges do not see each other.

mod support;

use std::net::SocketAddr;

use support::{get, http, Stack};

fn up_single(stack: &Stack, subnet: &str) {
    let out = stack.run_ok(&["up", "-d", "--profile", "single", "--subnet", subnet, "--timeout", "120"]);
    assert!(out.contains("all healthy"), "{out}");
}

#[test]
fn two_single_server_stacks_run_side_by_side() {
    let (a, b) = (Stack::new(), Stack::new());
    std::thread::scope(|s| {
        s.spawn(|| up_single(&a, "127.202.0.0/16"));
        s.spawn(|| up_single(&b, "127.203.0.0/16"));
    });
    let site_a: SocketAddr = "127.202.2.1:8080".parse().unwrap();
    let site_b: SocketAddr = "127.203.2.1:8080".parse().unwrap();

    // In `single` the site is server-01's web server; its status has one host.
    let status = a.status();
    assert_eq!(status["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(status["site_url"], "http://127.202.2.1:8080/");
    let db = &status["hosts"][0]["components"].as_array().unwrap().iter().find(|c| c["name"] == "db").unwrap().clone();
    assert_eq!(db["role"], "primary");

    // A product written to one stack is not in the other.
    let admin = support::admin_session(&a, site_a);
    let created = http(
        "POST",
        site_a,
        "/api/v1/products",
        &[("Content-Type", "application/json"), ("Cookie", &admin)],
        r#"{"name":"Only in A","price_cents":100}"#,
    )
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(get(site_a, "/").unwrap().body.contains("Only in A"));
    assert!(!get(site_b, "/").unwrap().body.contains("Only in A"));

    // Bringing one down leaves the other serving.
    a.run_ok(&["down"]);
    assert!(get(site_a, "/").is_err(), "stack A still answers after down");
    assert_eq!(get(site_b, "/").unwrap().status, 200);
    assert!(a.processes_left().is_empty());
}
