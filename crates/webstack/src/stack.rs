//! The stack commands: `up`, `status`, `down`, `logs`, `kill`, `start`, `check`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use supervisor::control::{self, Request};
use supervisor::{StackStatus, StateDir, Supervisor};
use topology::{Component, Plan, Secrets, Topology};
use webstack_config::{ConfigErrors, Source};

use crate::components::{init_logging, stop_signal};

const ASK_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn ask(state: &StateDir, request: Request, timeout: Duration) -> Result<control::Answer, String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(control::ask(&state.socket_path(), &request, timeout))
}

fn load_topology(path: &Path) -> Result<Topology> {
    Topology::load(path).map_err(|e| anyhow!("{e}"))
}

/// Checks each rendered config with its component's own validation, as the component will.
fn validate_rendered(plan: &Plan) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (_, c) in plan.components() {
        let src = Source::from_text(&c.config_file, c.config.clone());
        let result = match c.component {
            Component::Edge | Component::Web => proxy::ProxyConfig::from_source(&src).map(drop),
            Component::App => app::AppConfig::from_source(&src).map(drop),
            Component::Db => db::DbConfig::from_source(&src).map(drop),
            Component::Dns => dns::DnsConfig::from_source(&src).map(drop),
        };
        if let Err(e) = result {
            errors.extend(e.0);
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(ConfigErrors(errors)),
    }
}

pub fn up(
    state_dir: &Path,
    topology: &Path,
    profile: Option<&str>,
    subnet: Option<&str>,
    detach: bool,
    timeout: u64,
) -> Result<()> {
    let mut topology = load_topology(topology)?;
    if let Some(subnet) = subnet {
        let subnet = subnet.parse().map_err(|e| anyhow!("--subnet: {e}"))?;
        topology.rebase(subnet);
    }
    let profile = profile.unwrap_or(&topology.default_profile).to_string();
    let state = StateDir::new(state_dir)?;
    if let Some(pid) = state.live_pid(&state.supervisor_pid_path()) {
        bail!("a stack is already up in {} (supervisor pid {pid}); run `webstack down` first", state.root().display());
    }
    state.create().with_context(|| format!("creating state dir {}", state.root().display()))?;
    let secrets = state.secrets().context("making the stack's passwords")?;
    let certificate = topology.site_certificate(|| {
        crate::cert::ensure(&state.root().join("certs"), &topology.certificate_names())
            .map(|ca| ca.site)
            .map_err(|e| format!("making the site's certificate: {e:#}"))
    });
    let certificate = certificate.map_err(|e| anyhow!(e))?;
    let mut plan = topology.plan(&profile, state.root(), &secrets, Some(&certificate)).map_err(|e| anyhow!(e))?;
    if topology.tls.cert.is_none() && plan.site_https_url.is_some() {
        plan.ca_file = Some(state.root().join("certs").join("ca.pem"));
    }
    validate_rendered(&plan).map_err(|e| anyhow!("a rendered config is invalid:\n{e}"))?;
    if plan.components().any(|(_, c)| c.component == Component::Db) {
        db::locate::server()?;
    }
    ensure_addresses_free(&plan)?;
    state.write_plan(&plan)?;
    let exe = std::env::current_exe().context("finding the webstack binary")?;

    if detach {
        return up_detached(&state, &exe, timeout);
    }
    init_logging();
    println!("starting profile `{profile}` in {} (Ctrl-C stops everything)", state.root().display());
    let rt = runtime()?;
    let supervisor = Supervisor::new(plan, state.clone(), exe);
    rt.block_on(supervisor.run(stop_signal(), print_ready))?;
    println!("stack stopped");
    Ok(())
}

/// Fails early, naming the address, when something already listens where the stack would:
/// otherwise a component would crash-loop until the health timeout.
fn ensure_addresses_free(plan: &Plan) -> Result<()> {
    let busy: Vec<String> = plan
        .components()
        .flat_map(|(h, c)| c.listen.iter().map(move |a| (h, c, *a)))
        .filter(|(_, _, address)| std::net::TcpListener::bind(address).is_err())
        .map(|(h, c, address)| format!("{address} ({})", c.id(&h.name)))
        .collect();
    if !busy.is_empty() {
        bail!(
            "these addresses are already in use: {}; is another stack up on them? Use `--subnet` to move this one",
            busy.join(", ")
        );
    }
    Ok(())
}

