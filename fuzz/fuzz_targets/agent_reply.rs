//! What a server's agent answers an agent check, as bytes: never a panic, and never a weight
//! above the configured one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let advice = proxy::agent::parse(data);
    assert!(advice.weight_percent.is_none_or(|p| p <= 100));
});
