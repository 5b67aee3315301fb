//! What an upstream server answers, as bytes cut at any point: the response head parser and
//! the chunked body decoder never panic, never take bytes they did not consume, and a body
//! never grows past what arrived.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proxy::client::{parse_response_head, Chunked};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = (cut as usize).min(data.len());
    let mut buf = BytesMut::from(&data[..cut]);
    if let Ok(Some(_)) = parse_response_head(&mut buf, false) {
        assert!(buf.len() <= cut);
    }
    let mut chunked = Chunked::new();
    let mut body = 0usize;
    let mut buf = BytesMut::new();
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(data)) = chunked.decode(&mut buf) {
            assert!(!data.is_empty());
            body += data.len();
        }
    }
    assert!(body <= data.len());
});
