//! Bytes from the network as a load-balancer advert: an error or an advert, never a panic;
//! what decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ha::advert::Key::new(b"fuzz");
    if let Ok(advert) = ha::advert::decode(data, &key) {
        assert_eq!(&ha::advert::encode(&advert, &key)[..], data);
    }
});
