//! The admin listener: `/healthz` (200 while every pool has a server up), `/ready` (200 only
//! while every server of every pool is up), `/metrics` in Prometheus text format, and
//! `/stats`, a plain page of every pool and server like HAProxy's stats page, `GET
//! /api/servers` (JSON), and the runtime API: `POST /reload`, `POST
//! /api/servers/POOL/SERVER/state/{ready,drain,maint}`, `POST /api/servers/POOL/SERVER/weight/N`,
//! `POST /api/servers/POOL/SERVER/address/IP:PORT`, `POST /api/cache/POOL/purge[?prefix=/p/]`.
//! Reading is open to the `allow`ed (anyone by default); the runtime API answers only the
//! `change_from` addresses (this host by default), others get a 403.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::config::MAX_WEIGHT;
use crate::forward::error_response;
use crate::process::ProcessInfo;
use crate::server::{Proxy, Runtime};
use crate::upstream::{AdminState, PoolState, LATENCY_BUCKETS};

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) async fn handle(proxy: &Arc<Proxy>, req: Request<Incoming>, client: IpAddr) -> Response<ProxyBody> {
    let runtime = proxy.runtime();
    let pools = &runtime.pools;
    let path = req.uri().path();
    let access = &runtime.config.admin_access;
    if !access.may_read(client) {
        return error_response(StatusCode::FORBIDDEN);
    }
    if req.method() == Method::POST {
        if !access.may_change(client) {
            let why = "changes through the admin listener are taken only from its change_from addresses (by default, this host)\n";
            return text(StatusCode::FORBIDDEN, why.into());
        }
        return match path {
            "/reload" => match proxy.reload().await {
                Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("reload failed; the running config stays:\n{e}\n")),
            },
            _ => match (path.strip_prefix("/api/servers/"), path.strip_prefix("/api/cache/")) {
                (Some(rest), _) => change_server(pools, rest),
                (_, Some(rest)) => purge_cache(pools, rest, req.uri().query()),
                _ => error_response(StatusCode::NOT_FOUND),
            },
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(StatusCode::METHOD_NOT_ALLOWED);
    }
    let (body, content_type) = match path {
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
        "/metrics" => {
            let mut out = metrics(&runtime);
            proxy.process.write_metrics(&mut out);
            (out, "text/plain; version=0.0.4; charset=utf-8")
        }
        "/stats" | "/" => (stats(&runtime, &proxy.process), "text/plain; charset=utf-8"),
        "/api/info" => (proxy.process.json(&runtime.config.name), "application/json"),
        "/api/servers" => (servers_json(pools), "application/json"),
        "/ha" => match &proxy.ha {
            Some(ha) => (
                serde_json::json!({
                    "role": ha.state(),
                    "state": ha.state(),
                    "quorum": ha.quorum.load(Ordering::Relaxed),
                    "healthy": ha.healthy.load(Ordering::Relaxed),
                    "vip": runtime.config.ha.as_ref().map(|h| h.vip.to_string()),
                    // Set while the node is held out after failing to take the VIP.
                    "vip_error": ha.take_failure(),
                })
                .to_string(),
                "application/json",
            ),
            None => return error_response(StatusCode::NOT_FOUND),
        },
        _ => return error_response(StatusCode::NOT_FOUND),
    };
    let mut response = Response::new(ProxyBody::full(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// `POST /api/cache/POOL/purge`: drops the pool's cached answers, or with `?prefix=/static/`
/// those whose path starts so (after a deploy).
fn purge_cache(pools: &[Arc<PoolState>], rest: &str, query: Option<&str>) -> Response<ProxyBody> {
    let Some(pool_name) = rest.strip_suffix("/purge") else {
        return text(
            StatusCode::NOT_FOUND,
            "use /api/cache/POOL/purge or /api/cache/POOL/purge?prefix=/path/\n".into(),
        );
    };
    let Some(pool) = pools.iter().find(|p| p.config.name == pool_name) else {
        return text(StatusCode::NOT_FOUND, format!("no pool `{pool_name}`\n"));
    };
    let Some(cache) = &pool.cache else {
        return text(StatusCode::CONFLICT, format!("pool `{pool_name}` has no cache\n"));
    };
    let prefix = query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("prefix=")));
    let prefix = prefix.map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    if prefix.as_deref().is_some_and(|p| !p.starts_with('/')) {
        return text(StatusCode::BAD_REQUEST, "a prefix is a path: it starts with /\n".into());
    }
    let gone = cache.purge(prefix.as_deref());
    tracing::warn!(
        pool = pool_name,
        prefix = prefix.as_deref().unwrap_or("(all)"),
        gone,
        "cache purged through the runtime API"
    );
    text(StatusCode::OK, format!("{pool_name}: {gone} cached answers dropped\n"))
}

/// The runtime API, as HAProxy's `set server`: `POST /api/servers/POOL/SERVER/state/{ready,
/// drain,maint}` and `POST /api/servers/POOL/SERVER/weight/N`: these last until the process
/// ends, reloads included. `POST /api/servers/POOL/SERVER/address/IP:PORT` (HAProxy's `set
/// server … addr`) moves a server until the config or DNS says otherwise: a reload loads the
/// file's address, as HAProxy does without a state file.
fn change_server(pools: &[Arc<PoolState>], rest: &str) -> Response<ProxyBody> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [pool_name, server_name, what, value] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            "use /api/servers/POOL/SERVER/state/{ready,drain,maint}, /api/servers/POOL/SERVER/weight/N or /api/servers/POOL/SERVER/address/IP:PORT\n".into(),
        );
    };
    let Some(pool) = pools.iter().find(|p| p.config.name == *pool_name) else {
        return text(StatusCode::NOT_FOUND, format!("no pool `{pool_name}`\n"));
    };
    let Some(server) = pool.servers.iter().find(|s| s.config.name == *server_name) else {
        return text(StatusCode::NOT_FOUND, format!("no server `{server_name}` in pool `{pool_name}`\n"));
    };
    match (*what, *value) {
        ("state", state) => {
            let Some(state) = AdminState::from_name(state) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown state `{state}`; expected ready, drain or maint\n"),
                );
            };
            server.set_admin(state);
            tracing::warn!(
                pool = pool_name,
                server = server_name,
                state = state.name(),
                "admin state set through the runtime API"
            );
            text(StatusCode::OK, format!("{pool_name}/{server_name} is now {}\n", state.name()))
        }
        ("weight", weight) => match weight.parse::<u32>() {
            Ok(w) if w <= MAX_WEIGHT => {
                server.set_weight(w);
                pool.rebalance();
                tracing::warn!(
                    pool = pool_name,
                    server = server_name,
                    weight = w,
                    "weight set through the runtime API"
                );
                text(StatusCode::OK, format!("{pool_name}/{server_name} weight is now {w}\n"))
            }
            _ => text(StatusCode::BAD_REQUEST, format!("weight `{weight}` is not a number from 0 to {MAX_WEIGHT}\n")),
        },
        ("address", _) if server.config.unix.is_some() => text(
            StatusCode::CONFLICT,
            format!("{pool_name}/{server_name} listens on a Unix socket; change it in the config and reload\n"),
        ),
        ("address", address) => match address.parse::<std::net::SocketAddr>() {
            Ok(address) if address.port() != 0 && !address.ip().is_unspecified() => {
                let old = server.follow_addresses(&[address.ip()], address.port());
                tracing::warn!(
                    pool = pool_name,
                    server = server_name,
                    %address,
                    "address set through the runtime API"
                );
                let was = old.map_or_else(|| "unchanged".to_string(), |o| format!("was {o}"));
                text(StatusCode::OK, format!("{pool_name}/{server_name} address is now {address} ({was})\n"))
            }
            _ => text(StatusCode::BAD_REQUEST, format!("address `{address}` is not ip:port\n")),
        },
        (other, _) => {
            text(StatusCode::NOT_FOUND, format!("unknown setting `{other}`; expected state, weight or address\n"))
        }
    }
}

