//! The edge proxy's side of load-balancer redundancy: it runs the `ha` state machine, sends
//! and receives authenticated adverts over UDP, watches its quorum of witnesses and its own
//! health, and binds the VIP's listeners only while MASTER (on loopback hosts the VIP moves
//! by binding; with `interface` set, the MASTER also adds the VIP to that interface and
//! announces it with gratuitous ARP). A dead proxy is a silent advertiser: its peer takes over
//! after the master-down interval; a proxy that stops cleanly hands over at once (priority 0).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha::advert::{self, Advert, Key};
use ha::interface::Interface;
use ha::{Action, Event, Node, State};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::config::HaConfig;
use crate::server::Proxy;

/// How often witnesses and health are looked at.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a node that could not take the VIP (its listeners would not bind, its address
/// would not go on) stays out before it offers to serve again: its peer takes over meanwhile.
const HOLD_DOWN: Duration = Duration::from_secs(2);
/// When gratuitous ARP is repeated after a takeover, in case a frame was lost (keepalived
/// repeats its burst after 5 s; clients here should not wait that long for a lost frame).
const ANNOUNCE_AGAIN: [Duration; 2] = [Duration::from_millis(300), Duration::from_secs(2)];

/// What `/ha` reports.
#[derive(Debug, Default)]
pub struct HaStatus {
    state: AtomicU8,
    pub quorum: AtomicBool,
    pub healthy: AtomicBool,
    /// Why the last attempt to take the VIP failed, and until when the node stays out for it.
    take_failed: std::sync::Mutex<Option<(String, Instant)>>,
}

impl HaStatus {
    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            2 => "MASTER",
            1 => "BACKUP",
            _ => "FAULT",
        }
    }

    /// The last failure to take the VIP, while the node is held out for it.
    pub fn take_failure(&self) -> Option<String> {
        let failed = self.take_failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(why, _)| why.clone())
    }

    fn held_down(&self) -> bool {
        let failed = self.take_failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.as_ref().is_some_and(|(_, until)| Instant::now() < *until)
    }

    fn set(&self, state: State) {
        let v = match state {
            State::Fault => 0,
            State::Backup => 1,
            State::Master => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }
}

/// Runs until `stop` turns true; then, if MASTER, releases the VIP and tells the peers.
pub(crate) async fn run(proxy: Arc<Proxy>, config: HaConfig, status: Arc<HaStatus>, mut stop: watch::Receiver<bool>) {
    let socket = match UdpSocket::bind(config.bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(bind = %config.bind, error = %e, "cannot bind the advert socket; this node stays in FAULT");
            return;
        }
    };
    let interface = match config.interface.as_deref().map(Interface::named).transpose() {
        Ok(interface) => interface,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the VIP's interface; this node stays in FAULT");
            return;
        }
    };
    // A node starts as BACKUP: a VIP left on the interface by a crash would have this host's
    // kernel answer ARP for it and pull clients away from the MASTER.
    if let Some(interface) = &interface {
        if let Err(e) = interface.remove_vip(config.vip) {
            tracing::error!(error = %e, "cannot clear the VIP from the interface; this node stays in FAULT");
            return;
        }
    }
    let vip = Vip { proxy: proxy.clone(), interface, address: config.vip, status: status.clone() };
    let key = Key::new(config.key.as_bytes());
    let mut node = Node::new(config.node.clone());
    // Sequence numbers start from the clock, so they keep growing across restarts.
    let mut sequence =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut last_seen: HashMap<u32, u64> = HashMap::new();
    let (probe_tx, mut probe_rx) = watch::channel((false, false));
    let prober = tokio::spawn(probe(proxy.clone(), status.clone(), config.witnesses.clone(), probe_tx));
    let mut buf = [0u8; 128];
    let idle = config.node.advert_interval;
    loop {
        let deadline = node.next_deadline().unwrap_or_else(|| Instant::now() + idle);
        let actions = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => match advert::decode(&buf[..n], &key) {
                    Ok(a) if a.vip == config.vip && a.sender != config.node.id => {
                        let last = last_seen.entry(a.sender).or_insert(0);
                        if a.sequence <= *last {
                            tracing::warn!(%from, sender = a.sender, "advert replayed or out of order; ignored");
                            Vec::new()
                        } else {
                            *last = a.sequence;
                            node.handle(Event::Advert { from: a.sender, priority: a.priority }, Instant::now())
                        }
                    }
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "advert refused");
                        Vec::new()
                    }
                },
                Err(_) => Vec::new(),
            },
            _ = tokio::time::sleep_until(deadline.into()) => node.handle(Event::Tick, Instant::now()),
            changed = probe_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let (quorum, healthy) = *probe_rx.borrow_and_update();
                status.quorum.store(quorum, Ordering::Relaxed);
                status.healthy.store(healthy, Ordering::Relaxed);
                let now = Instant::now();
                let mut actions = node.handle(Event::Quorum(quorum), now);
                actions.extend(node.handle(Event::Healthy(healthy), now));
                actions
            }
        };
        let before = status.state();
        if let Err(why) = apply(&vip, &socket, &config, &key, &mut sequence, actions).await {
            // A MASTER that cannot hold its listeners steps down, and its peer takes over.
            tracing::error!(error = %why, hold_down_ms = HOLD_DOWN.as_millis() as u64, "stepping down: cannot hold the VIP");
            *status.take_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((why, Instant::now() + HOLD_DOWN));
            status.healthy.store(false, Ordering::Relaxed);
            let step_down = node.handle(Event::Healthy(false), Instant::now());
            let _ = apply(&vip, &socket, &config, &key, &mut sequence, step_down).await;
        }
        status.set(node.state());
        if before != status.state() {
            tracing::warn!(vip = %config.vip, state = status.state(), "load-balancer state changed");
        }
    }
    prober.abort();
    if node.state() == State::Master {
        // Resign first and keep the listeners until a peer says it is MASTER: on loopback
        // hosts both listen for that moment and new connections go to the newest, so the VIP
        // never refuses one. Without a peer, the wait is bounded.
        let resign = vec![Action::SendAdvert { priority: 0 }];
        let _ = apply(&vip, &socket, &config, &key, &mut sequence, resign).await;
        let wait = (config.node.advert_interval * 4).clamp(Duration::from_millis(200), Duration::from_millis(1500));
        let taken = tokio::time::timeout(wait, peer_is_master(&socket, &key, &config, &mut last_seen, &mut buf)).await;
        if taken.is_err() {
            tracing::warn!("no peer took the VIP over within {} ms; releasing it", wait.as_millis());
        }
        let _ = apply(&vip, &socket, &config, &key, &mut sequence, vec![Action::ReleaseVip]).await;
        status.set(State::Fault);
    }
}

