//! The state dir of one stack (default `.webstack/`): rendered configs, the plan, logs, pid
//! files, database datadirs, secrets and the supervisor's control socket. Nothing outside it
//! is written.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use topology::{Plan, Secrets};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `path` made absolute (it is not created here).
    pub fn new(path: impl AsRef<Path>) -> io::Result<StateDir> {
        Ok(StateDir { root: std::path::absolute(path.as_ref())? })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    pub fn supervisor_pid_path(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{}.log", id.replace('/', "-")))
    }

    pub fn pid_path(&self, id: &str) -> PathBuf {
        self.root.join("run").join(format!("{}.pid", id.replace('/', "-")))
    }

    pub fn create(&self) -> io::Result<()> {
        for dir in [self.root.clone(), self.logs_dir(), self.root.join("run"), self.root.join("config")] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    /// The stack's passwords, made once with the stack and kept (mode 0600).
    pub fn secrets(&self) -> io::Result<Secrets> {
        let path = self.root.join("secrets.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(mut secrets) = serde_json::from_str::<Secrets>(&text) {
                if !secrets.ha_key.is_empty() && !secrets.shop_admin_password.is_empty() {
                    return Ok(secrets);
                }
                // Made before the load-balancer pair or the shop's admin existed: add what is
                // missing, keep the rest.
                if secrets.ha_key.is_empty() {
                    secrets.ha_key = random_token()?;
                }
                if secrets.shop_admin_password.is_empty() {
                    secrets.shop_admin_password = random_token()?;
                }
                write_private(&path, serde_json::to_string_pretty(&secrets).map_err(io::Error::other)?.as_bytes())?;
                return Ok(secrets);
            }
        }
        let secrets = Secrets {
            db_admin_password: random_token()?,
            db_app_password: random_token()?,
            db_repl_password: random_token()?,
            ha_key: random_token()?,
            shop_admin_password: random_token()?,
        };
        write_private(&path, serde_json::to_string_pretty(&secrets).map_err(io::Error::other)?.as_bytes())?;
        Ok(secrets)
    }

    /// Writes the plan and every component's rendered config.
    pub fn write_plan(&self, plan: &Plan) -> io::Result<()> {
        for (_, c) in plan.components() {
            write_private(&c.config_file, c.config.as_bytes())?;
        }
        let json = serde_json::to_string_pretty(plan).map_err(io::Error::other)?;
        std::fs::write(self.plan_path(), json)
    }

    pub fn read_plan(&self) -> io::Result<Plan> {
        let text = std::fs::read_to_string(self.plan_path()).map_err(|e| {
            io::Error::new(e.kind(), format!("no stack in {} ({e}); run `webstack up` first", self.root.display()))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.plan_path().display())))
    }

    /// The pid in a pid file, if that process still runs.
    pub fn live_pid(&self, path: &Path) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }
}

pub fn process_alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie still "exists", so look at its state too.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
