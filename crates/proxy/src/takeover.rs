//! Taking over from a running proxy: a new process — a new binary, or the same one with a new
//! config — opens the old one's listening addresses beside it, carries its servers' runtime
//! state over (drain, maintenance, weights set through the runtime API, health), and tells it
//! to finish what it has and exit. HAProxy's `haproxy -sf PID`, nginx's binary upgrade: no
//! connection is refused and no request in flight is cut on the way.
//!
//! The listeners of every proxy are opened with SO_REUSEPORT so that a successor can join
//! them; the successor's socket steers every new connection to itself (see
//! `server::steer_new_connections_here`), so the old process has nothing queued when it closes
//! its own. A proxy started without `take_over` first makes sure nobody listens on its
//! addresses, so two proxies configured on one address still fail as before.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::upstream::{AdminState, PoolState};

/// How a proxy process starts.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// The process ID of a proxy serving the same addresses now: this one joins its listeners,
    /// takes over its servers' state and, once serving, sends it SIGTERM (it drains and exits).
    pub take_over: Option<u32>,
    /// A file to hold this process's ID, written once it serves (so a successor reads a
    /// process that is serving), removed at exit while it still names this process.
    pub pid_file: Option<PathBuf>,
}

/// The proxy this one takes over from: alive when it was found.
#[derive(Debug)]
pub(crate) struct Predecessor {
    pid: libc::pid_t,
}