fn servers_json(pools: &[Arc<PoolState>]) -> String {
    let pools: Vec<serde_json::Value> = pools
        .iter()
        .map(|p| {
            let servers: Vec<serde_json::Value> = p
                .servers
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.config.name,
                        "address": s.shown_address(),
                        "up": s.is_up(),
                        "admin": s.admin().name(),
                        "weight": s.weight(),
                        "config_weight": s.config.weight,
                        "backup": s.config.backup,
                        "in_flight": s.in_flight.load(Ordering::Relaxed),
                        "maxconn": s.config.maxconn,
                        "requests": s.requests.load(Ordering::Relaxed),
                        "last_check": s.last_check(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.config.name,
                "queued": p.queued.load(Ordering::Relaxed),
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({ "pools": pools }).to_string()
}

fn unavailable(body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Per pool with a cache: hits, misses (GET and HEAD that went to the servers), and what it holds.
fn write_cache_metrics(out: &mut String, pools: &[Arc<PoolState>]) {
    let families = [
        ("webstack_proxy_cache_hits_total", "counter", "Requests answered from the pool's cache."),
        ("webstack_proxy_cache_misses_total", "counter", "GET and HEAD requests the cache could not answer."),
        (
            "webstack_proxy_cache_stale_total",
            "counter",
            "Requests answered from stale entries because the servers failed (stale_if_error_ms).",
        ),
        ("webstack_proxy_cache_entries", "gauge", "Answers held in the pool's cache."),
        ("webstack_proxy_cache_bytes", "gauge", "Bytes the pool's cache holds, headers included."),
    ];
    if pools.iter().all(|p| p.cache.is_none()) {
        return;
    }
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools {
            let Some(cache) = &pool.cache else { continue };
            let (entries, bytes) = cache.usage();
            let value = match name {
                "webstack_proxy_cache_hits_total" => cache.hits.load(Ordering::Relaxed),
                "webstack_proxy_cache_misses_total" => cache.misses.load(Ordering::Relaxed),
                "webstack_proxy_cache_stale_total" => cache.stale_hits.load(Ordering::Relaxed),
                "webstack_proxy_cache_entries" => entries as u64,
                _ => bytes as u64,
            };
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {value}", pool.config.name);
        }
    }
}

pub(crate) fn metrics(runtime: &Runtime) -> String {
    let (pools, listeners) = (&runtime.pools, &runtime.config.listeners);
    let mut out = String::new();
    let workers = tokio::runtime::Handle::try_current().map(|h| h.metrics().num_workers()).unwrap_or(1);
    let _ = writeln!(
        out,
        "# HELP webstack_proxy_workers Threads serving connections.\n# TYPE webstack_proxy_workers gauge\nwebstack_proxy_workers {workers}"
    );
    let families: [(&str, &str, &str); 7] = [
        ("webstack_proxy_server_up", "gauge", "1 when the server takes traffic, 0 when health checks took it out."),
        ("webstack_proxy_requests_total", "counter", "Requests sent to the server, retries included."),
        (
            "webstack_proxy_responses_total",
            "counter",
            "Responses by status class, including the proxy's own 502/504 for the server.",
        ),
        ("webstack_proxy_connect_failures_total", "counter", "Requests that could not be sent to the server."),
        (
            "webstack_proxy_retries_total",
            "counter",
            "Requests this server got again after a server failed them or did not process them.",
        ),
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
    write_cache_metrics(&mut out, pools);
    let name = "webstack_proxy_response_bytes_total";
    let _ = writeln!(out, "# HELP {name} Response body bytes streamed from the server.\n# TYPE {name} counter");
    for pool in pools {
        for s in &pool.servers {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",server=\"{}\"}} {}",
                pool.config.name,
                s.config.name,
                s.bytes_out.load(Ordering::Relaxed)
            );
        }
    }
    let name = "webstack_proxy_response_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From sending a request to the server to its response's headers.\n# TYPE {name} histogram"
    );
    for pool in pools {
        for s in &pool.servers {
            let labels = format!("pool=\"{}\",server=\"{}\"", pool.config.name, s.config.name);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&s.latency.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let total = s.latency.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let sum = s.latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
    let name = "webstack_proxy_request_bytes_total";
    let _ = writeln!(out, "# HELP {name} Request body bytes sent to the pool's servers.\n# TYPE {name} counter");
    for pool in pools {
        let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", pool.config.name, pool.request_bytes.load(Ordering::Relaxed));
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
    type Reading = fn(&PoolState) -> u64;
    let queue: [(&str, &str, &str, Reading); 2] = [
        ("webstack_proxy_queued_requests", "gauge", "Requests waiting for a server under its maxconn.", |p| {
            p.queued.load(Ordering::Relaxed)
        }),
        (
            "webstack_proxy_queue_timeouts_total",
            "counter",
            "Requests answered 503 after waiting the whole queue timeout.",
            |p| p.queue_timeouts.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in queue {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", pool.config.name, value(pool));
        }
    }
    rate_limit_metrics(&mut out, listeners);
    listener_metrics(&mut out, runtime);
    out
}

/// Per listener, as HAProxy's frontend counters.
fn listener_metrics(out: &mut String, runtime: &Runtime) {
    let listeners = || runtime.config.listeners.iter().zip(&runtime.listeners);
    let families: [(&str, &str, &str); 6] = [
        ("webstack_proxy_listener_connections", "gauge", "Client connections open now."),
        ("webstack_proxy_listener_connections_total", "counter", "Client connections accepted."),
        (
            "webstack_proxy_listener_connections_refused_total",
            "counter",
            "Connections closed for max_connections_per_client.",
        ),
        (
            "webstack_proxy_listener_requests_total",
            "counter",
            "Requests answered, the proxy's own answers (404, 403, 429, 503...) included.",
        ),
        ("webstack_proxy_listener_responses_total", "counter", "Answers by status class, the proxy's own included."),
        ("webstack_proxy_listener_tls_handshake_failures_total", "counter", "TLS handshakes that failed or timed out."),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (listener, stats) in listeners() {
            let labels = format!("listener=\"{}\"", listener.name);
            let value = match name {
                "webstack_proxy_listener_connections" => stats.open.count.load(Ordering::Relaxed) as u64,
                "webstack_proxy_listener_connections_total" => stats.accepted.load(Ordering::Relaxed),
                "webstack_proxy_listener_connections_refused_total" => stats.refused_per_client.load(Ordering::Relaxed),
                "webstack_proxy_listener_requests_total" => stats.requests.load(Ordering::Relaxed),
                "webstack_proxy_listener_responses_total" => {
                    for (class, count) in CLASSES.iter().zip(&stats.responses) {
                        let _ = writeln!(out, "{name}{{{labels},class=\"{class}\"}} {}", count.load(Ordering::Relaxed));
                    }
                    continue;
                }
                _ if listener.tls.is_none() => continue,
                _ => stats.tls_failures.load(Ordering::Relaxed),
            };
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Requests refused for their route's rate, per listener and route.
fn rate_limit_metrics(out: &mut String, listeners: &[crate::config::Listener]) {
    let name = "webstack_proxy_rate_limited_total";
    let _ = writeln!(out, "# HELP {name} Requests answered 429 for their route's rate.\n# TYPE {name} counter");
    for listener in listeners {
        for route in &listener.routes {
            if let Some(limit) = &route.rate_limit {
                let host = route.host.as_ref().map(|h| h.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",host=\"{host}\",route=\"{}\"}} {}",
                    listener.name,
                    route.path,
                    limit.refused.load(Ordering::Relaxed)
                );
            }
        }
    }
}

fn stats(runtime: &Runtime, process: &ProcessInfo) -> String {
    let pools = &runtime.pools;
    let mut out = format!("{}\n\n", process.summary(&runtime.config.name));
    let _ = writeln!(
        out,
        "{:<18} {:<22} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "listener", "address", "conns", "conns-total", "requests", "2xx", "3xx", "4xx", "5xx"
    );
    for (listener, s) in runtime.config.listeners.iter().zip(&runtime.listeners) {
        let class = |i: usize| s.responses[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{:<18} {:<22} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8}",
            listener.name,
            listener.bind.to_string(),
            s.open.count.load(Ordering::Relaxed),
            s.accepted.load(Ordering::Relaxed),
            s.requests.load(Ordering::Relaxed),
            class(1),
            class(2),
            class(3),
            class(4),
        );
    }
    out.push('\n');
    for pool in pools {
        let up = pool.servers.iter().filter(|s| s.is_up()).count();
        let queued = pool.queued.load(Ordering::Relaxed);
        let _ = writeln!(out, "pool {} ({up}/{} up, {queued} queued)", pool.config.name, pool.servers.len());
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<5} {:<6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6}  last check",
            "server",
            "address",
            "state",
            "admin",
            "weight",
            "requests",
            "2xx",
            "5xx",
            "conn-err",
            "active",
            "maxconn",
            "idle"
        );
        for s in &pool.servers {
            let _ = writeln!(
                out,
                "  {:<16} {:<22} {:<5} {:<6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6}  {}",
                s.config.name,
                s.shown_address(),
                if s.is_up() { "UP" } else { "DOWN" },
                s.admin().name(),
                s.weight(),
                s.requests.load(Ordering::Relaxed),
                s.responses[1].load(Ordering::Relaxed),
                s.responses[4].load(Ordering::Relaxed),
                s.connect_failures.load(Ordering::Relaxed),
                s.in_flight.load(Ordering::Relaxed),
                s.config.maxconn.map_or_else(|| "-".to_string(), |m| m.to_string()),
                s.idle_count(),
                s.last_check(),
            );
        }
        out.push('\n');
    }
    out
}
