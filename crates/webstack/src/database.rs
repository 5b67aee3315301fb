//! `webstack db status`: the database cluster as its nodes report it — role, GTID positions
//! (applied and received), lag, semi-sync state and replication errors — one line per node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use supervisor::state_dir::StateDir;
use topology::{Component, Probe};

/// Each db node's name and admin address, from the running stack's plan.
fn db_nodes(state_dir: &Path) -> Result<Vec<(String, SocketAddr)>> {
    let state = StateDir::new(state_dir)?;
    let plan = state.read_plan().with_context(|| format!("no stack in {} (run `webstack up`)", state_dir.display()))?;
    Ok(plan
        .components()
        .filter(|(_, c)| c.component == Component::Db)
        .filter_map(|(h, c)| match &c.probe {
            Probe::Http { address, .. } => Some((h.name.clone(), *address)),
            Probe::Tcp { .. } => None,
        })
        .collect())
}

pub fn status(state_dir: &Path, json: bool) -> Result<()> {
    let nodes = db_nodes(state_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answers: Vec<(String, Result<serde_json::Value, String>)> = runtime.block_on(async {
        let mut answers = Vec::new();
        for (name, admin) in nodes {
            let answer = match supervisor::probe::http_get(admin, "/status", Duration::from_secs(2)).await {
                Ok((200, body)) => serde_json::from_str(&body).map_err(|e| format!("bad answer: {e}")),
                Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
                Err(e) => Err(e),
            };
            answers.push((name, answer));
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
        if let Some(e) = replica["last_error"].as_str().filter(|e| !e.is_empty()) {
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
