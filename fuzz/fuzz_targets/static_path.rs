//! Request paths against the static file resolver: never a panic, never a path outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let root = std::env::temp_dir().join("webstack-fuzz-static");
    let _ = std::fs::create_dir_all(root.join("css"));
    let Ok(root) = root.canonicalize() else { return };
    if let Ok(resolved) = proxy::static_files::resolve(&root, "/static/", path) {
        assert!(resolved.starts_with(&root), "{path:?} resolved to {resolved:?}");
    }
});
