//! The db component's admin listener: `/healthz` (the server answers SQL), `/status` (role,
//! lag, GTID positions and semi-sync state as JSON) and `/metrics`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::config::DbConfig;
use crate::manager::Manager;
use crate::semi_sync::Watch;
use crate::{roles, sql};

pub async fn serve(config: Arc<DbConfig>, watch: Arc<Watch>, manager: Arc<Manager>) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(config.admin_listen).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (config, watch, manager) = (config.clone(), watch.clone(), manager.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (config, watch, manager) = (config.clone(), watch.clone(), manager.clone());
                    async move { Ok::<_, Infallible>(handle(&config, &watch, &manager, req).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }))
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

async fn handle(config: &DbConfig, watch: &Watch, manager: &Manager, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == hyper::Method::POST {
        return change_role(config, &req).await;
    }
    let path = req.uri().path();
    if path == "/manager" {
        return reply(StatusCode::OK, "application/json", serde_json::to_string(&manager.view()).unwrap_or_default());
    }
    if !matches!(path, "/healthz" | "/status" | "/metrics") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    let status = match sql::admin(config).await {
        Ok(mut conn) => sql::status(config, &mut conn).await,
        Err(e) => Err(e),
    };
    // The watch's reading, at most 200 ms old, rather than one more query per probe.
    let status = status.map(|mut s| {
        s.semi_sync = watch.last();
        s.manager = (config.managers.len() >= 2).then(|| manager.view());
        if s.role == "primary" {
            s.role_note = s.semi_sync.as_ref().map(|m| match (m.enabled, m.active) {
                (true, true) => "semi-sync".to_string(),
                // Loud on purpose: acknowledged writes could be lost at a failover now.
                (true, false) => "ASYNC!".to_string(),
                (false, _) => "async".to_string(),
            });
        } else if s.diverged.is_some() {
            s.role_note = Some("DIVERGED".to_string());
        }
        s
    });
    match (path, status) {
        (_, Ok(s)) if path == "/healthz" => reply(StatusCode::OK, "text/plain", format!("ok {}\n", s.role)),
        (_, Ok(s)) if path == "/status" => {
            reply(StatusCode::OK, "application/json", serde_json::to_string(&s).unwrap_or_default())
        }
        (_, Ok(s)) => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(&s, true)),
        ("/metrics", Err(_)) => {
            reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(&sql::NodeStatus::default(), false))
        }
        (_, Err(e)) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("database unavailable: {e}\n")),
    }
}

/// `POST /demote`, `/promote?after=GTID`, `/replicate?from=ADDRESS` and
/// `/rebuild?from=ADDRESS`: what a switchover, a rejoin (or the failover manager) asks of a node. They change who takes writes, so they need the admin
/// password as a bearer token.
async fn change_role(config: &DbConfig, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let token = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let expected = format!("Bearer {}", config.accounts.admin_password);
    if !token.is_some_and(|t| same_secret(t, &expected)) {
        return reply(StatusCode::UNAUTHORIZED, "text/plain", "the admin password is needed\n".into());
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.replace("%2C", ","))
    };
    let mut conn = match sql::admin(config).await {
        Ok(conn) => conn,
        Err(e) => return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("database unavailable: {e}\n")),
    };
    let done = match req.uri().path() {
        "/demote" => roles::demote(config, &mut conn).await,
        "/promote" => roles::promote(config, &mut conn, param("after").as_deref()).await.map(|()| String::new()),
        "/replicate" => match param("from").and_then(|f| f.parse().ok()) {
            Some(primary) => roles::replicate_from(config, &mut conn, primary).await.map(|()| String::new()),
            None => return reply(StatusCode::BAD_REQUEST, "text/plain", "from=IP:PORT is needed\n".into()),
        },
        "/rebuild" => match param("from").and_then(|f| f.parse().ok()) {
            Some(primary) => roles::rebuild_from(config, &mut conn, primary).await,
            None => return reply(StatusCode::BAD_REQUEST, "text/plain", "from=IP:PORT is needed\n".into()),
        },
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    match done {
        Ok(answer) => {
            tracing::warn!(node = config.name, action = req.uri().path(), "role changed on request");
            reply(StatusCode::OK, "text/plain", format!("{answer}\n"))
        }
        Err(e) => {
            tracing::error!(node = config.name, action = req.uri().path(), error = %e, "role change failed");
            reply(StatusCode::CONFLICT, "text/plain", format!("{e}\n"))
        }
    }
}

fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn metrics(s: &sql::NodeStatus, up: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP webstack_db_up 1 when the server answers SQL.\n# TYPE webstack_db_up gauge\nwebstack_db_up {}",
        up as u8
    );
    let _ = writeln!(out, "# HELP webstack_db_writable 1 when read_only is OFF.\n# TYPE webstack_db_writable gauge\nwebstack_db_writable {}", (up && !s.read_only) as u8);
    if let Some(m) = &s.semi_sync {
        let _ = writeln!(out, "# HELP webstack_db_semi_sync_enabled 1 when commits are to wait for a replica.\n# TYPE webstack_db_semi_sync_enabled gauge\nwebstack_db_semi_sync_enabled {}", m.enabled as u8);
        let _ = writeln!(out, "# HELP webstack_db_semi_sync_active 1 while commits do wait for a replica; 0 when enabled means it fell back to asynchronous.\n# TYPE webstack_db_semi_sync_active gauge\nwebstack_db_semi_sync_active {}", m.active as u8);
        let _ = writeln!(out, "# HELP webstack_db_semi_sync_clients Replicas attached as semi-sync clients.\n# TYPE webstack_db_semi_sync_clients gauge\nwebstack_db_semi_sync_clients {}", m.clients);
        let _ = writeln!(out, "# HELP webstack_db_semi_sync_acknowledged_total Commits a replica acknowledged.\n# TYPE webstack_db_semi_sync_acknowledged_total counter\nwebstack_db_semi_sync_acknowledged_total {}", m.acknowledged);
        let _ = writeln!(out, "# HELP webstack_db_semi_sync_not_acknowledged_total Commits that went out without a replica's acknowledgement.\n# TYPE webstack_db_semi_sync_not_acknowledged_total counter\nwebstack_db_semi_sync_not_acknowledged_total {}", m.not_acknowledged);
    }
    if let Some(r) = &s.replica {
        let _ = writeln!(out, "# HELP webstack_db_replication_running 1 when both replication threads run.\n# TYPE webstack_db_replication_running gauge\nwebstack_db_replication_running {}", (r.io_running && r.sql_running) as u8);
        if let Some(lag) = r.lag_seconds {
            let _ = writeln!(out, "# HELP webstack_db_replication_lag_seconds Seconds_Behind_Master.\n# TYPE webstack_db_replication_lag_seconds gauge\nwebstack_db_replication_lag_seconds {lag}");
        }
    }
    out
}
