//! The shop's catalog on a real MariaDB (the `single` profile) and on the embedded SQLite file
//! (`single-sqlite`), the same checks on both: a thousand seeded products and a seeded order
//! history, pages, search, and clear 400s for bad parameters.

mod support;

use std::net::SocketAddr;

use support::{get, Stack};

fn api(site: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let r = get(site, path).expect("answer");
    (r.status, serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null))
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v["products"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect()
}

/// The seeded customers and their history, asked of the database itself.
const SEEDED: &str = "SELECT (SELECT COUNT(*) FROM users WHERE email LIKE 'customer%@example.invalid'), \
                      (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM orders WHERE total_cents <= 0), \
                      (SELECT COUNT(*) FROM order_items)";

#[test]
fn the_catalog_pages_and_searches_a_thousand_products() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "single", "--subnet", "127.222.0.0/16", "--timeout", "120"]);
    let out = support::mariadb(&stack, "127.222.2.1:3306", &format!("USE foobar; {SEEDED}"));
    let seeded: Vec<i64> = out.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    catalog_pages_and_searches(SocketAddr::from(([127, 222, 2, 1], 8080)), &seeded);
    stack.run_ok(&["down"]);
}

#[test]
fn the_catalog_pages_and_searches_a_thousand_products_on_sqlite() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "single-sqlite", "--subnet", "127.237.0.0/16", "--timeout", "60"]);
    let seeded = support::sqlite(&stack.state_dir().join("foobar.db"), SEEDED);
    catalog_pages_and_searches(SocketAddr::from(([127, 237, 2, 1], 8080)), &seeded);
    stack.run_ok(&["down"]);
}

/// `seeded`: the counts of [`SEEDED`].
fn catalog_pages_and_searches(site: SocketAddr, seeded: &[i64]) {
    let api = |path: &str| api(site, path);
    let (status, first) = api("/api/v1/products");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["total"], 1008, "8 starter products and the 1000 of the seed");
    assert!(
        first["products"].as_array().unwrap().iter().all(|p| p["stock"].as_i64().is_some_and(|s| s >= 5)),
        "seeded products have stock: {first}"
    );
    assert_eq!(seeded.len(), 4, "{seeded:?}");
    assert_eq!(&seeded[..3], &[200, 1000, 0], "200 customers, 1,000 orders, each with its total");
    assert!((1000..=3000).contains(&seeded[3]), "one to three lines per order: {}", seeded[3]);
    assert_eq!((first["page"].as_u64(), first["per_page"].as_u64()), (Some(1), Some(20)));
    assert_eq!(ids(&first).len(), 20);
    let (_, second) = api("/api/v1/products?page=2&per_page=20");
    assert!(ids(&first).iter().all(|id| !ids(&second).contains(id)), "pages overlap");
    assert!(ids(&first)[19] > ids(&second)[0], "newest first, page after page");
    let (_, last) = api("/api/v1/products?page=51&per_page=20");
    assert_eq!(ids(&last).len(), 8);
    let (_, beyond) = api("/api/v1/products?page=99");
    assert!(ids(&beyond).is_empty());

    let (_, kettles) = api("/api/v1/products?q=walnut%20kettle&per_page=100");
    assert_eq!(kettles["total"], 10);
    assert!(kettles["products"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"].as_str().unwrap().contains("Walnut Kettle")));
    let (_, literal) = api("/api/v1/products?q=%25");
    assert_eq!(literal["total"], 0, "% is searched for literally");

    for bad in ["/api/v1/products?per_page=0", "/api/v1/products?per_page=1000", "/api/v1/products?page=x"] {
        let (status, body) = api(bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}: {body}");
    }

    let page = get(site, "/?q=oak&page=2").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("100 products matching “oak”") && page.body.contains("page 2 of 5"), "{}", page.body);
    // The template escapes `&` in the link (as &#38;), as it escapes everything.
    assert!(page.body.contains("href=\"/?page=1&#38;q=oak\""), "{}", page.body);
    assert!(page.body.contains("href=\"/?page=3&#38;q=oak\""), "{}", page.body);
    assert_eq!(get(site, "/?page=0").unwrap().status, 400);
}
