//! The supervisor's loop: start every component of the plan, reap and restart what crashes,
//! probe health, and answer the control socket until `down` or a shutdown signal.

use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use topology::{Component, Plan, PlannedComponent, Probe};

use crate::control::{Answer, Request};
use crate::probe;
use crate::state_dir::StateDir;
use crate::status::StackStatus;

const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A rolling restart: how long the edges' requests in flight on a server may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A rolling restart: how long a restarted app's host may take to be healthy again.
const HEALTHY_AGAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

struct Slot {
    host: String,
    planned: PlannedComponent,
    child: Option<Child>,
    state: State,
    /// False after `webstack kill`: a drill's kill is not undone by a restart.
    wanted: bool,
    healthy: Option<bool>,
    role: Option<String>,
    /// A word on the role (a primary's semi-sync state), when the component gives one.
    role_note: Option<String>,
    lag_seconds: Option<u64>,
    restarts: u32,
    crashes_in_row: u32,
    restart_at: Option<Instant>,
    detail: Option<String>,
}

impl Slot {
    fn id(&self) -> String {
        self.planned.id(&self.host)
    }
}

pub struct Supervisor {
    plan: Plan,
    state_dir: StateDir,
    exe: PathBuf,
    slots: Vec<Slot>,
}

type ControlMessage = (Request, oneshot::Sender<Answer>);

/// Sets `host`'s web server to `state` (`maint`, `ready`) in an edge's pool `web`, which names
/// servers after their hosts; `Err` says why the edge would not.
async fn set_in_pool(admin: SocketAddr, host: &str, state: &str) -> Result<(), String> {
    match probe::http_post(admin, &format!("/api/servers/web/{host}/state/{state}"), PROBE_TIMEOUT).await? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{status}: {}", body.trim())),
    }
}

/// Puts `host`'s web server in maintenance at each edge and waits until none of them has a
/// request in flight there. Returns the edges that took it; what failed is said.
async fn take_out_of_pools(
    edges: &[(String, SocketAddr)],
    host: &str,
    said: &mut Vec<String>,
) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for (edge, admin) in edges {
        match set_in_pool(*admin, host, "maint").await {
            Ok(()) => out.push((edge.clone(), *admin)),
            Err(e) => said.push(format!("{edge} would not take {host} out ({e})")),
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for (edge, admin) in &out {
        while in_flight_at(*admin, host).await.unwrap_or(0) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        said.push(format!("out of {edge}'s pool first"));
    }
    out
}

/// The requests an edge has in flight on its server `host`, from its `/api/servers`.
async fn in_flight_at(admin: SocketAddr, host: &str) -> Option<u64> {
    let (_, body) = probe::http_get(admin, "/api/servers", PROBE_TIMEOUT).await.ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let pool = json["pools"].as_array()?.iter().find(|p| p["name"] == "web")?;
    pool["servers"].as_array()?.iter().find(|s| s["name"] == host)?["in_flight"].as_u64()
}

async fn put_back_in_pools(edges: &[(String, SocketAddr)], host: &str, said: &mut Vec<String>) {
    for (edge, admin) in edges {
        match set_in_pool(*admin, host, "ready").await {
            Ok(()) => said.push(format!("back in {edge}'s pool")),
            Err(e) => said.push(format!("{edge} would not put {host} back ({e})")),
        }
    }
}

/// Asks `child` to stop (SIGTERM: it drains).
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a plain kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Waits for `child`, told to stop, to exit; SIGKILL after STOP_TIMEOUT.
async fn wait_or_kill(child: &mut Child, id: &str) {
    if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
        tracing::warn!(component = id, "did not stop within {} s; killing it", STOP_TIMEOUT.as_secs());
        let _ = child.kill().await;
    }
}

/// Stops `child` as `down` does: SIGTERM, then SIGKILL if it has not exited in time.
async fn stop_child(child: &mut Child, id: &str) {
    terminate(child);
    wait_or_kill(child, id).await;
}

/// Start order: databases first, the edge last, so each finds what it needs sooner.
fn start_rank(c: Component) -> u8 {
    match c {
        Component::Db | Component::Dns => 0,
        Component::App => 1,
        Component::Web => 2,
        Component::Edge => 3,
    }
}