impl Predecessor {
    /// The process `pid` if it is alive; a stale PID (the process is gone) is `None`, and
    /// this proxy starts as if alone, as `haproxy -sf` does with a PID that has exited.
    pub(crate) fn find(pid: u32) -> Option<Predecessor> {
        let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        alive.then_some(Predecessor { pid })
    }

    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The TCP addresses it listens on: its sockets (`/proc/PID/fd`) matched with the LISTEN
    /// rows of its network namespace's tables (`/proc/PID/net/tcp`, `tcp6`). `None` when they
    /// cannot be read (another user's process).
    pub(crate) fn listening(&self) -> Option<HashSet<SocketAddr>> {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        let inodes: HashSet<u64> =
            fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter_map(|l| socket_inode(&l)).collect();
        let mut listening = HashSet::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid)) {
                listening.extend(listeners_in(&text, &inodes));
            }
        }
        Some(listening)
    }

    /// Asks it to stop accepting, finish its in-flight requests and exit (graceful shutdown).
    pub(crate) fn retire(&self) -> std::io::Result<()> {
        // SAFETY: a plain kill(2) on a PID this process was given.
        if unsafe { libc::kill(self.pid, libc::SIGTERM) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The inode of a `socket:[12345]` link in `/proc/PID/fd`.
fn socket_inode(link: &std::path::Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The local addresses of the LISTEN rows (state `0A`) of a `/proc/net/tcp` or `tcp6` table
/// whose socket inode is in `inodes`.
fn listeners_in(table: &str, inodes: &HashSet<u64>) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (fields.get(3) == Some(&"0A") && inodes.contains(&inode)).then_some(())?;
            proc_address(fields.get(1)?)
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel prints
/// it, in 32-bit words of the host's byte order, and the port in hex.
fn proc_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The servers' runtime state as a running proxy's `GET /api/servers` shows it.
#[derive(Debug, Deserialize)]
pub struct Snapshot {
    pools: Vec<PoolSnapshot>,
}

#[derive(Debug, Deserialize)]
struct PoolSnapshot {
    name: String,
    servers: Vec<ServerSnapshot>,
}

#[derive(Debug, Deserialize)]
struct ServerSnapshot {
    name: String,
    address: String,
    up: bool,
    admin: String,
    weight: u32,
    /// The weight its config gave it; a different `weight` was set through the runtime API.
    #[serde(default)]
    config_weight: Option<u32>,
}

/// How long the old proxy's admin listener may take to answer: it serves, so it answers fast.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer read: a large pool list is tens of KiB.
const SNAPSHOT_LIMIT: u64 = 8 << 20;

/// Reads the servers' state from the running proxy's admin listener at `admin`. Blocking:
/// called before this proxy serves anything, while the old one alone listens there.
pub(crate) fn fetch_snapshot(admin: SocketAddr) -> Result<Snapshot, String> {
    let mut stream = TcpStream::connect_timeout(&admin, SNAPSHOT_TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(SNAPSHOT_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(SNAPSHOT_TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET /api/servers HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.take(SNAPSHOT_LIMIT).read_to_end(&mut answer).map_err(|e| e.to_string())?;
    parse_answer(&answer)
}

/// The snapshot in an HTTP answer to `GET /api/servers` (the admin API answers with a length,
/// never chunked).
pub fn parse_answer(answer: &[u8]) -> Result<Snapshot, String> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no complete HTTP answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET /api/servers answered {}", head.lines().next().unwrap_or("")));
    }
    serde_json::from_slice(&answer[split + 4..]).map_err(|e| format!("GET /api/servers: {e}"))
}

/// Gives each server of `pools` the old proxy also had — same pool, name and address — the
/// state it had there: its admin state, a weight set through the runtime API, and, where the
/// pool has active checks to bring it back, being down. Returns how many servers it matched.
pub(crate) fn carry_over(snapshot: &Snapshot, pools: &[Arc<PoolState>]) -> usize {
    let mut matched = 0;
    for pool in pools {
        let Some(old_pool) = snapshot.pools.iter().find(|p| p.name == pool.config.name) else { continue };
        let mut weights_changed = false;
        for server in &pool.servers {
            let Some(old) =
                old_pool.servers.iter().find(|s| s.name == server.config.name && s.address == server.shown_address())
            else {
                continue;
            };
            matched += 1;
            if let Some(state) = AdminState::from_name(&old.admin) {
                server.set_admin(state);
            }
            if old.config_weight.is_some_and(|w| w != old.weight) && old.weight <= crate::config::MAX_WEIGHT {
                server.set_weight(old.weight);
                weights_changed = true;
            }
            // Without active checks nothing would bring it back but passive health's cooldown.
            if !old.up && pool.config.health.is_some() {
                server.set_up(false);
            }
        }
        if weights_changed {
            pool.rebalance();
        }
    }
    matched
}

/// Whether the PID file can be written, asked before anything listens (its content stays).
pub(crate) fn check_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(drop)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write the PID file {}: {e}", path.display())))
}

/// Writes this process's ID to `path`.
pub(crate) fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
}

/// Removes `path` if it still names this process: a successor has written its own there.
pub(crate) fn remove_pid_file(path: &std::path::Path) {
    let ours = std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_from_the_admin_api_gives_the_servers_state() {
        let body = r#"{"pools":[{"name":"web","queued":0,"servers":[
            {"name":"a","address":"127.0.0.1:81","up":false,"admin":"drain","weight":7,"config_weight":1,"backup":false}]}]}"#;
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let snapshot = parse_answer(answer.as_bytes()).expect("parsed");
        let server = &snapshot.pools[0].servers[0];
        assert_eq!((server.name.as_str(), server.up, server.admin.as_str(), server.weight), ("a", false, "drain", 7));
        assert_eq!(server.config_weight, Some(1));
    }

    #[test]
    fn an_answer_that_is_not_the_servers_is_an_error_not_a_guess() {
        assert!(parse_answer(b"HTTP/1.1 403 Forbidden\r\n\r\nno").unwrap_err().contains("403"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{\"pools\": 3}").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn the_listening_sockets_of_a_process_are_read_from_the_kernel_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100F07F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0
   1: 0100F07F:20D4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0 100 0 0 10 0
   2: 0100F07F:1F90 0B00F07F:D3AE 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0 20 4 30 10 -1
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0 100 0 0 10 0";
        let ours: HashSet<u64> = [4242, 4243, 4244].into();
        let found: HashSet<SocketAddr> = listeners_in(tcp, &ours).into_iter().collect();
        let expected: HashSet<SocketAddr> = ["127.240.0.1:8080".parse().unwrap(), "0.0.0.0:80".parse().unwrap()].into();
        assert_eq!(found, expected, "LISTEN rows of its own sockets only");
        assert_eq!(proc_address("00000000000000000000000001000000:1F90"), "[::1]:8080".parse().ok());
        assert_eq!(proc_address("0100007F"), None);
        assert_eq!(proc_address("01007F:1F90"), None);
        assert_eq!(socket_inode(std::path::Path::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(std::path::Path::new("/dev/null")), None);
    }

    #[test]
    fn a_running_process_shows_the_socket_it_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let me = Predecessor::find(std::process::id()).unwrap();
        assert!(me.listening().unwrap().contains(&address));
    }

    #[test]
    fn a_pid_that_is_not_running_is_no_predecessor() {
        assert!(Predecessor::find(0).is_none());
        assert!(Predecessor::find(u32::MAX).is_none());
        assert!(Predecessor::find(std::process::id()).is_some());
    }
}
