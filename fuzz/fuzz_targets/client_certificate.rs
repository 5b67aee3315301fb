//! A client certificate's DER, described for the `$ssl_client_*` variables: never a panic,
//! and names that always fit a header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(described) = proxy::client_cert::describe(data) {
        for text in [&described.subject, &described.issuer, &described.serial, &described.fingerprint] {
            assert!(http::HeaderValue::from_str(text).is_ok(), "{text:?}");
        }
    }
});
