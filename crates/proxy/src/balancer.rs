//! Choosing a server for a request, as HAProxy's `balance`: weighted round robin, least
//! connections, power-of-two random choices, and consistent hashing on a key (source address,
//! the path, a header, a cookie). Backup servers take requests only when no primary server can.
//!
//! Pure: the servers are seen through [`Servers`], so every choice is tested without I/O.

/// How a pool spreads requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's), unrolled into a schedule.
    RoundRobin,
    /// The server with the fewest requests in flight, relative to its weight.
    LeastConn,
    /// Two servers at random; the one with fewer requests in flight (relative to weight).
    Random,
    /// Consistent hashing on the client's address.
    Source,
    /// Consistent hashing on the path, without the query (HAProxy's `balance uri`): each
    /// object stays on one server, as caches want.
    Uri,
    /// Consistent hashing on a request header's value; round robin when it is absent.
    Header(String),
    /// Consistent hashing on a cookie's value; round robin when it is absent.
    Cookie(String),
}

impl Algorithm {
    /// Parses HAProxy's spelling: `roundrobin`, `leastconn`, `random`, `source`, `uri`,
    /// `hdr(NAME)`, `cookie(NAME)`.
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        let inner = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
        };
        match s {
            "roundrobin" => Ok(Algorithm::RoundRobin),
            "leastconn" => Ok(Algorithm::LeastConn),
            "random" => Ok(Algorithm::Random),
            "source" => Ok(Algorithm::Source),
            "uri" => Ok(Algorithm::Uri),
            _ => {
                if let Some(name) = inner("hdr(") {
                    Ok(Algorithm::Header(name.to_ascii_lowercase()))
                } else if let Some(name) = inner("cookie(") {
                    Ok(Algorithm::Cookie(name.to_string()))
                } else {
                    Err(format!(
                        "unknown balance `{s}`; expected roundrobin, leastconn, random, source, uri, hdr(NAME) or cookie(NAME)"
                    ))
                }
            }
        }
    }

    pub fn is_hash(&self) -> bool {
        matches!(self, Algorithm::Source | Algorithm::Uri | Algorithm::Header(_) | Algorithm::Cookie(_))
    }
}

/// The servers of a pool as the balancer sees them at the moment of a choice.
pub trait Servers {
    fn count(&self) -> usize;
    /// Up, taking new requests (not drained or disabled), and not already tried.
    fn eligible(&self, i: usize) -> bool;
    fn is_backup(&self, i: usize) -> bool;
    /// Requests in flight.
    fn load(&self, i: usize) -> u64;
    fn weight(&self, i: usize) -> u32;
}

/// Virtual nodes per unit of weight on the hash ring.
const POINTS_PER_WEIGHT: u32 = 40;

/// A pool's balancing structures, built once per config or weight change.
#[derive(Debug, Clone)]
pub struct Balancer {
    pub algorithm: Algorithm,
    schedule: Vec<u16>,
    ring: Vec<(u64, u16)>,
}

/// What varies per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick {
    /// A counter that advances once per request.
    pub cursor: usize,
    /// The hash of the request's key, for hashing algorithms.
    pub key: Option<u64>,
    /// Random bits, for `random`.
    pub random: u64,
}

impl Balancer {
    /// `names` and `weights` of the servers, in pool order.
    pub fn new(algorithm: Algorithm, names: &[&str], weights: &[u32]) -> Balancer {
        let schedule = smooth_weighted_schedule(weights);
        let ring = if algorithm.is_hash() { hash_ring(names, weights) } else { Vec::new() };
        Balancer { algorithm, schedule, ring }
    }

    /// The server for a request: among primary servers, else among backups; `None` when no
    /// server is eligible.
    pub fn pick(&self, servers: &impl Servers, pick: Pick) -> Option<usize> {
        self.pick_among(servers, pick, false).or_else(|| self.pick_among(servers, pick, true))
    }