impl Supervisor {
    /// `exe` is the `webstack` binary that runs each component.
    pub fn new(plan: Plan, state_dir: StateDir, exe: PathBuf) -> Supervisor {
        let mut slots: Vec<Slot> = plan
            .components()
            .map(|(h, c)| Slot {
                host: h.name.clone(),
                planned: c.clone(),
                child: None,
                state: State::Stopped,
                wanted: true,
                healthy: None,
                role: None,
                role_note: None,
                lag_seconds: None,
                restarts: 0,
                crashes_in_row: 0,
                restart_at: None,
                detail: None,
            })
            .collect();
        slots.sort_by_key(|s| start_rank(s.planned.component));
        Supervisor { plan, state_dir, exe, slots }
    }

    /// Runs the stack until `down` arrives on the control socket or `shutdown` completes;
    /// then stops every component. `on_healthy` is called once, when all are first healthy.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_healthy: impl FnMut(&StackStatus),
    ) -> io::Result<()> {
        self.state_dir.create()?;
        let socket = self.state_dir.socket_path();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .map_err(|e| io::Error::new(e.kind(), format!("control socket {}: {e}", socket.display())))?;
        std::fs::write(self.state_dir.supervisor_pid_path(), std::process::id().to_string())?;
        let (control_tx, mut control_rx) = mpsc::channel::<ControlMessage>(16);
        let acceptor = tokio::spawn(accept_control(listener, control_tx));

        for i in 0..self.slots.len() {
            self.spawn(i);
        }
        let mut probes: JoinSet<(usize, ProbeResult)> = JoinSet::new();
        let mut probe_tick = tokio::time::interval(PROBE_EVERY);
        let mut reap_tick = tokio::time::interval(Duration::from_millis(100));
        let mut announced = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = reap_tick.tick() => self.reap_and_restart(),
                _ = probe_tick.tick() => {
                    if probes.is_empty() {
                        for (i, slot) in self.slots.iter().enumerate() {
                            if slot.state == State::Running {
                                let planned = slot.planned.clone();
                                probes.spawn(async move { (i, probe_component(&planned).await) });
                            }
                        }
                    }
                }
                Some(done) = probes.join_next(), if !probes.is_empty() => {
                    if let Ok((i, result)) = done {
                        self.record_probe(i, result);
                    }
                    if probes.is_empty() && !announced {
                        let status = self.status();
                        if status.all_healthy() {
                            announced = true;
                            on_healthy(&status);
                        }
                    }
                }
                Some((request, reply)) = control_rx.recv() => {
                    let down = matches!(request, Request::Down);
                    if down {
                        self.stop_all().await;
                    }
                    let _ = reply.send(self.handle(request).await);
                    if down {
                        break;
                    }
                }
            }
        }
        self.stop_all().await;
        acceptor.abort();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(self.state_dir.supervisor_pid_path());
        Ok(())
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &[]);
    }

    /// Starts slot `i`'s component with `extra` arguments after its config.
    fn spawn_with(&mut self, i: usize, extra: &[String]) {
        let id = self.slots[i].id();
        let log_path = self.state_dir.log_path(&id);
        let slot = &mut self.slots[i];
        let result = (|| {
            let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
            let mut cmd = Command::new(&self.exe);
            cmd.arg(&slot.planned.command)
                .arg("--config")
                .arg(&slot.planned.config_file)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .env("WEBSTACK_COMPONENT", &id);
            let std_cmd = cmd.as_std_mut();
            // Its own process group: Ctrl-C in the terminal reaches the supervisor only, which
            // then stops components in order.
            std_cmd.process_group(0);
            // If the supervisor dies, its components stop too rather than run unmanaged.
            unsafe {
                std_cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.spawn()
        })();
        match result {
            Ok(child) => {
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(self.state_dir.pid_path(&id), pid.to_string());
                }
                tracing::info!(component = id, pid = child.id(), "started");
                slot.child = Some(child);
                slot.state = State::Running;
                slot.healthy = None;
                slot.detail = None;
            }
            Err(e) => {
                tracing::error!(component = id, error = %e, "could not start");
                slot.state = State::Failed;
                slot.detail = Some(format!("could not start: {e}"));
            }
        }
    }

    fn reap_and_restart(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(child) = &mut slot.child {
                if let Ok(Some(exit)) = child.try_wait() {
                    let id = slot.id();
                    slot.child = None;
                    slot.healthy = None;
                    slot.role = None;
                    slot.role_note = None;
                    let _ = std::fs::remove_file(self.state_dir.pid_path(&id));
                    if slot.wanted {
                        slot.state = State::Failed;
                        slot.crashes_in_row += 1;
                        let backoff =
                            Duration::from_millis(250 * 2u64.pow(slot.crashes_in_row.min(6))).min(MAX_BACKOFF);
                        slot.restart_at = Some(now + backoff);
                        slot.detail = Some(format!(
                            "exited ({exit}); restarting in {} ms; see {}",
                            backoff.as_millis(),
                            self.state_dir.log_path(&id).display()
                        ));
                        tracing::warn!(component = id, %exit, "exited; restarting in {} ms", backoff.as_millis());
                    } else {
                        slot.state = State::Stopped;
                    }
                }
            }
            let slot = &mut self.slots[i];
            if slot.wanted && slot.child.is_none() && slot.restart_at.is_some_and(|t| t <= now) {
                slot.restart_at = None;
                slot.restarts += 1;
                self.spawn(i);
            }
        }
    }

    fn record_probe(&mut self, i: usize, result: ProbeResult) {
        let slot = &mut self.slots[i];
        if slot.state != State::Running {
            return;
        }
        match result {
            Ok((role, lag, note)) => {
                slot.healthy = Some(true);
                slot.crashes_in_row = 0;
                slot.role = role;
                slot.role_note = note;
                slot.lag_seconds = lag;
                slot.detail = None;
            }
            Err(e) => {
                slot.healthy = Some(false);
                slot.detail = Some(e);
            }
        }
    }

    fn targets(&self, target: &str) -> Result<Vec<usize>, String> {
        let (host, component) = match target.split_once('/') {
            Some((h, c)) => (h, Some(c)),
            None => (target, None),
        };
        if !self.slots.iter().any(|s| s.host == host) {
            let hosts: Vec<&str> = self.plan.hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(format!("no host `{host}` in this stack; hosts: {}", hosts.join(", ")));
        }
        let found: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i].host == host && component.is_none_or(|c| self.slots[i].planned.component.name() == c)
            })
            .collect();
        if found.is_empty() {
            let here: Vec<&str> =
                self.slots.iter().filter(|s| s.host == host).map(|s| s.planned.component.name()).collect();
            return Err(format!("no component `{}` on {host}; it runs {}", component.unwrap_or(""), here.join(", ")));
        }
        Ok(found)
    }

    async fn handle(&mut self, request: Request) -> Answer {
        match request {
            Request::Status => Answer { status: Some(self.status()), ..Answer::ok("") },
            Request::Down => Answer::ok("stack stopped"),
            Request::Kill { target } => match self.targets(&target) {
                Ok(found) => {
                    let mut killed = Vec::new();
                    for i in found {
                        let slot = &mut self.slots[i];
                        slot.wanted = false;
                        slot.restart_at = None;
                        if let Some(mut child) = slot.child.take() {
                            let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            killed.push(format!("{} (pid {pid})", slot.id()));
                        }
                        slot.state = State::Stopped;
                        slot.healthy = None;
                        slot.role = None;
                        slot.role_note = None;
                        slot.detail = Some("killed by `webstack kill`; `webstack start` brings it back".into());
                        let _ = std::fs::remove_file(self.state_dir.pid_path(&slot.id()));
                    }
                    Answer::ok(format!(
                        "killed {}",
                        if killed.is_empty() { "nothing (already stopped)".into() } else { killed.join(", ") }
                    ))
                }
                Err(e) => Answer::error(e),
            },
            Request::Restart { target } => match self.targets(&target) {
                Ok(found) => {
                    let mut said = Vec::new();
                    match self.restart_rolling(found, &mut said).await {
                        Ok(()) => Answer::ok(said.join("\n")),
                        Err(e) => {
                            said.push(e);
                            Answer::error(said.join("\n"))
                        }
                    }
                }
                Err(e) => Answer::error(e),
            },
            Request::Start { target } => match self.targets(&target) {
                Ok(found) => {
                    let mut started = Vec::new();
                    for i in found {
                        self.slots[i].wanted = true;
                        if self.slots[i].child.is_none() {
                            self.slots[i].crashes_in_row = 0;
                            self.spawn(i);
                            started.push(self.slots[i].id());
                        }
                    }
                    Answer::ok(format!(
                        "started {}",
                        if started.is_empty() { "nothing (already running)".into() } else { started.join(", ") }
                    ))
                }
                Err(e) => Answer::error(e),
            },
        }
    }

    /// Restarts slot `i`: a proxy that hands over starts its successor with
    /// `--take-over` (no connection refused; the old one drains and exits), anything else is
    /// stopped (SIGTERM, as `down` does) and started again.
    async fn restart(&mut self, i: usize) -> Result<String, String> {
        let id = self.slots[i].id();
        self.slots[i].wanted = true;
        self.slots[i].restart_at = None;
        self.slots[i].crashes_in_row = 0;
        let Some(mut old) = self.slots[i].child.take() else {
            self.spawn(i);
            return Ok(format!("started {id} (it was not running)"));
        };
        let old_pid = old.id().unwrap_or_default();
        if !self.slots[i].planned.hands_over {
            stop_child(&mut old, &id).await;
            self.spawn(i);
            let new_pid = self.slots[i].child.as_ref().and_then(Child::id).unwrap_or_default();
            return Ok(format!("restarted {id}: pid {old_pid} stopped, pid {new_pid} started"));
        }
        self.spawn_with(i, &["--take-over".into(), old_pid.to_string()]);
        let Some(new) = self.slots[i].child.as_mut() else {
            self.slots[i].child = Some(old);
            return Err(format!("{id}: the new process could not start; pid {old_pid} still serves"));
        };
        let new_pid = new.id().unwrap_or_default();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(_)) = old.try_wait() {
                return Ok(format!(
                    "{id} handed over: pid {old_pid} finished its requests and exited, pid {new_pid} serves"
                ));
            }
            if let Ok(Some(exit)) = new.try_wait() {
                // It never served (a config that does not load, say): the old one still does.
                self.slots[i].child = Some(old);
                let _ = std::fs::write(self.state_dir.pid_path(&id), old_pid.to_string());
                let log = self.state_dir.log_path(&id);
                return Err(format!(
                    "{id}: the new process exited ({exit}); pid {old_pid} still serves; see {}",
                    log.display()
                ));
            }
            if Instant::now() >= deadline {
                // It serves; the old one is still finishing long requests. Reaped when it ends.
                let said = format!("{id} handed over to pid {new_pid}; pid {old_pid} is still finishing its requests");
                tokio::spawn(async move { stop_child(&mut old, &id).await });
                return Ok(said);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts the slots `found` (components of one host, as `targets` finds them). A host
    /// whose app or database stops (a proxy hands over instead) is first taken out of the pool
    /// of each edge that balances to its web server (maintenance, once what they have in flight
    /// there is done), and put back when all its components are healthy again: a rolling
    /// restart without a failed request (the seed's "downtime during maintenance").
    async fn restart_rolling(&mut self, found: Vec<usize>, said: &mut Vec<String>) -> Result<(), String> {
        let Some(host) = found.first().map(|&i| self.slots[i].host.clone()) else { return Ok(()) };
        let stops = found.iter().any(|&i| !self.slots[i].planned.hands_over);
        let edges = if stops { self.edges_in_front_of(&host) } else { Vec::new() };
        let out = take_out_of_pools(&edges, &host, said).await;
        let mut failed = None;
        for i in found {
            match self.restart(i).await {
                Ok(message) => said.push(message),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if !out.is_empty() {
            let started = Instant::now();
            match self.wait_until_healthy(&host, HEALTHY_AGAIN_TIMEOUT).await {
                true => said.push(format!("{host} healthy again after {} ms", started.elapsed().as_millis())),
                false => said.push(format!(
                    "{host} not healthy after {} s (the edges' checks keep it out until it is)",
                    HEALTHY_AGAIN_TIMEOUT.as_secs()
                )),
            }
            put_back_in_pools(&out, &host, said).await;
        }
        failed.map_or(Ok(()), Err)
    }

    /// The running edges that balance to `host`'s web server: their ids and admin listeners
    /// (where their probes go).
    fn edges_in_front_of(&self, host: &str) -> Vec<(String, SocketAddr)> {
        let has_web = self.slots.iter().any(|s| s.host == host && s.planned.component == Component::Web);
        let edges =
            self.slots.iter().filter(|s| has_web && s.planned.component == Component::Edge && s.child.is_some());
        edges
            .filter_map(|s| match &s.planned.probe {
                Probe::Http { address, .. } => Some((s.id(), *address)),
                Probe::Tcp { .. } => None,
            })
            .collect()
    }

    /// Whether every running component of `host` answers its probe, asked until `limit`.
    async fn wait_until_healthy(&self, host: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let planned: Vec<PlannedComponent> =
            self.slots.iter().filter(|s| s.host == host && s.child.is_some()).map(|s| s.planned.clone()).collect();
        loop {
            let mut healthy = true;
            for p in &planned {
                healthy &= probe_component(p).await.is_ok();
            }
            if healthy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops components in reverse start order: edge, web, app, then databases.
    async fn stop_all(&mut self) {
        if self.slots.iter().any(|s| s.child.is_some()) {
            tracing::info!("stopping every component: edge, web, app, then databases");
        }
        for rank in (0..=3).rev() {
            let group: Vec<usize> =
                (0..self.slots.len()).filter(|&i| start_rank(self.slots[i].planned.component) == rank).collect();
            for &i in &group {
                self.slots[i].wanted = false;
                if let Some(child) = &self.slots[i].child {
                    terminate(child);
                }
            }
            for &i in &group {
                let id = self.slots[i].id();
                if let Some(mut child) = self.slots[i].child.take() {
                    wait_or_kill(&mut child, &id).await;
                }
                self.slots[i].state = State::Stopped;
                let _ = std::fs::remove_file(self.state_dir.pid_path(&id));
            }
        }
    }

    pub fn status(&self) -> StackStatus {
        let mut status = StackStatus::offline(&self.plan);
        status.supervisor_pid = Some(std::process::id());
        for host in &mut status.hosts {
            for c in &mut host.components {
                let Some(s) = self.slots.iter().find(|s| s.host == host.name && s.planned.component.name() == c.name)
                else {
                    continue;
                };
                c.state = s.state.name().into();
                c.pid = s.child.as_ref().and_then(Child::id);
                c.health = match s.healthy {
                    Some(true) => "healthy",
                    Some(false) => "unhealthy",
                    None => "unknown",
                }
                .into();
                c.role = s.role.clone();
                c.role_note = s.role_note.clone();
                c.lag_seconds = s.lag_seconds;
                c.restarts = s.restarts;
                c.detail = s.detail.clone();
            }
        }
        status
    }
}

/// Role, replication lag and a note on the role, where the component reports them.
type ProbeResult = Result<(Option<String>, Option<u64>, Option<String>), String>;

async fn probe_component(planned: &PlannedComponent) -> ProbeResult {
    let (address, path) = match &planned.probe {
        Probe::Http { address, path } => (address, path),
        Probe::Tcp { address } => {
            return match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok((None, None, None)),
                Ok(Err(e)) => Err(format!("connect {address}: {e}")),
                Err(_) => Err(format!("{address} did not accept in {} ms", PROBE_TIMEOUT.as_millis())),
            };
        }
    };
    match probe::http_get(*address, path, PROBE_TIMEOUT).await? {
        (200, _) => {}
        (status, body) => return Err(format!("health check answered {status}: {}", body.trim())),
    }
    let Some(role_path) = &planned.role_path else { return Ok((None, None, None)) };
    let (_, body) = probe::http_get(*address, role_path, PROBE_TIMEOUT).await?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("bad role answer: {e}"))?;
    let role = json.get("role").and_then(|r| r.as_str()).map(str::to_string);
    let lag = json.pointer("/replica/lag_seconds").and_then(|l| l.as_u64());
    let note = json.get("role_note").and_then(|r| r.as_str()).map(str::to_string);
    Ok((role, lag, note))
}

async fn accept_control(listener: UnixListener, tx: mpsc::Sender<ControlMessage>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read);
            let read_request = reader.read_line(&mut line);
            if tokio::time::timeout(Duration::from_secs(5), read_request).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    if tx.send((request, reply_tx)).await.is_err() {
                        return;
                    }
                    match reply_rx.await {
                        Ok(answer) => answer,
                        Err(_) => return,
                    }
                }
                Err(e) => Answer::error(format!("bad request: {e}")),
            };
            let mut text = serde_json::to_string(&answer).unwrap_or_else(|_| "{\"ok\":false}".into());
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}
