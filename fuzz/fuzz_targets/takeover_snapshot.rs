//! What a running proxy's admin listener answers a process taking over from it (`GET
//! /api/servers`), as bytes: never a panic, whatever is listening there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::takeover::parse_answer(data);
});