    fn pick_among(&self, servers: &impl Servers, pick: Pick, backups: bool) -> Option<usize> {
        let ok = |i: usize| servers.is_backup(i) == backups && servers.eligible(i) && servers.weight(i) > 0;
        match (&self.algorithm, pick.key) {
            (Algorithm::LeastConn, _) => least_loaded(servers, pick.cursor, ok),
            (Algorithm::Random, _) => two_random_choices(servers, pick.random, ok),
            (a, Some(key)) if a.is_hash() => self.on_ring(key, ok),
            _ => self.round_robin(pick.cursor, ok),
        }
    }

    fn round_robin(&self, cursor: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        (0..n).map(|k| self.schedule[(cursor + k) % n] as usize).find(|&i| ok(i))
    }

    fn on_ring(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(point, _)| *point < key);
        let n = self.ring.len();
        (0..n).map(|k| self.ring[(start + k) % n].1 as usize).find(|&i| ok(i))
    }
}

fn least_loaded(servers: &impl Servers, cursor: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = servers.count();
    let mut best: Option<usize> = None;
    // Start at the cursor so that ties rotate instead of always landing on the first server.
    for i in (0..n).map(|k| (cursor + k) % n).filter(|&i| ok(i)) {
        best = match best {
            Some(b) if !lighter(servers, i, b) => Some(b),
            _ => Some(i),
        };
    }
    best
}

/// `a` carries less load per unit of weight than `b`.
fn lighter(servers: &impl Servers, a: usize, b: usize) -> bool {
    (servers.load(a) as u128) * (servers.weight(b) as u128) < (servers.load(b) as u128) * (servers.weight(a) as u128)
}

fn two_random_choices(servers: &impl Servers, random: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = servers.count();
    let eligible = (0..n).filter(|&i| ok(i)).count();
    if eligible == 0 {
        return None;
    }
    let nth = |k: usize| (0..n).filter(|&i| ok(i)).nth(k % eligible);
    let a = nth((random & 0xffff_ffff) as usize)?;
    let b = nth((random >> 32) as usize)?;
    Some(if lighter(servers, b, a) { b } else { a })
}

/// nginx's smooth weighted round robin, run for one full cycle: each server appears
/// `weight` times, spread out rather than bunched.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    if total == 0 {
        return (0..weights.len() as u16).collect();
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

