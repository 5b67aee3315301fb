//! `webstack db status`: the database cluster as its nodes report it — role, GTID positions
//! (applied and received), lag, semi-sync state and replication errors — one line per node.
//! `webstack db switchover [--to NODE]`: a planned change of primary that loses no write.
//! `webstack db rejoin NODE [--force]`: a node back into the cluster as a replica.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use supervisor::state_dir::StateDir;
use topology::{Component, Probe};

/// A database node of the running stack, from its plan.
struct Node {
    name: String,
    sql: SocketAddr,
    admin: SocketAddr,
}

fn db_nodes(state_dir: &Path) -> Result<Vec<Node>> {
    let state = StateDir::new(state_dir)?;
    let plan = state.read_plan().with_context(|| format!("no stack in {} (run `webstack up`)", state_dir.display()))?;
    let nodes: Vec<Node> = plan
        .components()
        .filter(|(_, c)| c.component == Component::Db)
        .filter_map(|(h, c)| match (&c.probe, c.listen.first()) {
            (Probe::Http { address, .. }, Some(sql)) => Some(Node { name: h.name.clone(), sql: *sql, admin: *address }),
            _ => None,
        })
        .collect();
    if nodes.is_empty() {
        bail!(
            "profile `{}` runs no MariaDB node: its app keeps the shop in an embedded SQLite file \
             (`database = \"sqlite://…\"` in the topology), with no replicas to manage",
            plan.profile
        );
    }
    Ok(nodes)
}

/// A node's `/status`, or why there is none.
async fn node_status(admin: SocketAddr) -> Result<serde_json::Value, String> {
    match supervisor::probe::http_get(admin, "/status", Duration::from_secs(2)).await {
        Ok((200, body)) => serde_json::from_str(&body).map_err(|e| format!("bad answer: {e}")),
        Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
        Err(e) => Err(e),
    }
}

/// A planned switchover: the primary turns read-only (writes pause), the target applies all it
/// had and becomes writable, and every other node, the old primary included, replicates from
/// it. No acknowledged write is lost: the target waits for the old primary's last position.
pub fn switchover(state_dir: &Path, to: Option<&str>) -> Result<()> {
    let nodes = db_nodes(state_dir)?;
    let token = StateDir::new(state_dir)?.secrets()?.db_admin_password;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut statuses = Vec::new();
        for node in nodes {
            let status = node_status(node.admin).await.ok();
            statuses.push((node.name, node.sql, node.admin, status));
        }
        let primaries: Vec<_> =
            statuses.iter().filter(|(_, _, _, s)| s.as_ref().is_some_and(|s| s["role"] == "primary")).collect();
        let [primary] = primaries.as_slice() else {
            anyhow::bail!("a switchover needs exactly one primary; found {}", primaries.len());
        };
        let replicas: Vec<_> =
            statuses.iter().filter(|(_, _, _, s)| s.as_ref().is_some_and(|s| s["role"] == "replica")).collect();
        let target = match to {
            Some(name) => replicas
                .iter()
                .find(|(n, _, _, _)| n == name)
                .with_context(|| format!("{name} is not a replica that answers; see `webstack db status`"))?,
            None => replicas
                .iter()
                .max_by_key(|(_, _, _, s)| {
                    s.as_ref().map(|s| db::manager::sequence(s["replica"]["gtid_io_pos"].as_str().unwrap_or("")))
                })
                .context("no replica answers to take over")?,
        };
        let started = std::time::Instant::now();
        let position = post(primary.2, "/demote", &token).await.with_context(|| format!("demoting {}", primary.0))?;
        let position = position.trim().replace(',', "%2C");
        post(target.2, &format!("/promote?after={position}"), &token)
            .await
            .with_context(|| format!("promoting {} (the old primary is read-only now)", target.0))?;
        let paused = started.elapsed();
        println!("{} is the primary; writes were paused for {} ms", target.0, paused.as_millis());
        for (name, _, admin, status) in &statuses {
            if name == &target.0 || status.is_none() {
                continue;
            }
            match post(*admin, &format!("/replicate?from={}", target.1), &token).await {
                Ok(_) => println!("{name} replicates from {}", target.0),
                Err(e) => println!("{name} could not be repointed: {e:#}"),
            }
        }
        Ok(())
    })
}

/// Brings a node back into the cluster as a replica of the primary. A node that holds
/// transactions the cluster never received cannot replicate: it is reported, and rebuilt from
/// the primary only with `force` (what it alone held is lost).
pub fn rejoin(state_dir: &Path, node: &str, force: bool) -> Result<()> {
    let nodes = db_nodes(state_dir)?;
    let token = StateDir::new(state_dir)?.secrets()?.db_admin_password;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let admin = &nodes.iter().find(|n| n.name == node).with_context(|| format!("no database node {node}"))?.admin;
        let mut primary = None;
        for n in nodes.iter().filter(|n| n.name != node) {
            if node_status(n.admin).await.is_ok_and(|s| s["role"] == "primary") {
                primary = Some((n.name.clone(), n.sql));
            }
        }
        let (primary_name, primary_sql) = primary.context("no other node is the primary; see `webstack db status`")?;
        if force {
            let position = post(*admin, &format!("/rebuild?from={primary_sql}"), &token)
                .await
                .with_context(|| format!("rebuilding {node}"))?;
            println!("{node} was rebuilt from {primary_name} (at {}) and replicates from it", position.trim());
            return Ok(());
        }
        post(*admin, &format!("/replicate?from={primary_sql}"), &token)
            .await
            .with_context(|| format!("rejoining {node}"))?;
        // Replication reports a diverged node within a moment of starting.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = node_status(*admin).await.map_err(anyhow::Error::msg)?;
        if let Some(diverged) = s["diverged"].as_str() {
            anyhow::bail!("{node} {diverged}");
        }
        println!("{node} replicates from {primary_name}");
        Ok(())
    })
}

