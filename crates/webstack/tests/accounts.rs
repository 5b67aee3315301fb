//! Accounts on a real MariaDB (the `single` profile): sign up, log in and out through the
//! pages and the API, argon2 hashes behind them, session cookies with their flags, and CSRF
//! tokens that every form must carry. The API's sessions also on the embedded SQLite file.

mod support;

use std::net::SocketAddr;

use support::{get, http, HttpResponse, Stack};

fn site() -> SocketAddr {
    "127.223.2.1:8080".parse().unwrap()
}

/// The `name=value` part of every Set-Cookie of a response, by name.
fn set_cookies(r: &HttpResponse) -> Vec<(String, String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| {
            let (pair, flags) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=')?;
            Some((name.to_string(), value.to_string(), flags.to_string()))
        })
        .collect()
}

fn cookie_value(r: &HttpResponse, name: &str) -> Option<String> {
    set_cookies(r).into_iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v)
}

fn post_form(path: &str, cookies: &str, body: &str) -> HttpResponse {
    http("POST", site(), path, &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", cookies)], body)
        .expect("answer")
}

fn get_with(path: &str, cookies: &str) -> HttpResponse {
    http("GET", site(), path, &[("Cookie", cookies)], "").expect("answer")
}

#[test]
fn sign_up_log_out_and_in_with_csrf_checked_forms() {
    let stack = Stack::new();
    stack.run_ok(&["up", "-d", "--profile", "single", "--subnet", "127.223.0.0/16", "--timeout", "120"]);

    // The form's page hands out a CSRF cookie and puts the same token in the form.
    let page = get(site(), "/signup").expect("sign-up page");
    assert_eq!(page.status, 200, "{}", page.body);
    let (_, csrf, flags) = set_cookies(&page).into_iter().find(|(n, _, _)| n == "foobar_csrf").expect("csrf cookie");
    assert!(flags.contains("HttpOnly") && flags.contains("SameSite=Lax"), "{flags}");
    assert!(page.body.contains(&format!("value=\"{csrf}\"")), "{}", page.body);
    let jar = format!("foobar_csrf={csrf}");

    // Forged or expired forms are refused before anything is checked or written.
    let body = format!("email=ada%40example.com&password=correct+horse&csrf={csrf}");
    assert_eq!(post_form("/signup", "", &body).status, 403, "no cookie");
    let wrong = post_form("/signup", &jar, "email=ada%40example.com&password=correct+horse&csrf=x");
    assert_eq!(wrong.status, 403, "a token that is not the cookie's");

    // Bad input: 422 with a message, and the form again.
    let bad = post_form("/signup", &jar, &format!("email=ada&password=correct+horse&csrf={csrf}"));
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("needs an @"), "{}", bad.body);
    let short = post_form("/signup", &jar, &format!("email=ada%40example.com&password=short&csrf={csrf}"));
    assert_eq!(short.status, 422);
    assert!(short.body.contains("at least 8 characters"), "{}", short.body);

    // A good sign-up signs in at once: an HttpOnly, SameSite session cookie.
    let signed_up = post_form("/signup", &jar, &body);
    assert_eq!(signed_up.status, 303, "{}", signed_up.body);
    let (_, session, flags) =
        set_cookies(&signed_up).into_iter().find(|(n, _, _)| n == "foobar_session").expect("session cookie");
    assert!(flags.contains("HttpOnly") && flags.contains("SameSite=Lax") && flags.contains("Max-Age="), "{flags}");
    let gtid = cookie_value(&signed_up, "foobar_gtid").expect("gtid cookie");
    let signed_in = format!("{jar}; foobar_session={session}; foobar_gtid={gtid}");
    let home = get_with("/", &signed_in);
    assert!(home.body.contains("Signed in as ada@example.com"), "{}", home.body);
    let me = get_with("/api/v1/me", &signed_in);
    assert_eq!(me.status, 200);
    assert!(me.body.contains("\"email\":\"ada@example.com\""), "{}", me.body);

    let again = post_form("/signup", &jar, &body.replace("ada%40", "ADA%40"));
    assert_eq!(again.status, 409, "an address is one account, whatever its case");
    assert!(again.body.contains("exists"), "{}", again.body);

    // Log out: the session ends on the server, not only in the browser.
    assert_eq!(post_form("/logout", &signed_in, "csrf=nope").status, 403);
    let out = post_form("/logout", &signed_in, &format!("csrf={csrf}"));
    assert_eq!(out.status, 303);
    assert_eq!(cookie_value(&out, "foobar_session").as_deref(), Some(""), "the cookie is cleared");
    let gtid = cookie_value(&out, "foobar_gtid").unwrap_or(gtid);
    let stale = format!("{jar}; foobar_session={session}; foobar_gtid={gtid}");
    assert!(!get_with("/", &stale).body.contains("Signed in as"), "the old session cookie no longer works");
    assert_eq!(get_with("/api/v1/me", &stale).status, 401);

    // Log in: a wrong password and an unknown address get the same answer.
    let wrong = post_form("/login", &jar, &format!("email=ada%40example.com&password=wrong+horse&csrf={csrf}"));
    let unknown = post_form("/login", &jar, &format!("email=bob%40example.com&password=wrong+horse&csrf={csrf}"));
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert!(wrong.body.contains("is wrong") && unknown.body.contains("is wrong"));
    let logged_in = post_form("/login", &jar, &body);
    assert_eq!(logged_in.status, 303, "{}", logged_in.body);
    let session = cookie_value(&logged_in, "foobar_session").expect("a new session");
    let gtid = cookie_value(&logged_in, "foobar_gtid").expect("gtid");
    assert!(get_with("/", &format!("{jar}; foobar_session={session}; foobar_gtid={gtid}"))
        .body
        .contains("Signed in as"));
}

