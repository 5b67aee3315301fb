//! Cart and orders on a real MariaDB (the `single` profile) and on the embedded SQLite file
//! (`single-sqlite`), the same checks on both: an order is one transaction over the stock, so
//! 50 concurrent orders for the last 10 items sell exactly 10; the cart, the order form and the
//! order history through the pages.

mod support;

use std::net::SocketAddr;

use support::{http, HttpResponse, Stack};

/// server-01's web server in a stack moved to `127.N.0.0/16`.
fn site_in(subnet: u8) -> SocketAddr {
    SocketAddr::from(([127, subnet, 2, 1], 8080))
}

fn up(stack: &Stack, profile: &str, subnet: u8) {
    let subnet = format!("127.{subnet}.0.0/16");
    stack.run_ok(&["up", "-d", "--profile", profile, "--subnet", &subnet, "--timeout", "120"]);
}

fn cookie_value(r: &HttpResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

fn json(site: SocketAddr, method: &str, path: &str, cookies: &str, body: &str) -> HttpResponse {
    http(method, site, path, &[("Content-Type", "application/json"), ("Cookie", cookies)], body).expect("answer")
}

/// A new account's session cookie.
fn sign_up(site: SocketAddr, email: &str) -> String {
    let r = json(site, "POST", "/api/v1/users", "", &format!(r#"{{"email": "{email}", "password": "long enough"}}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    format!("foobar_session={}", cookie_value(&r, "foobar_session").expect("session"))
}

#[test]
fn fifty_concurrent_orders_for_the_last_ten_items_sell_exactly_ten() {
    sell_the_last_ten("single", 225);
}

#[test]
fn fifty_concurrent_orders_for_the_last_ten_items_sell_exactly_ten_on_sqlite() {
    sell_the_last_ten("single-sqlite", 235);
}

fn sell_the_last_ten(profile: &str, subnet: u8) {
    let stack = Stack::new();
    up(&stack, profile, subnet);
    let site = site_in(subnet);
    let json = |method: &str, path: &str, cookies: &str, body: &str| json(site, method, path, cookies, body);
    let buyers: Vec<String> = (0..5).map(|i| sign_up(site, &format!("buyer{i}@example.com"))).collect();
    let admin = support::admin_session(&stack, site);
    let created =
        json("POST", "/api/v1/products", &admin, r#"{"name": "Last batch grinder", "price_cents": 9900, "stock": 10}"#);
    assert_eq!(created.status, 201, "{}", created.body);
    let shopper = json("POST", "/api/v1/products", &buyers[0], r#"{"name": "Mine", "price_cents": 1}"#);
    assert_eq!(shopper.status, 403, "only admins add products: {}", shopper.body);
    let product: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let id = product["id"].as_i64().unwrap();

    let order = format!(r#"{{"items": [{{"product_id": {id}, "quantity": 1}}]}}"#);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let (cookie, order, json) = (&buyers[i % 5], &order, &json);
                s.spawn(move || {
                    let r = json("POST", "/api/v1/orders", cookie, order);
                    (r.status, r.body)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let sold = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status == 409).collect();
    assert_eq!(sold, 10, "exactly the stock is sold: {answers:?}");
    assert_eq!(refused.len(), 40, "every other order is refused, none fails: {answers:?}");
    assert!(refused.iter().all(|(_, body)| body.contains("sold out")), "{refused:?}");

    // The stock and the order history agree. Reads may come from a replica: ask until the
    // last order has arrived there (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p: serde_json::Value =
            serde_json::from_str(&json("GET", &format!("/api/v1/products/{id}"), "", "").body).unwrap();
        if p["stock"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stock never reached 0: {p}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut bought = 0;
    for buyer in &buyers {
        let history: serde_json::Value = serde_json::from_str(&json("GET", "/api/v1/orders", buyer, "").body).unwrap();
        for order in history["orders"].as_array().unwrap() {
            assert_eq!(order["total_cents"], 9900);
            bought += order["lines"].as_array().unwrap().iter().map(|l| l["quantity"].as_i64().unwrap()).sum::<i64>();
        }
    }
    assert_eq!(bought, 10, "the histories hold the ten orders that were sold");

    // Bad orders: 4xx with a message, nothing written.
    for (body, status) in [
        (r#"{"items": [{"product_id": 1, "quantity": 0}]}"#.to_string(), 422),
        (r#"{"items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]}"#.to_string(), 422),
        (r#"{"items": [{"product_id": 999999, "quantity": 1}]}"#.to_string(), 409),
        (r#"{}"#.to_string(), 409),
    ] {
        let r = json("POST", "/api/v1/orders", &buyers[0], &body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    assert_eq!(json("POST", "/api/v1/orders", "", &order).status, 401, "orders need an account");

    // The admin restocks (shoppers may not), and the product sells again.
    let restock = r#"{"name": "Last batch grinder", "price_cents": 9900, "stock": 5}"#;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(json("PUT", &path, &buyers[1], restock).status, 403);
    let restocked = json("PUT", &path, &admin, restock);
    assert_eq!(restocked.status, 200, "{}", restocked.body);
    assert_eq!(json("PUT", "/api/v1/products/999999", &admin, restock).status, 404);
    // MariaDB names the write (read-your-writes); SQLite is its own writer, nothing to wait for.
    let buyer = match restocked.header("x-gtid").filter(|g| !g.is_empty()) {
        Some(gtid) => format!("{}; foobar_gtid={gtid}", buyers[2]),
        None => buyers[2].clone(),
    };
    let again = json("POST", "/api/v1/orders", &buyer, &order);
    assert_eq!(again.status, 201, "{}", again.body);
    let edit_page = json("GET", &format!("/products/{id}/edit"), &admin, "");
    assert!(edit_page.status == 200 && edit_page.body.contains("Change a product"), "{}", edit_page.body);
    assert_eq!(json("GET", &format!("/products/{id}/edit"), &buyers[0], "").status, 403);
    assert_eq!(json("GET", "/products/new", "", "").status, 303, "visitors are sent to log in");
}

#[test]
fn the_cart_and_the_order_history_through_the_pages() {
    cart_and_history_through_the_pages("single", 226);
}

#[test]
fn the_cart_and_the_order_history_through_the_pages_on_sqlite() {
    cart_and_history_through_the_pages("single-sqlite", 236);
}

fn cart_and_history_through_the_pages(profile: &str, subnet: u8) {
    let stack = Stack::new();
    up(&stack, profile, subnet);
    let site = site_in(subnet);
    let page = |path: &str, jar: &str| http("GET", site, path, &[("Cookie", jar)], "").expect("answer");
    let form = |path: &str, jar: &str, body: &str| {
        http("POST", site, path, &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", jar)], body)
            .expect("answer")
    };

    let signup_page = page("/signup", "");
    let csrf = cookie_value(&signup_page, "foobar_csrf").expect("csrf");
    let jar = format!("foobar_csrf={csrf}");
    let signed_up = form("/signup", &jar, &format!("email=cart%40example.com&password=long+enough&csrf={csrf}"));
    assert_eq!(signed_up.status, 303, "{}", signed_up.body);
    let mut jar = format!("{jar}; foobar_session={}", cookie_value(&signed_up, "foobar_session").unwrap());
    let with_gtid = |jar: &str, r: &HttpResponse| match cookie_value(r, "foobar_gtid") {
        Some(g) => format!("{jar}; foobar_gtid={g}"),
        None => jar.to_string(),
    };
    assert_eq!(page("/cart", "").status, 303, "the cart needs an account");

    let product = page("/products/2", &jar);
    assert!(product.body.contains("in stock") && product.body.contains("Add to cart"), "{}", product.body);
    let added = form("/cart", &jar, &format!("product_id=2&quantity=3&csrf={csrf}"));
    assert_eq!(added.status, 303, "{}", added.body);
    jar = with_gtid(&jar, &added);
    let cart = page("/cart", &jar);
    assert!(cart.body.contains("Pour-over kettle") && cart.body.contains("$135.00"), "{}", cart.body);
    assert_eq!(form("/cart", &jar, &format!("product_id=2&quantity=500&csrf={csrf}")).status, 422);

    let placed = form("/orders", &jar, &format!("csrf={csrf}"));
    assert_eq!(placed.status, 303, "{}", placed.body);
    jar = with_gtid(&jar, &placed);
    let history = page("/orders", &jar);
    assert!(history.body.contains("3 × ") && history.body.contains("Pour-over kettle"), "{}", history.body);
    assert!(history.body.contains("total $135.00"), "{}", history.body);
    assert!(page("/cart", &jar).body.contains("Your cart is empty"), "the order emptied the cart");
    let empty = form("/orders", &jar, &format!("csrf={csrf}"));
    assert_eq!(empty.status, 409);
    assert!(empty.body.contains("The cart is empty."), "{}", empty.body);
}
