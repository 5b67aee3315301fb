//! The VRRP-style state machine of one node.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not serving: starting, or its own health or quorum is lacking.
    Fault,
    /// Standing by, watching the master's adverts.
    Backup,
    /// Holding the VIP and sending adverts.
    Master,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id; the higher id wins a tie of priorities (VRRP compares addresses).
    pub id: u32,
    /// 1 to 254; higher is preferred. (255 is VRRP's address owner, 0 means leaving.)
    pub priority: u8,
    pub advert_interval: Duration,
    /// Whether a higher-priority node takes the VIP back from a lower-priority master.
    pub preempt: bool,
    /// How long a higher-priority node waits, once it could preempt, before it does.
    pub preempt_delay: Duration,
}

impl Config {
    /// VRRP's skew time: lower priorities wait a little longer before taking over.
    pub fn skew(&self) -> Duration {
        self.advert_interval.mul_f64((256 - self.priority as u32) as f64 / 256.0)
    }

    /// How long without adverts before a backup declares the master down.
    pub fn master_down_interval(&self) -> Duration {
        self.advert_interval * 3 + self.skew()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Time passes; the node acts on its timers.
    Tick,
    /// An advert from another node.
    Advert { from: u32, priority: u8 },
    /// Whether a majority of witnesses is in sight.
    Quorum(bool),
    /// Whether this node can serve (its listeners bound, some upstream up).
    Healthy(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take the VIP: bind its listeners (loopback) or add the address and send gratuitous ARP.
    TakeVip,
    /// Give the VIP up.
    ReleaseVip,
    /// Send an advert with this priority (0: "I am leaving, take over now").
    SendAdvert { priority: u8 },
}

/// One node's view: its state and timers.
#[derive(Debug, Clone)]
pub struct Node {
    config: Config,
    state: State,
    quorum: bool,
    healthy: bool,
    /// When a backup declares the master down.
    master_down_at: Option<Instant>,
    /// When a master sends its next advert.
    next_advert_at: Option<Instant>,
    /// When a preempting node may take over.
    preempt_at: Option<Instant>,
}

impl Node {
    /// A node starts in FAULT until it knows it is healthy and sees a quorum.
    pub fn new(config: Config) -> Node {
        Node {
            config,
            state: State::Fault,
            quorum: false,
            healthy: false,
            master_down_at: None,
            next_advert_at: None,
            preempt_at: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When the node next needs a `Tick`.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.master_down_at, self.next_advert_at, self.preempt_at].into_iter().flatten().min()
    }

    fn can_serve(&self) -> bool {
        self.quorum && self.healthy
    }

    /// `theirs` beats this node: a higher priority, or the same and a higher id.
    fn outranked_by(&self, from: u32, priority: u8) -> bool {
        (priority, from) > (self.config.priority, self.config.id)
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Quorum(q) => {
                self.quorum = q;
                self.reassess(now)
            }
            Event::Healthy(h) => {
                self.healthy = h;
                self.reassess(now)
            }
            Event::Advert { from, priority } => self.on_advert(from, priority, now),
            Event::Tick => self.on_tick(now),
        }
    }

    /// After health or quorum changed: step down when unable to serve, stand by when able.
    fn reassess(&mut self, now: Instant) -> Vec<Action> {
        match (self.state, self.can_serve()) {
            (State::Master, false) => self.become_fault(true),
            (State::Backup, false) => self.become_fault(false),
            (State::Fault, true) => {
                self.become_backup(now);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_advert(&mut self, from: u32, priority: u8, now: Instant) -> Vec<Action> {
        if from == self.config.id {
            return Vec::new();
        }
        match self.state {
            State::Fault => Vec::new(),
            State::Backup => {
                if priority == 0 {
                    // The master is leaving: take over after the skew only.
                    self.master_down_at = Some(now + self.config.skew());
                } else if self.outranked_by(from, priority) || !self.config.preempt {
                    self.master_down_at = Some(now + self.config.master_down_interval());
                    self.preempt_at = None;
                } else {
                    // A lower-priority master and preemption on: take over after the delay,
                    // and meanwhile do not declare it down.
                    self.master_down_at = Some(now + self.config.master_down_interval());
                    if self.preempt_at.is_none() {
                        self.preempt_at = Some(now + self.config.preempt_delay);
                    }
                }
                Vec::new()
            }
            State::Master => {
                if priority != 0 && self.outranked_by(from, priority) {
                    self.become_backup(now);
                    vec![Action::ReleaseVip]
                } else {
                    // A lower-priority node claims mastership: assert ours at once.
                    self.next_advert_at = Some(now + self.config.advert_interval);
                    vec![Action::SendAdvert { priority: self.config.priority }]
                }
            }
        }
    }

    fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Fault => Vec::new(),
            State::Backup => {
                let down = self.master_down_at.is_some_and(|t| now >= t);
                let preempt = self.preempt_at.is_some_and(|t| now >= t);
                if (down || preempt) && self.can_serve() {
                    self.become_master(now)
                } else {
                    Vec::new()
                }
            }
            State::Master => {
                if self.next_advert_at.is_some_and(|t| now >= t) {
                    self.next_advert_at = Some(now + self.config.advert_interval);
                    vec![Action::SendAdvert { priority: self.config.priority }]
                } else {
                    Vec::new()
                }
            }
        }
    }

    fn become_master(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Master;
        self.master_down_at = None;
        self.preempt_at = None;
        self.next_advert_at = Some(now + self.config.advert_interval);
        vec![Action::TakeVip, Action::SendAdvert { priority: self.config.priority }]
    }

    fn become_backup(&mut self, now: Instant) {
        self.state = State::Backup;
        self.next_advert_at = None;
        self.preempt_at = None;
        self.master_down_at = Some(now + self.config.master_down_interval());
    }

    fn become_fault(&mut self, was_master: bool) -> Vec<Action> {
        self.state = State::Fault;
        self.master_down_at = None;
        self.next_advert_at = None;
        self.preempt_at = None;
        match was_master {
            // Priority 0 tells the backup to take over now rather than after three intervals.
            true => vec![Action::ReleaseVip, Action::SendAdvert { priority: 0 }],
            false => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADVERT: Duration = Duration::from_millis(50);

    fn config(id: u32, priority: u8) -> Config {
        Config { id, priority, advert_interval: ADVERT, preempt: true, preempt_delay: Duration::ZERO }
    }

    fn ready(id: u32, priority: u8, now: Instant) -> Node {
        let mut n = Node::new(config(id, priority));
        n.handle(Event::Healthy(true), now);
        n.handle(Event::Quorum(true), now);
        n
    }

    /// Several nodes on a perfect network, stepped every 10 ms; returns who held the VIP when.
    struct Cluster {
        nodes: Vec<Node>,
        now: Instant,
        /// Links that drop adverts: (from, to).
        cut: Vec<(usize, usize)>,
        alive: Vec<bool>,
    }

    impl Cluster {
        fn new(priorities: &[u8]) -> Cluster {
            let now = Instant::now();
            let nodes = priorities.iter().enumerate().map(|(i, p)| ready(i as u32 + 1, *p, now)).collect();
            Cluster { nodes, now, cut: Vec::new(), alive: vec![true; priorities.len()] }
        }

        fn step(&mut self, ms: u64) {
            for _ in 0..ms / 10 {
                self.now += Duration::from_millis(10);
                let mut adverts = Vec::new();
                for (i, n) in self.nodes.iter_mut().enumerate() {
                    if !self.alive[i] {
                        continue;
                    }
                    for a in n.handle(Event::Tick, self.now) {
                        if let Action::SendAdvert { priority } = a {
                            adverts.push((i, n.config().id, priority));
                        }
                    }
                }
                for (from_index, from, priority) in adverts {
                    for j in 0..self.nodes.len() {
                        if j != from_index && self.alive[j] && !self.cut.contains(&(from_index, j)) {
                            self.nodes[j].handle(Event::Advert { from, priority }, self.now);
                        }
                    }
                }
            }
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len()).filter(|&i| self.alive[i] && self.nodes[i].state() == State::Master).collect()
        }
    }

    #[test]
    fn the_highest_priority_becomes_the_only_master() {
        let mut c = Cluster::new(&[200, 100]);
        c.step(400);
        assert_eq!(c.masters(), vec![0]);
        assert_eq!(c.nodes[1].state(), State::Backup);
    }

    #[test]
    fn a_dead_master_is_replaced_within_the_master_down_interval() {
        let mut c = Cluster::new(&[200, 100]);
        c.step(400);
        c.alive[0] = false; // kill -9: silent
        let mut waited = 0;
        while c.masters().is_empty() {
            c.step(10);
            waited += 10;
            assert!(waited < 1000, "no takeover");
        }
        assert_eq!(c.masters(), vec![1]);
        // 3 adverts + skew of a priority-100 node: 150 + 30 ms, within one more tick.
        assert!(waited <= 200, "took {waited} ms");
    }

    #[test]
    fn a_master_that_steps_down_hands_over_at_once() {
        let mut c = Cluster::new(&[200, 100]);
        c.step(400);
        let now = c.now;
        let actions = c.nodes[0].handle(Event::Healthy(false), now);
        assert_eq!(actions, vec![Action::ReleaseVip, Action::SendAdvert { priority: 0 }]);
        c.nodes[1].handle(Event::Advert { from: 1, priority: 0 }, now);
        c.step(50);
        assert_eq!(c.masters(), vec![1], "priority 0 means take over after the skew only");
    }

    #[test]
    fn the_preferred_node_preempts_when_it_returns_and_not_before_its_delay() {
        let mut c = Cluster::new(&[200, 100]);
        c.nodes[0].config.preempt_delay = Duration::from_millis(300);
        c.step(400);
        c.alive[0] = false;
        c.step(400);
        assert_eq!(c.masters(), vec![1]);
        // lb-01 comes back: a fresh node, standing by first.
        c.alive[0] = true;
        let now = c.now;
        c.nodes[0] = {
            let mut n = Node::new(c.nodes[0].config().clone());
            n.handle(Event::Healthy(true), now);
            n.handle(Event::Quorum(true), now);
            n
        };
        c.step(200);
        assert_eq!(c.masters(), vec![1], "not before the preempt delay");
        c.step(300);
        assert_eq!(c.masters(), vec![0], "then the preferred node takes the VIP back");
        assert_eq!(c.nodes[1].state(), State::Backup);
    }

    #[test]
    fn without_preemption_a_returning_node_stays_backup() {
        let mut c = Cluster::new(&[200, 100]);
        c.nodes[0].config.preempt = false;
        c.step(400);
        c.alive[0] = false;
        c.step(400);
        c.alive[0] = true;
        let now = c.now;
        let mut returning = Node::new(Config { preempt: false, ..config(1, 200) });
        returning.handle(Event::Healthy(true), now);
        returning.handle(Event::Quorum(true), now);
        c.nodes[0] = returning;
        c.step(1000);
        assert_eq!(c.masters(), vec![1]);
    }

    #[test]
    fn split_brain_cut_off_nodes_without_quorum_never_hold_the_vip() {
        let mut c = Cluster::new(&[200, 100]);
        c.step(400);
        // The two load balancers lose sight of each other. lb-01 also loses the witnesses
        // (it is the cut-off side); lb-02 keeps them.
        c.cut = vec![(0, 1), (1, 0)];
        let now = c.now;
        let actions = c.nodes[0].handle(Event::Quorum(false), now);
        assert_eq!(actions[0], Action::ReleaseVip);
        c.step(1000);
        assert_eq!(c.masters(), vec![1], "exactly one master, on the side with the quorum");
        // Had lb-02 lost the quorum too, nobody would serve rather than both.
        let now = c.now;
        c.nodes[1].handle(Event::Quorum(false), now);
        c.step(500);
        assert!(c.masters().is_empty());
    }

    #[test]
    fn equal_priorities_are_settled_by_id() {
        let mut c = Cluster::new(&[100, 100]);
        c.step(500);
        assert_eq!(c.masters(), vec![1], "the higher id wins the tie");
    }

    #[test]
    fn a_node_without_quorum_stays_in_fault() {
        let now = Instant::now();
        let mut n = Node::new(config(1, 200));
        n.handle(Event::Healthy(true), now);
        assert!(n.handle(Event::Tick, now + Duration::from_secs(1)).is_empty());
        assert_eq!(n.state(), State::Fault);
    }

    #[test]
    fn skew_and_master_down_interval_follow_vrrp() {
        let c = config(1, 100);
        assert_eq!(c.skew(), ADVERT.mul_f64(156.0 / 256.0));
        assert_eq!(c.master_down_interval(), ADVERT * 3 + c.skew());
    }
}
