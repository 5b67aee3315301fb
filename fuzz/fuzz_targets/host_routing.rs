//! Host headers and paths against the virtual-host router: never a panic, and a route chosen
//! for a host is one whose host matches it (or a default route when none does).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxy::config::{HostPattern, ProxyConfig};
use webstack_config::Source;

const CONFIG: &str = r#"
name = "fuzz"
[[listeners]]
name = "www"
bind = "127.0.0.1:8080"
[[listeners.routes]]
prefix = "/"
respond = { body = "default" }
[[listeners.routes]]
host = "shop.example.org"
exact = "/cart"
respond = { body = "shop" }
[[listeners.routes]]
host = "*.example.org"
prefix = "/a"
respond = { body = "wildcard" }
"#;

fuzz_target!(|data: &[u8]| {
    static CONFIG_LOADED: OnceLock<ProxyConfig> = OnceLock::new();
    let config = CONFIG_LOADED.get_or_init(|| {
        ProxyConfig::from_source(&Source::from_text("/fuzz/proxy.toml", CONFIG)).expect("the fuzz config is valid")
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (raw_host, path) = text.split_once('\n').unwrap_or((text, "/"));
    let host = proxy::config::host_name(raw_host);
    if let Some(h) = &host {
        assert_eq!(*h, h.to_ascii_lowercase());
    }
    if let Some(route) =
        config.listeners[0].route_for(host.as_deref(), path, &http::Method::GET, &http::HeaderMap::new())
    {
        match (&route.host, host.as_deref()) {
            (Some(HostPattern::Exact(name)), Some(h)) => assert_eq!(name, h),
            (Some(HostPattern::Wildcard(suffix)), Some(h)) => assert!(h.ends_with(suffix.as_str())),
            (Some(_), None) => panic!("a host route for a request without a host"),
            (None, _) => {}
        }
    }
});
