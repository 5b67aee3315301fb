//! What `webstack status` shows, as plain data (also its `--json` form).

use serde::{Deserialize, Serialize};
use topology::Plan;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackStatus {
    pub profile: String,
    pub site_url: String,
    #[serde(default)]
    pub site_https_url: Option<String>,
    /// The local CA to trust, when the stack made its own certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    pub site_name: String,
    pub supervisor_pid: Option<u32>,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub components: Vec<ComponentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    /// `running`, `stopped` or `failed`.
    pub state: String,
    pub pid: Option<u32>,
    pub listen: Vec<String>,
    /// `healthy`, `unhealthy` or `unknown` (not running, or not probed yet).
    pub health: String,
    /// `primary` or `replica` for databases; `null` where no role applies.
    pub role: Option<String>,
    /// A word on the role: a primary database's semi-sync state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_note: Option<String>,
    pub lag_seconds: Option<u64>,
    pub restarts: u32,
    /// Why the last probe failed or the process exited, when it did.
    pub detail: Option<String>,
}

impl StackStatus {
    /// The plan with every component stopped: the status of a stack whose supervisor is gone.
    pub fn offline(plan: &Plan) -> StackStatus {
        StackStatus {
            profile: plan.profile.clone(),
            site_url: plan.site_url.clone(),
            site_https_url: plan.site_https_url.clone(),
            ca_file: plan.ca_file.as_ref().map(|p| p.display().to_string()),
            site_name: plan.site_name.clone(),
            supervisor_pid: None,
            hosts: plan
                .hosts
                .iter()
                .map(|h| HostStatus {
                    name: h.name.clone(),
                    address: h.address.to_string(),
                    components: h
                        .components
                        .iter()
                        .map(|c| ComponentStatus {
                            name: c.component.name().into(),
                            state: "stopped".into(),
                            pid: None,
                            listen: c.listen.iter().map(|a| a.to_string()).collect(),
                            health: "unknown".into(),
                            role: None,
                            role_note: None,
                            lag_seconds: None,
                            restarts: 0,
                            detail: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn all_healthy(&self) -> bool {
        self.hosts.iter().flat_map(|h| &h.components).all(|c| c.state == "running" && c.health == "healthy")
    }

    pub fn components(&self) -> impl Iterator<Item = (&HostStatus, &ComponentStatus)> {
        self.hosts.iter().flat_map(|h| h.components.iter().map(move |c| (h, c)))
    }

    /// A table for people: one line per component.
    pub fn render(&self) -> String {
        let https = self.site_https_url.as_deref().map(|u| format!(" and {u}")).unwrap_or_default();
        let mut out = format!(
            "profile {}   site {}{https} ({})   supervisor {}\n\n",
            self.profile,
            self.site_url,
            self.site_name,
            self.supervisor_pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "not running".into())
        );
        out.push_str(&format!(
            "{:<11} {:<12} {:<5} {:<8} {:>8} {:<10} {:<19} {}\n",
            "HOST", "ADDRESS", "COMP", "STATE", "PID", "HEALTH", "ROLE", "LISTEN"
        ));
        for (h, c) in self.components() {
            let role = match (&c.role, c.lag_seconds) {
                (Some(r), _) if c.role_note.is_some() => format!("{r} ({})", c.role_note.as_deref().unwrap_or("")),
                (Some(r), Some(lag)) if r == "replica" => format!("{r} (lag {lag}s)"),
                (Some(r), None) if r == "replica" => format!("{r} (stopped)"),
                (Some(r), _) => r.clone(),
                (None, _) => "-".into(),
            };
            out.push_str(&format!(
                "{:<11} {:<12} {:<5} {:<8} {:>8} {:<10} {:<19} {}\n",
                h.name,
                h.address,
                c.name,
                c.state,
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                c.health,
                role,
                c.listen.join(" ")
            ));
        }
        out
    }
}
