//! A running `webstack proxy` replaced by a new process (a new binary, or a new config that a
//! reload cannot apply) with `--take-over PID`, as `haproxy -sf PID` and nginx's binary upgrade
//! do it: under load no connection is refused or reset, a request in flight on the old process
//! finishes there, the servers' runtime state (a drain set through the API) carries over, and
//! the old process exits once it has finished. Real processes, real sockets.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::{get, wait_for, Load, Stop};

const SITE: &str = "127.240.0.1:8080";
const ADMIN: &str = "127.240.0.1:8404";

/// An origin: answers `GET /slow` after 1.5 s (saying so on `slow_started` when it begins),
/// `/health` at once, anything else at once with its name; counts the requests that are not
/// health checks.
struct Origin {
    served: Arc<AtomicU64>,
}

impl Origin {
    fn start(address: &str, name: &'static str, slow_started: mpsc::Sender<()>) -> Origin {
        let listener = TcpListener::bind(address).expect("origin address");
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (counter, slow_started) = (counter.clone(), slow_started.clone());
                std::thread::spawn(move || serve_connection(stream, name, &counter, &slow_started));
            }
        });
        Origin { served }
    }
}

fn serve_connection(stream: TcpStream, name: &str, served: &AtomicU64, slow_started: &mpsc::Sender<()>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        if path != "/health" {
            served.fetch_add(1, Ordering::SeqCst);
        }
        if path == "/slow" {
            let _ = slow_started.send(());
            std::thread::sleep(Duration::from_millis(1500));
        }
        let body = format!("{name}\n");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"lb\"\n[admin]\nbind = \"{ADMIN}\"\n\
             [[listeners]]\nname = \"www\"\nbind = \"{SITE}\"\n[[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n\
             [pools.web]\n[pools.web.health]\npath = \"/health\"\ninterval_ms = 200\n\
             [[pools.web.servers]]\nname = \"a\"\naddress = \"127.240.0.11:9000\"\n\
             [[pools.web.servers]]\nname = \"b\"\naddress = \"127.240.0.12:9000\"\n"
        ),
    )
    .expect("config written");
    path
}

fn start_proxy(config: &Path, pid_file: &Path, take_over: Option<u32>, log: &Path) -> Stop {
    let mut command = Command::new(support::webstack_bin());
    command.args(["proxy", "--config"]).arg(config).arg("--pid-file").arg(pid_file);
    if let Some(pid) = take_over {
        command.args(["--take-over", &pid.to_string()]);
    }
    let log = std::fs::File::create(log).expect("log file");
    Stop(command.stdout(Stdio::null()).stderr(log).spawn().expect("webstack proxy started"))
}

fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Both processes' logs, for a failure's message.
fn logs(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("old process:\n{}\nnew process:\n{}", read("old.log"), read("new.log"))
}

fn site() -> SocketAddr {
    SITE.parse().expect("address")
}

#[test]
fn a_new_process_takes_over_under_load_and_the_old_one_finishes_its_request_and_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (slow_tx, slow_rx) = mpsc::channel();
    let a = Origin::start("127.240.0.11:9000", "a", slow_tx.clone());
    let b = Origin::start("127.240.0.12:9000", "b", slow_tx);
    let config = write_config(dir.path());
    let pid_file = dir.path().join("lb.pid");
    let mut old = start_proxy(&config, &pid_file, None, &dir.path().join("old.log"));
    wait_for("the first proxy's PID file", Duration::from_secs(10), || pid_in(&pid_file).is_some());
    assert_eq!(pid_in(&pid_file), Some(old.0.id()), "the PID file names the serving process");

    // An operator's drain, set through the runtime API of the running process.
    let drained = support::http("POST", ADMIN.parse().expect("admin"), "/api/servers/web/b/state/drain", &[], "")
        .expect("runtime API answers");
    assert_eq!(drained.status, 200, "{}", drained.body);
    let b_before = b.served.load(Ordering::SeqCst);

    // Clients opening a new connection per request and clients keeping theirs, all through
    // the hand-over.
    let load = Load::start(site(), "/", 2, 2);
    // A request in flight on the old process when the new one takes over.
    let slow = std::thread::spawn(|| get(site(), "/slow"));
    slow_rx.recv_timeout(Duration::from_secs(10)).expect("the slow request reached an origin");

    let old_pid = old.0.id();
    let new = start_proxy(&config, &pid_file, Some(old_pid), &dir.path().join("new.log"));
    wait_for("the old process to finish and exit", Duration::from_secs(15), || matches!(old.0.try_wait(), Ok(Some(_))));
    let old_status = old.0.try_wait().ok().flatten().expect("exited");
    // Load on the new process alone for a moment before the clients stop.
    std::thread::sleep(Duration::from_millis(500));

    let slow = slow.join().expect("slow client");
    let slow = slow.expect("the request in flight on the old process was answered");
    assert_eq!((slow.status, slow.body.as_str()), (200, "a\n"), "the request in flight finished on the old process");
    let (total, failed) = load.finish();
    assert!(failed.is_empty(), "requests failed during the take-over: {failed:?}\n{}", logs(dir.path()));
    assert!(total >= 20, "the clients kept requesting through the hand-over ({total} requests)");
    assert!(old_status.success(), "the old process exits cleanly after draining: {old_status}");
    assert_eq!(pid_in(&pid_file), Some(new.0.id()), "the PID file now names the new process");
    assert_eq!(
        b.served.load(Ordering::SeqCst),
        b_before,
        "the drained server got no request from either process (the drain carried over)"
    );
    assert!(a.served.load(Ordering::SeqCst) >= u64::from(total), "server a served the load");
    let servers = support::get(ADMIN.parse().expect("admin"), "/api/servers").expect("new process's admin answers");
    let servers: serde_json::Value = serde_json::from_str(&servers.body).expect("json");
    assert_eq!(servers["pools"][0]["servers"][1]["admin"], "drain", "the new process shows the drain: {servers}");
    // How an operator checks which process (and version) now serves.
    let info = support::get(ADMIN.parse().expect("admin"), "/api/info").expect("info answers");
    let info: serde_json::Value = serde_json::from_str(&info.body).expect("json");
    assert_eq!(info["pid"], new.0.id(), "the admin listener is the new process's: {info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let old_log = std::fs::read_to_string(dir.path().join("old.log")).unwrap_or_default();
    assert!(old_log.contains("shutting down"), "the old process said it was draining:\n{old_log}");
    let new_log = std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default();
    assert!(new_log.contains(&format!("pid={old_pid}")), "the new process names the one it took over from:\n{new_log}");
    drop(new);
}