fn hash_ring(names: &[&str], weights: &[u32]) -> Vec<(u64, u16)> {
    let mut ring = Vec::new();
    for (i, (name, &weight)) in names.iter().zip(weights).enumerate() {
        for v in 0..weight.max(1) * POINTS_PER_WEIGHT {
            let point = hash_bytes(format!("{name}#{v}").as_bytes());
            ring.push((point, i as u16));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a with a final mix: stable across runs and machines, so a key keeps its server.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Clone)]
    struct Fake {
        up: Vec<bool>,
        backup: Vec<bool>,
        load: Vec<u64>,
        weight: Vec<u32>,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake { up: vec![true; n], backup: vec![false; n], load: vec![0; n], weight: vec![1; n] }
        }
        fn balancer(&self, a: Algorithm) -> Balancer {
            let names: Vec<String> = (0..self.up.len()).map(|i| format!("s{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            Balancer::new(a, &names, &self.weight)
        }
    }

    impl Servers for Fake {
        fn count(&self) -> usize {
            self.up.len()
        }
        fn eligible(&self, i: usize) -> bool {
            self.up[i]
        }
        fn is_backup(&self, i: usize) -> bool {
            self.backup[i]
        }
        fn load(&self, i: usize) -> u64 {
            self.load[i]
        }
        fn weight(&self, i: usize) -> u32 {
            self.weight[i]
        }
    }

    fn rr(cursor: usize) -> Pick {
        Pick { cursor, ..Pick::default() }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_servers_that_are_down() {
        let mut f = Fake::new(3);
        let b = f.balancer(Algorithm::RoundRobin);
        let picks: Vec<_> = (0..6).map(|c| b.pick(&f, rr(c)).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        f.up[1] = false;
        let picks: Vec<_> = (0..4).map(|c| b.pick(&f, rr(c)).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        f.up = vec![false; 3];
        assert_eq!(b.pick(&f, rr(0)), None);
    }

    #[test]
    fn weighted_round_robin_is_proportional_and_spread_out() {
        let mut f = Fake::new(3);
        f.weight = vec![5, 1, 1];
        let b = f.balancer(Algorithm::RoundRobin);
        let picks: Vec<_> = (0..7).map(|c| b.pick(&f, rr(c)).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
    }

    #[test]
    fn weight_zero_gets_nothing() {
        let mut f = Fake::new(2);
        f.weight = vec![0, 1];
        let b = f.balancer(Algorithm::RoundRobin);
        assert!((0..10).all(|c| b.pick(&f, rr(c)) == Some(1)));
    }

    #[test]
    fn backups_serve_only_when_every_primary_is_down() {
        let mut f = Fake::new(3);
        f.backup[2] = true;
        let b = f.balancer(Algorithm::RoundRobin);
        assert!((0..10).all(|c| b.pick(&f, rr(c)) != Some(2)));
        f.up[0] = false;
        assert!((0..10).all(|c| b.pick(&f, rr(c)) == Some(1)));
        f.up[1] = false;
        assert!((0..10).all(|c| b.pick(&f, rr(c)) == Some(2)));
    }

    #[test]
    fn least_conn_picks_the_least_loaded_relative_to_weight() {
        let mut f = Fake::new(3);
        f.load = vec![5, 2, 3];
        let b = f.balancer(Algorithm::LeastConn);
        assert_eq!(b.pick(&f, rr(0)), Some(1));
        f.weight = vec![1, 1, 4]; // 3/4 per unit of weight beats 2/1
        assert_eq!(b.pick(&f, rr(0)), Some(2));
        f.load = vec![0, 0, 0];
        f.weight = vec![1, 1, 1];
        let picks: Vec<_> = (0..3).map(|c| b.pick(&f, rr(c)).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2], "ties rotate");
    }

    #[test]
    fn random_two_choices_prefers_the_lighter_of_two() {
        let mut f = Fake::new(2);
        f.load = vec![10, 0];
        let b = f.balancer(Algorithm::Random);
        // Choices (0, 1) and (1, 0) both land on the idle server.
        assert_eq!(b.pick(&f, Pick { random: 1, ..Pick::default() }), Some(1));
        assert_eq!(b.pick(&f, Pick { random: 1 << 32, ..Pick::default() }), Some(1));
        f.up[1] = false;
        assert_eq!(b.pick(&f, Pick { random: 1, ..Pick::default() }), Some(0));
    }

    #[test]
    fn hashing_keeps_a_key_on_its_server_and_moves_few_keys_when_one_goes() {
        let mut f = Fake::new(4);
        let b = f.balancer(Algorithm::Source);
        let key = |k: u32| Pick { key: Some(hash_bytes(&k.to_be_bytes())), ..Pick::default() };
        let before: Vec<usize> = (0..2000).map(|k| b.pick(&f, key(k)).unwrap()).collect();
        let again: Vec<usize> = (0..2000).map(|k| b.pick(&f, key(k)).unwrap()).collect();
        assert_eq!(before, again);
        let mut counts = BTreeMap::new();
        for s in &before {
            *counts.entry(*s).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&c| (300..700).contains(&c)), "{counts:?}");
        f.up[2] = false;
        let after: Vec<usize> = (0..2000).map(|k| b.pick(&f, key(k)).unwrap()).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(b, a, "only keys of the server that went away move");
            }
        }
        assert!(!after.contains(&2));
    }

    #[test]
    fn hashing_without_a_key_falls_back_to_round_robin() {
        let f = Fake::new(2);
        let b = f.balancer(Algorithm::Header("x-user".into()));
        assert_eq!(b.pick(&f, rr(0)), Some(0));
        assert_eq!(b.pick(&f, rr(1)), Some(1));
    }

    #[test]
    fn parses_haproxy_spellings() {
        assert_eq!(Algorithm::parse("hdr(X-User)"), Ok(Algorithm::Header("x-user".into())));
        assert_eq!(Algorithm::parse("cookie(sid)"), Ok(Algorithm::Cookie("sid".into())));
        assert_eq!(Algorithm::parse("uri"), Ok(Algorithm::Uri));
        assert!(Algorithm::parse("hdr()").is_err());
        assert!(Algorithm::parse("static-rr").unwrap_err().contains("expected roundrobin"));
    }
}