fn up_detached(state: &StateDir, exe: &Path, timeout: u64) -> Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(state.logs_dir().join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("supervise").arg("--state-dir").arg(state.root()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own session: the supervisor outlives this command and the terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last: Option<StackStatus> = None;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            bail!("the supervisor exited ({exit}); see {}", state.logs_dir().join("supervisor.log").display());
        }
        if let Ok(answer) = ask(state, Request::Status, ASK_TIMEOUT) {
            if let Some(status) = answer.status {
                if status.all_healthy() {
                    print_ready(&status);
                    return Ok(());
                }
                last = Some(status);
            }
        }
        if Instant::now() > deadline {
            let mut message = format!("not every component was healthy after {timeout} s; the stack is still running (`webstack down` stops it):\n");
            if let Some(status) = last {
                message.push_str(&status.render());
                for (h, c) in status.components().filter(|(_, c)| c.health != "healthy") {
                    message.push_str(&format!(
                        "\n{}/{}: {}",
                        h.name,
                        c.name,
                        c.detail.as_deref().unwrap_or("no answer yet")
                    ));
                }
            }
            bail!(message);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn print_ready(status: &StackStatus) {
    println!("{}", status.render());
    let url = &status.site_url;
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    let (address, port) = host_port.rsplit_once(':').unwrap_or((host_port, "80"));
    let name = &status.site_name;
    match (&status.site_https_url, &status.ca_file) {
        (Some(https), ca) => {
            let https_port = https.trim_end_matches('/').rsplit(':').next().unwrap_or("443");
            println!("all healthy. The site: {https} ({name} is {address})");
            let trust = ca.as_ref().map(|ca| format!("--cacert {ca} ")).unwrap_or_default();
            println!("  curl {trust}--resolve {name}:{https_port}:{address} {https}");
            println!("  curl -i {url}   (plain HTTP; profiles with https_only redirect it)");
        }
        (None, _) => {
            println!("all healthy. The site: {url}");
            println!("  curl {url}");
            println!("  curl --resolve {name}:{port}:{address} http://{name}:{port}/");
        }
    }
}

pub fn status(state_dir: &Path, json: bool) -> Result<()> {
    let state = StateDir::new(state_dir)?;
    let status = match ask(&state, Request::Status, ASK_TIMEOUT) {
        Ok(answer) => answer.status.ok_or_else(|| anyhow!(answer.error.unwrap_or_default()))?,
        Err(_) => StackStatus::offline(&state.read_plan()?),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

pub fn down(state_dir: &Path) -> Result<()> {
    let state = StateDir::new(state_dir)?;
    let supervisor_pid = state.live_pid(&state.supervisor_pid_path());
    match ask(&state, Request::Down, Duration::from_secs(120)) {
        Ok(answer) if answer.ok => {}
        Ok(answer) => bail!(answer.error.unwrap_or_default()),
        Err(_) => {}
    }
    // Whatever is left (a supervisor killed with -9 leaves pid files behind) is stopped too.
    let run_dir = state.root().join("run");
    let mut left = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&run_dir) {
        for entry in entries.flatten() {
            if let Some(pid) = state.live_pid(&entry.path()) {
                if belongs_to(pid, state.root()) {
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    left.push(pid);
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = |pids: &[u32]| pids.iter().any(|p| supervisor::state_dir::process_alive(*p));
    let mut all: Vec<u32> = left.clone();
    all.extend(supervisor_pid);
    while waiting(&all) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in all.iter().filter(|p| supervisor::state_dir::process_alive(**p)) {
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    println!("stack in {} is down", state.root().display());
    Ok(())
}

/// True when `pid` is a webstack process of this state dir (pid files can outlive their
/// process, and a pid can be reused).
fn belongs_to(pid: u32, root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains(&*root.to_string_lossy())
}

pub fn kill_or_start(state_dir: &Path, target: &str, kill: bool) -> Result<()> {
    let request = match kill {
        true => Request::Kill { target: target.into() },
        false => Request::Start { target: target.into() },
    };
    control(state_dir, request)
}

pub fn restart(state_dir: &Path, target: &str) -> Result<()> {
    control(state_dir, Request::Restart { target: target.into() })
}

/// Sends `request` to the stack's supervisor and prints what it says.
fn control(state_dir: &Path, request: Request) -> Result<()> {
    let state = StateDir::new(state_dir)?;
    // A restart waits for each component it restarts to drain (20 s at most each).
    let answer = ask(&state, request, Duration::from_secs(300))
        .map_err(|e| anyhow!("{e}; is the stack up (`webstack up -d`)?"))?;
    match answer.ok {
        true => {
            println!("{}", answer.message.unwrap_or_default());
            Ok(())
        }
        false => bail!(answer.error.unwrap_or_default()),
    }
}

fn log_files(state: &StateDir, target: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let plan = state.read_plan()?;
    let (host, component) = match target.map(|t| t.split_once('/').map(|(h, c)| (h, Some(c))).unwrap_or((t, None))) {
        Some((h, c)) => (Some(h), c),
        None => (None, None),
    };
    let files: Vec<(String, PathBuf)> = plan
        .components()
        .filter(|(h, c)| host.is_none_or(|x| x == h.name) && component.is_none_or(|x| x == c.component.name()))
        .map(|(h, c)| {
            let id = c.id(&h.name);
            let path = state.log_path(&id);
            (id, path)
        })
        .collect();
    if files.is_empty() {
        bail!("no component matches `{}` in this stack", target.unwrap_or(""));
    }
    Ok(files)
}

pub fn logs(state_dir: &Path, target: Option<&str>, follow: bool, lines: usize) -> Result<()> {
    let state = StateDir::new(state_dir)?;
    let files = log_files(&state, target)?;
    let prefix = |id: &str| if files.len() > 1 { format!("{id:<16} | ") } else { String::new() };
    let mut offsets = Vec::new();
    let stdout = std::io::stdout();
    for (id, path) in &files {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut out = stdout.lock();
        for line in &all[all.len().saturating_sub(lines)..] {
            writeln!(out, "{}{line}", prefix(id))?;
        }
        offsets.push(text.len() as u64);
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for ((id, path), offset) in files.iter().zip(offsets.iter_mut()) {
            let Ok(mut file) = std::fs::File::open(path) else { continue };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < *offset {
                *offset = 0;
            }
            if len == *offset {
                continue;
            }
            file.seek(SeekFrom::Start(*offset))?;
            let mut new = String::new();
            file.read_to_string(&mut new)?;
            // Print whole lines only; a partial last line waits for its end.
            let complete = new.rfind('\n').map(|i| i + 1).unwrap_or(0);
            let mut out = stdout.lock();
            for line in new[..complete].lines() {
                writeln!(out, "{}{line}", prefix(id))?;
            }
            *offset += complete as u64;
        }
    }
}

pub fn check(file: &Path) -> Result<()> {
    let topology = load_topology(file)?;
    // Render every profile as `up` would, and check each config as its component will.
    let secrets = Secrets {
        db_admin_password: "check-only-password".into(),
        db_app_password: "check-only-password".into(),
        db_repl_password: "check-only-password".into(),
        ha_key: "check-only-advert-key".into(),
        shop_admin_password: "check-only-password".into(),
    };
    let state = std::path::absolute(".webstack")?;
    // A throwaway certificate stands in for the one `up` makes (or the topology's own).
    let scratch = Scratch::new()?;
    let certificate = topology
        .site_certificate(|| {
            crate::cert::ensure(scratch.path(), &topology.certificate_names())
                .map(|ca| ca.site)
                .map_err(|e| format!("{e:#}"))
        })
        .map_err(|e| anyhow!(e))?;
    for profile in topology.profiles.keys() {
        let plan = topology.plan(profile, &state, &secrets, Some(&certificate)).map_err(|e| anyhow!(e))?;
        validate_rendered(&plan).map_err(|e| anyhow!("profile `{profile}` renders an invalid config:\n{e}"))?;
    }
    println!(
        "{}: ok ({} hosts; profiles: {})",
        file.display(),
        topology.hosts.len(),
        topology.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

pub fn supervise(state_dir: &Path) -> Result<()> {
    init_logging();
    let state = StateDir::new(state_dir)?;
    let plan = state.read_plan()?;
    let exe = std::env::current_exe()?;
    let rt = runtime()?;
    let supervisor = Supervisor::new(plan, state, exe);
    rt.block_on(supervisor.run(stop_signal(), |_| tracing::info!("every component is healthy")))?;
    Ok(())
}

pub fn cert(state_dir: &Path, topology: &Path) -> Result<()> {
    let topology = load_topology(topology)?;
    let state = StateDir::new(state_dir)?;
    let ca = crate::cert::ensure(&state.root().join("certs"), &topology.certificate_names())?;
    println!(
        "{} {} for {}",
        if ca.made { "made" } else { "kept" },
        ca.site.cert.display(),
        topology.certificate_names().join(", ")
    );
    println!("key: {}\nCA:  {}", ca.site.key.display(), ca.ca.display());
    println!(
        "{}",
        crate::cert::trust_instructions(&ca.ca, &topology.site_name, topology.ports.https, &topology.vip.to_string())
    );
    Ok(())
}

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("webstack-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
