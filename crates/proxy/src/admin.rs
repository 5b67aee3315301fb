//! The admin listener: `/healthz` (200 while every pool has a server up), `/ready` (200 only
//! while every server of every pool is up), `/metrics` in Prometheus text format, and
//! `/stats`, a plain page of every pool and server like HAProxy's stats page.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::forward::error_response;
use crate::upstream::PoolState;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn handle<B>(name: &str, pools: &[std::sync::Arc<PoolState>], req: &Request<B>) -> Response<ProxyBody> {
    let (body, content_type) = match req.uri().path() {
        "/healthz" => match pools.iter().find(|p| !p.servers.iter().any(|s| s.is_up())) {
            None => ("ok\n".to_string(), "text/plain; charset=utf-8"),
            Some(p) => return unavailable(format!("pool {} has no server up\n", p.config.name)),
        },
        "/ready" => {
            let down: Vec<String> = pools
                .iter()
                .flat_map(|p| {
                    p.servers.iter().filter(|s| !s.is_up()).map(move |s| format!("{}/{}", p.config.name, s.config.name))
                })
                .collect();
            match down.is_empty() {
                true => ("ok: every server is up\n".to_string(), "text/plain; charset=utf-8"),
                false => return unavailable(format!("down: {}\n", down.join(", "))),
            }
        }
        "/metrics" => (metrics(pools), "text/plain; version=0.0.4; charset=utf-8"),
        "/stats" | "/" => (stats(name, pools), "text/plain; charset=utf-8"),
        _ => return error_response(StatusCode::NOT_FOUND),
    };
    let mut response = Response::new(ProxyBody::full(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn unavailable(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

pub fn metrics(pools: &[std::sync::Arc<PoolState>]) -> String {
    let mut out = String::new();
    let families: [(&str, &str, &str); 7] = [
        ("webstack_proxy_server_up", "gauge", "1 when the server takes traffic, 0 when health checks took it out."),
        ("webstack_proxy_requests_total", "counter", "Requests sent to the server, retries included."),
        (
            "webstack_proxy_responses_total",
            "counter",
            "Responses by status class, including the proxy's own 502/504 for the server.",
        ),
        ("webstack_proxy_connect_failures_total", "counter", "Requests that could not be sent to the server."),
        ("webstack_proxy_retries_total", "counter", "Requests this server got after another server failed them."),
        ("webstack_proxy_idle_connections", "gauge", "Idle keep-alive connections to the server."),
        ("webstack_proxy_in_flight_requests", "gauge", "Requests sent to the server and not yet answered in full."),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools {
            for s in &pool.servers {
                let labels = format!("pool=\"{}\",server=\"{}\"", pool.config.name, s.config.name);
                match name {
                    "webstack_proxy_responses_total" => {
                        for (class, count) in CLASSES.iter().zip(&s.responses) {
                            let _ =
                                writeln!(out, "{name}{{{labels},class=\"{class}\"}} {}", count.load(Ordering::Relaxed));
                        }
                    }
                    _ => {
                        let value = match name {
                            "webstack_proxy_server_up" => s.is_up() as u64,
                            "webstack_proxy_requests_total" => s.requests.load(Ordering::Relaxed),
                            "webstack_proxy_connect_failures_total" => s.connect_failures.load(Ordering::Relaxed),
                            "webstack_proxy_retries_total" => s.retries.load(Ordering::Relaxed),
                            "webstack_proxy_idle_connections" => s.idle_count() as u64,
                            _ => s.in_flight.load(Ordering::Relaxed),
                        };
                        let _ = writeln!(out, "{name}{{{labels}}} {value}");
                    }
                }
            }
        }
    }
    let name = "webstack_proxy_no_server_available_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests answered 503 because no server of the pool was up.\n# TYPE {name} counter"
    );
    for pool in pools {
        let _ = writeln!(
            out,
            "{name}{{pool=\"{}\"}} {}",
            pool.config.name,
            pool.no_server_available.load(Ordering::Relaxed)
        );
    }
    out
}

fn stats(name: &str, pools: &[std::sync::Arc<PoolState>]) -> String {
    let mut out = format!("webstack proxy {name}\n\n");
    for pool in pools {
        let up = pool.servers.iter().filter(|s| s.is_up()).count();
        let _ = writeln!(out, "pool {} ({up}/{} up)", pool.config.name, pool.servers.len());
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<5} {:>9} {:>8} {:>8} {:>8} {:>6}",
            "server", "address", "state", "requests", "2xx", "5xx", "conn-err", "idle"
        );
        for s in &pool.servers {
            let _ = writeln!(
                out,
                "  {:<16} {:<22} {:<5} {:>9} {:>8} {:>8} {:>8} {:>6}",
                s.config.name,
                s.config.address.to_string(),
                if s.is_up() { "UP" } else { "DOWN" },
                s.requests.load(Ordering::Relaxed),
                s.responses[1].load(Ordering::Relaxed),
                s.responses[4].load(Ordering::Relaxed),
                s.connect_failures.load(Ordering::Relaxed),
                s.idle_count(),
            );
        }
        out.push('\n');
    }
    out
}