/// Returns once a peer's advert for our VIP arrives (a BACKUP sends none: it is MASTER now).
async fn peer_is_master(
    socket: &UdpSocket,
    key: &Key,
    config: &HaConfig,
    last_seen: &mut HashMap<u32, u64>,
    buf: &mut [u8],
) {
    loop {
        let Ok((n, _)) = socket.recv_from(buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(advert) = advert::decode(&buf[..n], key) else { continue };
        let last = last_seen.entry(advert.sender).or_insert(0);
        if advert.vip == config.vip && advert.sender != config.node.id && advert.sequence > *last && advert.priority > 0
        {
            *last = advert.sequence;
            return;
        }
    }
}

/// What holding the VIP takes: its listeners, and on a host with its own network stack the
/// address on the interface.
struct Vip {
    proxy: Arc<Proxy>,
    interface: Option<Interface>,
    address: std::net::Ipv4Addr,
    status: Arc<HaStatus>,
}

impl Vip {
    /// The address first (the listeners bind to it), then the listeners, then the news.
    async fn take(&self) -> Result<(), String> {
        if let Some(interface) = &self.interface {
            interface.add_vip(self.address).map_err(|e| e.to_string())?;
        }
        self.proxy.take_vip().await.map_err(|e| format!("cannot bind the VIP's listeners: {e}"))?;
        let Some(interface) = self.interface.clone() else { return Ok(()) };
        announce(&interface, self.address);
        let (address, status) = (self.address, self.status.clone());
        tokio::spawn(async move {
            for delay in ANNOUNCE_AGAIN {
                tokio::time::sleep(delay).await;
                if status.state() != "MASTER" {
                    return;
                }
                announce(&interface, address);
            }
        });
        Ok(())
    }

    /// The listeners first (connections already accepted finish), then the address.
    async fn release(&self) {
        self.proxy.release_vip().await;
        if let Some(interface) = &self.interface {
            if let Err(e) = interface.remove_vip(self.address) {
                tracing::error!(error = %e, "could not remove the VIP");
            }
        }
    }
}

fn announce(interface: &Interface, vip: std::net::Ipv4Addr) {
    match interface.announce(vip) {
        Ok(()) => tracing::info!(%vip, interface = interface.name(), "gratuitous ARP sent"),
        Err(e) => tracing::error!(error = %e, "could not announce the VIP"),
    }
}

/// Carries the actions out; `Err` when the VIP could not be taken (the listeners it did bind
/// are released again).
async fn apply(
    vip: &Vip,
    socket: &UdpSocket,
    config: &HaConfig,
    key: &Key,
    sequence: &mut u64,
    actions: Vec<Action>,
) -> Result<(), String> {
    let mut failed = None;
    for action in actions {
        match action {
            Action::TakeVip => {
                if let Err(why) = vip.take().await {
                    vip.release().await;
                    failed = Some(why);
                }
            }
            Action::ReleaseVip => vip.release().await,
            Action::SendAdvert { priority } => {
                *sequence += 1;
                let interval_ms = config.node.advert_interval.as_millis().min(u16::MAX as u128) as u16;
                let packet = advert::encode(
                    &Advert { priority, interval_ms, sender: config.node.id, vip: config.vip, sequence: *sequence },
                    key,
                );
                for peer in &config.peers {
                    let _ = socket.send_to(&packet, peer).await;
                }
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Every `PROBE_EVERY`: is a majority of witnesses reachable, and can this proxy serve (its
/// pools have a server up, and it is not held out after failing to take the VIP)?
async fn probe(
    proxy: Arc<Proxy>,
    status: Arc<HaStatus>,
    witnesses: Vec<std::net::SocketAddr>,
    tx: watch::Sender<(bool, bool)>,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tick.tick().await;
        let quorum = match witnesses.is_empty() {
            true => true,
            false => {
                let mut seen = 0;
                for w in &witnesses {
                    let connect = tokio::time::timeout(PROBE_EVERY, tokio::net::TcpStream::connect(w)).await;
                    seen += matches!(connect, Ok(Ok(_))) as usize;
                }
                seen * 2 > witnesses.len()
            }
        };
        let healthy = proxy.can_serve() && !status.held_down();
        tx.send_if_modified(|current| {
            let changed = *current != (quorum, healthy);
            *current = (quorum, healthy);
            changed
        });
    }
}
