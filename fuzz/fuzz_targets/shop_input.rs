//! What shoppers and other nodes send the app and the database tools, as text: the form and
//! API field checks, the session and CSRF cookie checks, and the GTID positions the db admin
//! listener and the failover manager read. Never a panic; what passes is what was promised.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap_or(0));
    if let Ok(email) = app::accounts::valid_email(text) {
        assert!(email.contains('@') && email.len() <= 254 && email == email.to_lowercase());
    }
    let _ = app::accounts::valid_password(text);
    if app::accounts::well_formed_token(text) {
        assert_eq!(text.len(), 43);
    }
    let _ = app::accounts::same_secret(a, b);
    if let Ok(cents) = app::server::parse_price(text) {
        assert!(cents >= 0);
    }
    if let Ok(stock) = app::server::parse_stock(text) {
        assert!((0..=1_000_000).contains(&stock));
    }
    if let Ok((id, quantity)) = app::server::valid_cart_line(a, b) {
        assert!(id > 0 && (0..=99).contains(&quantity));
    }
    let _ = app::server::validate_product(a, b, app::server::parse_price(b));
    if db::roles::well_formed_gtids(text) {
        assert!(!text.contains('\'') && !text.contains(';'), "only digits, dashes and commas reach SQL");
    }
    let _ = db::manager::sequence(text);
});
