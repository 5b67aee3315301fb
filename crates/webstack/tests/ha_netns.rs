//! The load-balancer pair on hosts with their own network stacks: each node, the client and the
//! segment between them are network namespaces (addresses from 198.18.0.0/15), so the VIP moves
//! as on real machines: the MASTER adds it to its interface with netlink and announces it with
//! gratuitous ARP. What a user checks: exactly one node carries the VIP; after `kill -9` of the
//! MASTER the client reaches the BACKUP because its ARP entry now names the BACKUP's address;
//! the preferred node takes the VIP back. Needs root (CI runs as root) and iproute2.

mod support;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{body_if_ok as get, ha_state_in, wait_for, Stop};

const VIP: &str = "198.18.0.10";

/// Runs `ip ARGS`, panicking with its error output when it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("iproute2's `ip` (scripts/setup --test installs it)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One Ethernet segment (a bridge in its own namespace) and a namespace per host on it, each
/// with `eth0` at 198.18.0.N/24. Dropped: every namespace is deleted.
struct Segment {
    prefix: String,
    hosts: Vec<String>,
}

impl Segment {
    fn new(hosts: &[(&str, u8)]) -> Segment {
        let prefix = format!("ws{}", std::process::id());
        let lan = format!("{prefix}-lan");
        let mut segment = Segment { prefix: prefix.clone(), hosts: vec![lan.clone()] };
        ip(&["netns", "add", &lan]);
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (name, host) in hosts {
            let ns = segment.ns(name);
            ip(&["netns", "add", &ns]);
            segment.hosts.push(ns.clone());
            let port = format!("v-{name}");
            ip(&["-n", &lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("198.18.0.{host}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        segment
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Whether `host`'s eth0 carries the VIP.
    fn carries_vip(&self, host: &str) -> bool {
        ip(&["-n", &self.ns(host), "-4", "addr", "show", "dev", "eth0"]).contains(&format!("inet {VIP}/32"))
    }

    /// `host`'s Ethernet address.
    fn mac(&self, host: &str) -> String {
        let link = ip(&["-n", &self.ns(host), "link", "show", "eth0"]);
        link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("an Ethernet address").to_string()
    }

    /// The Ethernet address `host`'s neighbour table holds for the VIP.
    fn vip_neighbour(&self, host: &str) -> Option<String> {
        let entry = ip(&["-n", &self.ns(host), "neigh", "show", VIP]);
        entry.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).map(str::to_string)
    }

    /// Runs `webstack proxy --config FILE` inside `host`'s namespace (`ip netns exec` execs, so
    /// the child's pid is the proxy's).
    fn start_proxy(&self, host: &str, config: &std::path::Path) -> Stop {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), env!("CARGO_BIN_EXE_webstack"), "proxy", "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        Stop(child)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in self.hosts.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `work` on a thread that has entered namespace `ns` (only that thread moves).
fn in_netns<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let handle = std::fs::File::open(&path).expect("the namespace's file");
        // SAFETY: a valid namespace descriptor; setns moves only the calling thread.
        let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        work()
    })
}

/// A node's `/ha` state, asked from the client's namespace.
fn ha_state(segment: &Segment, host: u8) -> String {
    let address = format!("198.18.0.{host}:8404");
    ha_state_in(
        &in_netns(&segment.ns("client"), move || get(&address, "/ha")).join().ok().flatten().unwrap_or_default(),
    )
}

fn config(dir: &std::path::Path, id: u8, priority: u8) -> std::path::PathBuf {
    let (me, peer) = (format!("198.18.0.{id}"), format!("198.18.0.{}", 3 - id));
    let text = format!(
        "name = \"lb-0{id}\"\n[admin]\nbind = \"{me}:8404\"\n\
         [ha]\nid = {id}\npriority = {priority}\nbind = \"{me}:5405\"\npeers = [\"{peer}:5405\"]\nvip = \"{VIP}\"\n\
         key = \"a test key of some length\"\nadvert_interval_ms = 50\npreempt_delay_ms = 300\ninterface = \"eth0\"\n\
         [[listeners]]\nname = \"www\"\nbind = \"{VIP}:8080\"\n[[listeners.routes]]\nprefix = \"/\"\n\
         respond = {{ body = \"lb-0{id}\" }}\n"
    );
    let path = dir.join(format!("lb-0{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn on_namespace_hosts_the_vip_moves_with_netlink_and_gratuitous_arp() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "network namespaces need root (make test runs as root in CI)");
    let segment = Segment::new(&[("lb1", 1), ("lb2", 2), ("client", 100)]);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (config(dir.path(), 1, 200), config(dir.path(), 2, 100));
    let mut lb1 = segment.start_proxy("lb1", &a);
    let _lb2 = segment.start_proxy("lb2", &b);
    wait_for("lb-01 MASTER and lb-02 BACKUP", Duration::from_secs(10), || {
        ha_state(&segment, 1) == "MASTER" && ha_state(&segment, 2) == "BACKUP"
    });
    assert!(segment.carries_vip("lb1") && !segment.carries_vip("lb2"), "exactly the MASTER carries the VIP");

    // A client on the segment asks the VIP every 10 ms, counting what failed.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU32::new(0));
    let last_from = Arc::new(Mutex::new(String::new()));
    let client = {
        let (stop, failed, last_from) = (stop.clone(), failed.clone(), last_from.clone());
        in_netns(&segment.ns("client"), move || {
            let vip = format!("{VIP}:8080");
            while !stop.load(Ordering::SeqCst) {
                match get(&vip, "/") {
                    Some(from) => *last_from.lock().unwrap() = from,
                    None => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_for("the client's first answer", Duration::from_secs(3), || *last_from.lock().unwrap() == "lb-01");
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert_eq!(segment.vip_neighbour("client"), Some(segment.mac("lb1")));

    // kill -9 the MASTER: its namespace keeps the VIP on eth0 (as a crashed keepalived host
    // does), and its kernel refuses the connections; only lb-02's gratuitous ARP moves the client.
    let killed = Instant::now();
    let _ = lb1.0.kill();
    let _ = lb1.0.wait();
    wait_for("lb-02 to answer on the VIP", Duration::from_secs(5), || *last_from.lock().unwrap() == "lb-02");
    let takeover = killed.elapsed();
    let failed_at_takeover = failed.load(Ordering::SeqCst);
    eprintln!(
        "SIGKILL of the MASTER (namespaces): lb-02 answered on the VIP after {} ms; {failed_at_takeover} requests failed",
        takeover.as_millis()
    );
    assert_eq!(ha_state(&segment, 2), "MASTER");
    assert!(segment.carries_vip("lb2"));
    assert_eq!(segment.vip_neighbour("client"), Some(segment.mac("lb2")), "the gratuitous ARP reached the client");

    // lb-01 returns: it first clears the VIP its crash left behind, then takes it back after
    // its preempt delay; lb-02 lets go of it.
    lb1 = segment.start_proxy("lb1", &a);
    wait_for("lb-01 to take the VIP back", Duration::from_secs(5), || *last_from.lock().unwrap() == "lb-01");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let failed_at_preemption = failed.load(Ordering::SeqCst) - failed_at_takeover;
    eprintln!("preemption back to lb-01 (namespaces): {failed_at_preemption} requests failed");
    assert_eq!((ha_state(&segment, 1).as_str(), ha_state(&segment, 2).as_str()), ("MASTER", "BACKUP"));
    assert!(segment.carries_vip("lb1") && !segment.carries_vip("lb2"), "the VIP is on lb-01 alone again");
    assert_eq!(segment.vip_neighbour("client"), Some(segment.mac("lb1")));
    // The hand-over moves the client's packets from one stack to the other: a request in
    // flight at that instant (about one in ten with a request every 10 ms) may be reset.
    assert!(failed_at_preemption <= 1, "{failed_at_preemption} requests failed at the planned hand-over");
    drop(lb1);
}
