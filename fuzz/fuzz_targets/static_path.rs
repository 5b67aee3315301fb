//! Request paths against the static file resolver, and header values against the Range and
//! Accept-Encoding parsers: never a panic, never a path outside the root, never a range past
//! the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let root = std::env::temp_dir().join("webstack-fuzz-static");
    let _ = std::fs::create_dir_all(root.join("css"));
    let Ok(root) = root.canonicalize() else { return };
    if let Ok(resolved) = proxy::static_files::resolve(&root, "/static/", text) {
        assert!(resolved.starts_with(&root), "{text:?} resolved to {resolved:?}");
    }
    if let Ok(value) = http::HeaderValue::from_str(text) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RANGE, value);
        for len in [0u64, 1, 100] {
            if let Ok(Some((start, end))) = proxy::static_files::requested_range(&headers, len) {
                assert!(start <= end && end < len, "{text:?} gave {start}-{end} of {len}");
            }
        }
    }
    let _ = proxy::static_files::accepts(text, "br");
});