/// A config serving `dir`'s files on each of `binds`.
fn static_config(dir: &Path, name: &str, binds: &[&str]) -> std::path::PathBuf {
    let listeners: String = binds
        .iter()
        .enumerate()
        .map(|(i, bind)| {
            format!(
                "[[listeners]]\nname = \"l{i}\"\nbind = \"{bind}\"\n[[listeners.routes]]\nprefix = \"/\"\nstatic_root = \"{}\"\n",
                dir.display()
            )
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, format!("name = \"lb\"\n{listeners}")).expect("config written");
    path
}

#[test]
fn a_second_proxy_on_the_same_address_without_take_over_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = static_config(dir.path(), "lb.toml", &["127.240.0.2:8080"]);
    std::fs::write(dir.path().join("hello.txt"), "hello\n").expect("page written");
    let pid_file = dir.path().join("lb.pid");
    let first = start_proxy(&config, &pid_file, None, &dir.path().join("first.log"));
    wait_for("the first proxy's PID file", Duration::from_secs(10), || pid_in(&pid_file).is_some());
    let second = Command::new(support::webstack_bin())
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .expect("second proxy ran");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second proxy on a busy address must not start");
    assert!(
        stderr.contains("cannot listen on 127.240.0.2:8080") && stderr.contains("in use"),
        "the error names the address: {stderr}"
    );
    assert!(stderr.contains("--take-over"), "the error says how to replace a running proxy: {stderr}");
    assert_eq!(pid_in(&pid_file), Some(first.0.id()), "the first proxy's PID file is untouched");
    let still = get("127.240.0.2:8080".parse().expect("address"), "/hello.txt").expect("first proxy still serves");
    assert_eq!((still.status, still.body.as_str()), (200, "hello\n"));

    // A take-over joins only what its predecessor listens on: an address another proxy
    // serves (the first one's) is refused, and the predecessor is left serving.
    let other = static_config(dir.path(), "other.toml", &["127.240.0.3:8080"]);
    let other_pid = dir.path().join("other.pid");
    let mut predecessor = start_proxy(&other, &other_pid, None, &dir.path().join("other.log"));
    wait_for("the other proxy's PID file", Duration::from_secs(10), || pid_in(&other_pid).is_some());
    let grabbing = static_config(dir.path(), "grabbing.toml", &["127.240.0.3:8080", "127.240.0.2:8080"]);
    let taking = Command::new(support::webstack_bin())
        .args(["proxy", "--config"])
        .arg(&grabbing)
        .args(["--take-over", &predecessor.0.id().to_string()])
        .output()
        .expect("take-over ran");
    let stderr = String::from_utf8_lossy(&taking.stderr);
    assert!(!taking.status.success(), "a take-over must not join another proxy's listener: {stderr}");
    assert!(stderr.contains("cannot listen on 127.240.0.2:8080"), "{stderr}");
    assert!(matches!(predecessor.0.try_wait(), Ok(None)), "the predecessor was not told to stop");
    let served = get("127.240.0.3:8080".parse().expect("address"), "/hello.txt").expect("predecessor serves");
    assert_eq!(served.status, 200);
    let first_still = get("127.240.0.2:8080".parse().expect("address"), "/hello.txt").expect("first serves");
    assert_eq!(first_still.status, 200);
}
