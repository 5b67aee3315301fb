//! The header fields a pool's cache reads from clients (Cache-Control, Pragma, Accept-Encoding,
//! If-None-Match, If-Modified-Since, Authorization) and servers (Cache-Control, Expires, Date,
//! Age, Vary, ETag, Last-Modified), as bytes: never a panic; nothing kept past `max_age`.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use proxy::cache::{Cache, CacheConfig, Lookup};

fn fields(text: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let (client, server) = data.split_at(data.iter().position(|&b| b == 0).unwrap_or(data.len()));
    let max_age = Duration::from_secs(60);
    let cache = std::sync::Arc::new(Cache::new(CacheConfig {
        max_bytes: 1 << 16,
        max_object_bytes: 1 << 12,
        max_age,
        stale_if_error: Duration::from_secs(60),
        lock_timeout: Duration::from_secs(1),
    }));
    let mut request = http::Request::get("/p").header("host", "x").body(()).unwrap_or_default();
    *request.headers_mut() = fields(client);
    request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("x"));
    let response = fields(server);
    let _ = proxy::cache::accepted_encodings(request.headers());
    if let Lookup::Miss(key, _filling) = cache.lookup(&request, false, true) {
        if let Some(lifetime) = cache.lifetime(http::StatusCode::OK, &response) {
            assert!(lifetime <= max_age);
            cache.store(key.clone(), http::StatusCode::OK, response, Bytes::from_static(b"body"), lifetime);
            let _ = cache.lookup(&request, false, false);
            let _ = cache.stale_answer(&key);
        }
    }
});