/// A POST with the admin token to a db node's admin listener; the body of a 200 answer.
async fn post(admin: SocketAddr, path: &str, token: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), exchange).await.context("no answer in 20 s")??;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_string()),
        other => anyhow::bail!("{} answered {}: {}", admin, other.unwrap_or("nothing"), body.trim()),
    }
}

pub fn status(state_dir: &Path, json: bool) -> Result<()> {
    let nodes = db_nodes(state_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answers: Vec<(String, Result<serde_json::Value, String>)> = runtime.block_on(async {
        let mut answers = Vec::new();
        for node in nodes {
            answers.push((node.name, node_status(node.admin).await));
        }
        answers
    });
    if json {
        let all: Vec<serde_json::Value> = answers
            .iter()
            .map(|(name, a)| match a {
                Ok(v) => v.clone(),
                Err(e) => serde_json::json!({ "name": name, "error": e }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    print!("{}", render(&answers));
    Ok(())
}

fn render(answers: &[(String, Result<serde_json::Value, String>)]) -> String {
    let mut out = format!(
        "{:<11} {:<9} {:<18} {:<18} {:>5}  {}\n",
        "NODE", "ROLE", "GTID APPLIED", "GTID RECEIVED", "LAG", "SEMI-SYNC / ERRORS"
    );
    for (name, answer) in answers {
        let s = match answer {
            Ok(s) => s,
            Err(e) => {
                out.push_str(&format!("{name:<11} {:<9} {:<18} {:<18} {:>5}  {e}\n", "DOWN", "-", "-", "-"));
                continue;
            }
        };
        let text = |v: &serde_json::Value| v.as_str().filter(|t| !t.is_empty()).unwrap_or("-").to_string();
        let replica = &s["replica"];
        let lag = match replica["lag_seconds"].as_u64() {
            Some(l) => format!("{l}s"),
            None if replica.is_object() => "stopped".into(),
            None => "-".into(),
        };
        let semi = &s["semi_sync"];
        let mut notes = Vec::new();
        if s["role"] == "primary" {
            notes.push(match (semi["enabled"].as_bool(), semi["active"].as_bool()) {
                (Some(true), Some(true)) => format!(
                    "on: {} replica(s), {} commits acknowledged, {} not",
                    semi["clients"], semi["acknowledged"], semi["not_acknowledged"]
                ),
                (Some(true), _) => format!(
                    "FELL BACK TO ASYNC: {} commits went out unacknowledged; writes may be lost at a failover",
                    semi["not_acknowledged"]
                ),
                _ => "off: no replica attached yet".into(),
            });
        } else if semi["replica_acknowledging"] == true {
            notes.push("acknowledging".into());
        }
        if let Some(d) = s["diverged"].as_str() {
            notes.push(format!("DIVERGED: {d}"));
        } else if let Some(e) = replica["last_error"].as_str().filter(|e| !e.is_empty()) {
            notes.push(format!("error: {e}"));
        }
        out.push_str(&format!(
            "{name:<11} {:<9} {:<18} {:<18} {:>5}  {}\n",
            text(&s["role"]),
            text(&s["gtid_current_pos"]),
            text(&replica["gtid_io_pos"]),
            lag,
            notes.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_when_semi_sync_fell_back_and_which_node_is_down() {
        let primary = serde_json::json!({
            "name": "server-01", "role": "primary", "gtid_current_pos": "0-1-42",
            "semi_sync": { "enabled": true, "active": false, "clients": 0, "acknowledged": 40, "not_acknowledged": 2 }
        });
        let replica = serde_json::json!({
            "name": "server-02", "role": "replica", "gtid_current_pos": "0-1-40",
            "replica": { "lag_seconds": 0, "gtid_io_pos": "0-1-40", "last_error": "" },
            "semi_sync": { "replica_acknowledging": true }
        });
        let table = render(&[
            ("server-01".into(), Ok(primary)),
            ("server-02".into(), Ok(replica)),
            ("server-03".into(), Err("connect 127.0.2.3:9104: refused".into())),
        ]);
        assert!(table.contains("FELL BACK TO ASYNC: 2 commits"), "{table}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("server-02") && l.contains("0-1-40") && l.contains("acknowledging")));
        assert!(table.lines().any(|l| l.starts_with("server-03") && l.contains("DOWN")), "{table}");
    }
}
