//! Every config parser (topology, proxy, app, db) on arbitrary text: errors, never a panic,
//! and every error placed on a line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webstack_config::{ConfigErrors, Source};

fn check(text: &str, result: Result<(), ConfigErrors>) {
    if let Err(errors) = result {
        let lines = text.lines().count().max(1);
        for e in errors.0 {
            assert!(e.line.is_none_or(|l| l >= 1 && l <= lines + 1), "{e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = Source::from_text("/fuzz/webstack.toml", text);
    check(text, topology::Topology::from_source(&src).map(drop));
    // Host names of servers are looked up by a resolver that never asks the network.
    let no_dns = |_: &str, _: u16| Err(std::io::Error::other("no DNS while fuzzing"));
    check(text, proxy::ProxyConfig::from_source_resolving(&src, &no_dns).map(drop));
    check(text, app::AppConfig::from_source(&src).map(drop));
    check(text, db::DbConfig::from_source(&src).map(drop));
    let _ = src.locate(text);
});