#[test]
fn the_api_opens_and_closes_sessions_with_json() {
    api_sessions("single", 224);
}

#[test]
fn the_api_opens_and_closes_sessions_with_json_on_sqlite() {
    api_sessions("single-sqlite", 238);
}

fn api_sessions(profile: &str, subnet: u8) {
    let stack = Stack::new();
    let range = format!("127.{subnet}.0.0/16");
    stack.run_ok(&["up", "-d", "--profile", profile, "--subnet", &range, "--timeout", "120"]);
    let site = SocketAddr::from(([127, subnet, 2, 1], 8080));
    // MariaDB names each write for read-your-writes; the embedded database is its own writer.
    let replicated = profile != "single-sqlite";
    let json = |method: &str, path: &str, cookies: &str, body: &str| {
        http(method, site, path, &[("Content-Type", "application/json"), ("Cookie", cookies)], body).expect("answer")
    };

    let created = json("POST", "/api/v1/users", "", r#"{"email": "Grace@Example.com", "password": "hopper1906"}"#);
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created.body.contains("\"email\":\"grace@example.com\""), "{}", created.body);
    let session = cookie_value(&created, "foobar_session").expect("session");
    let gtid = cookie_value(&created, "foobar_gtid").unwrap_or_default();
    assert_eq!(gtid.is_empty(), !replicated, "a GTID cookie exactly where there are replicas");
    let jar = format!("foobar_session={session}; foobar_gtid={gtid}");
    assert_eq!(json("GET", "/api/v1/me", &jar, "").status, 200);

    let taken = json("POST", "/api/v1/users", "", r#"{"email": "grace@example.com", "password": "hopper1906"}"#);
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(taken.body.contains("\"error\""), "{}", taken.body);
    for (body, status) in [
        (r#"{"email": "grace", "password": "hopper1906"}"#, 422),
        (r#"{"email": "x@y.io", "password": "short"}"#, 422),
        (r#"{"email": "x@y.io"}"#, 422),
        (r#"{"email": "x@y.io", "password": "hopper1906", "admin": true}"#, 422),
        ("not json", 400),
    ] {
        let r = json("POST", "/api/v1/users", "", body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }

    assert_eq!(
        json("POST", "/api/v1/session", "", r#"{"email": "grace@example.com", "password": "nope-nope"}"#).status,
        401
    );
    let login = json("POST", "/api/v1/session", "", r#"{"email": "grace@example.com", "password": "hopper1906"}"#);
    assert_eq!(login.status, 200, "{}", login.body);
    let session = cookie_value(&login, "foobar_session").expect("session");
    let jar =
        format!("foobar_session={session}; foobar_gtid={}", cookie_value(&login, "foobar_gtid").unwrap_or_default());
    let out = json("DELETE", "/api/v1/session", &jar, "");
    assert_eq!(out.status, 204);
    let jar =
        format!("foobar_session={session}; foobar_gtid={}", cookie_value(&out, "foobar_gtid").unwrap_or_default());
    assert_eq!(json("GET", "/api/v1/me", &jar, "").status, 401, "the session ended on the server");
}
