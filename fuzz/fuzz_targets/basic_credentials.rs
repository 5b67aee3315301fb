//! What a client sends as `Authorization` to a route with basic_auth, as bytes: never a
//! panic, and a user read never holds the colon that ends it (RFC 7617).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    if let Some((user, _password)) = proxy::basic_auth::credentials(&value) {
        assert!(!user.contains(':'));
    }
});
