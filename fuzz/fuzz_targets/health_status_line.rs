//! What a health-checked server answers, as bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(status) = proxy::health::parse_status(data) {
        assert!(status <= 999);
    }
});
