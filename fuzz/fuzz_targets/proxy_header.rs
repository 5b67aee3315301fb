//! What a layer-4 balancer (or anyone) sends first to a listener with `accept_proxy`, as
//! bytes: never a panic, and a header found never claims more bytes than were received.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(header)) = proxy::proxy_protocol::parse(data) {
        assert!(header.length <= data.len() && header.length <= proxy::proxy_protocol::V2_MAX);
    }
});
