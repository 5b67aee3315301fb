//! The db component's admin listener: `/healthz` (the server answers SQL), `/status` (role,
//! lag and GTID positions as JSON) and `/metrics`.

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
use crate::sql;

pub async fn serve(config: Arc<DbConfig>) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(config.admin_listen).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let config = config.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let config = config.clone();
                    async move { Ok::<_, Infallible>(handle(&config, req).await) }
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

async fn handle(config: &DbConfig, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/status" | "/metrics") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    let status = match sql::admin(config).await {
        Ok(mut conn) => sql::status(config, &mut conn).await,
        Err(e) => Err(e),
    };
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

fn metrics(s: &sql::NodeStatus, up: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP webstack_db_up 1 when the server answers SQL.\n# TYPE webstack_db_up gauge\nwebstack_db_up {}",
        up as u8
    );
    let _ = writeln!(out, "# HELP webstack_db_writable 1 when read_only is OFF.\n# TYPE webstack_db_writable gauge\nwebstack_db_writable {}", (up && !s.read_only) as u8);
    if let Some(r) = &s.replica {
        let _ = writeln!(out, "# HELP webstack_db_replication_running 1 when both replication threads run.\n# TYPE webstack_db_replication_running gauge\nwebstack_db_replication_running {}", (r.io_running && r.sql_running) as u8);
        if let Some(lag) = r.lag_seconds {
            let _ = writeln!(out, "# HELP webstack_db_replication_lag_seconds Seconds_Behind_Master.\n# TYPE webstack_db_replication_lag_seconds gauge\nwebstack_db_replication_lag_seconds {lag}");
        }
    }
    out
}
