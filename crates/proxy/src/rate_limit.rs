//! Requests per client address on a route, as nginx's `limit_req` (`rate=10r/s burst=20
//! nodelay`) and HAProxy's stick table on `http_req_rate` with `deny_status 429`: a client
//! may send `burst` requests at once, then one every `1 / requests_per_second`; beyond that it
//! gets a 429 with `Retry-After`. The count may be kept per value of a request header or a
//! cookie instead (an API key, a session: nginx's `limit_req_zone $http_x_api_key`, HAProxy's
//! `track-sc0 req.hdr(X-Api-Key)`); a request without one counts against its address.
//!
//! The generic cell rate algorithm keeps one number per client, the time its next request is
//! due ("theoretical arrival time"); a client whose time is past holds no state worth keeping,
//! so entries are swept as they go stale. The table is sharded by address so that workers
//! rarely meet on a lock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use http::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// A shard is swept of stale clients when it grows past this many since its last sweep.
const SWEEP_ABOVE: usize = 1024;

/// Whom a rate limit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// Each client address.
    Client,
    /// Each value of this request header.
    Header(http::HeaderName),
    /// Each value of this cookie.
    Cookie(String),
}

impl RateKey {
    /// `client`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<RateKey, String> {
        let bad = || format!("`{text}`: expected client, header:NAME or cookie:NAME");
        match text.split_once(':') {
            None if text == "client" => Ok(RateKey::Client),
            Some(("header", name)) => {
                http::HeaderName::from_bytes(name.as_bytes()).map(RateKey::Header).map_err(|_| bad())
            }
            Some(("cookie", name))
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Ok(RateKey::Cookie(name.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Debug)]
pub struct RateLimit {
    pub key: RateKey,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a client's due time may run: `burst` intervals.
    tolerance: u64,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Requests refused, for `/metrics`.
    pub refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Shard {
    /// By a keyed 64-bit hash of whom it counts (an address, or a header's value).
    due: HashMap<u64, u64>,
    sweep_at: usize,
}

impl RateLimit {
    /// `requests_per_second` > 0 (validated by the config).
    pub fn new(requests_per_second: f64, burst: u32, key: RateKey) -> RateLimit {
        let interval = (1e9 / requests_per_second).max(1.0) as u64;
        RateLimit {
            key,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            epoch: Instant::now(),
            hasher: Default::default(),
            shards: std::array::from_fn(|_| Mutex::new(Shard { due: HashMap::new(), sweep_at: SWEEP_ABOVE })),
            refused: AtomicU64::new(0),
        }
    }

    /// `Ok` when the request of `client` with these headers may go on now; otherwise how
    /// long until it may.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        self.check_at(self.counted(client, headers), Instant::now())
    }

    /// Whom the request counts against, hashed: the key's value (kept apart from addresses),
    /// else the client's address.
    fn counted(&self, client: IpAddr, headers: &HeaderMap) -> u64 {
        let value = match &self.key {
            RateKey::Client => None,
            RateKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            RateKey::Cookie(name) => crate::forward::cookie_value(headers, name).map(str::as_bytes),
        };
        match value {
            Some(value) => self.hasher.hash_one((1u8, value)),
            None => self.hasher.hash_one((0u8, crate::access::canonical(client))),
        }
    }

    fn check_at(&self, client: u64, now: Instant) -> Result<(), Duration> {
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[client as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = shard.due.get(&client).copied().unwrap_or(now).max(now);
        if due - now > self.tolerance {
            drop(shard);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Duration::from_nanos(due - now - self.tolerance));
        }
        shard.due.insert(client, due + self.interval);
        if shard.due.len() > shard.sweep_at {
            shard.due.retain(|_, due| *due > now);
            shard.sweep_at = (shard.due.len() * 2).max(SWEEP_ABOVE);
        }
        Ok(())
    }

    /// Clients with state now (tests and stats).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.due.len()).unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Whom a request from `address` without headers counts against.
    fn by_address(limit: &RateLimit, address: &str) -> u64 {
        limit.counted(ip(address), &HeaderMap::new())
    }

    #[test]
    fn a_burst_passes_then_one_request_per_interval() {
        let limit = RateLimit::new(10.0, 3, RateKey::Client); // one per 100 ms, 3 extra at once
        let t0 = Instant::now();
        let a = by_address(&limit, "192.0.2.1");
        for i in 0..4 {
            assert_eq!(limit.check_at(a, t0), Ok(()), "request {i} of the burst");
        }
        let wait = limit.check_at(a, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(limit.check_at(a, t0 + Duration::from_millis(99)).is_err());
        assert_eq!(limit.check_at(a, t0 + Duration::from_millis(100)), Ok(()));
        assert!(limit.check_at(a, t0 + Duration::from_millis(100)).is_err());
        // Another client has its own allowance.
        assert_eq!(limit.check_at(by_address(&limit, "192.0.2.2"), t0), Ok(()));
        // A quiet client earns its burst back.
        for _ in 0..4 {
            assert_eq!(limit.check_at(a, t0 + Duration::from_secs(2)), Ok(()));
        }
        assert_eq!(limit.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_header_or_cookie_key_counts_each_value_and_falls_back_to_the_address() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        let limit = RateLimit::new(1.0, 0, RateKey::parse("header:X-Api-Key").unwrap());
        let same_address = ip("192.0.2.9");
        let (alice, bob) = (headers(&[("x-api-key", "alice")]), headers(&[("x-api-key", "bob")]));
        assert_eq!(
            limit.counted(same_address, &alice),
            limit.counted(ip("198.51.100.1"), &alice),
            "the key, not where from"
        );
        assert_ne!(limit.counted(same_address, &alice), limit.counted(same_address, &bob));
        assert_ne!(limit.counted(same_address, &HeaderMap::new()), limit.counted(same_address, &alice));
        let t0 = Instant::now();
        assert_eq!(limit.check_at(limit.counted(same_address, &alice), t0), Ok(()));
        assert!(limit.check_at(limit.counted(same_address, &alice), t0).is_err());
        assert_eq!(limit.check_at(limit.counted(same_address, &bob), t0), Ok(()), "bob has his own");
        let limit = RateLimit::new(1.0, 0, RateKey::parse("cookie:sid").unwrap());
        let session = headers(&[("cookie", "theme=dark; sid=s1")]);
        assert_eq!(
            limit.counted(same_address, &session),
            limit.counted(ip("203.0.113.5"), &headers(&[("cookie", "sid=s1")]))
        );
        for bad in ["header:", "header:bad name", "cookie:", "address", "cookie:a;b"] {
            assert!(RateKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_the_ipv4_client() {
        let limit = RateLimit::new(1.0, 0, RateKey::Client);
        let t0 = Instant::now();
        assert_eq!(limit.check_at(by_address(&limit, "192.0.2.7"), t0), Ok(()));
        assert!(limit.check_at(by_address(&limit, "::ffff:192.0.2.7"), t0).is_err());
    }

    #[test]
    fn stale_clients_are_swept() {
        let limit = RateLimit::new(1000.0, 0, RateKey::Client);
        let t0 = Instant::now();
        let client = |i: u32| limit.counted(IpAddr::from(i.to_be_bytes()), &HeaderMap::new());
        for i in 0..20_000u32 {
            let _ = limit.check_at(client(i), t0);
        }
        assert_eq!(limit.tracked(), 20_000, "nobody is stale yet");
        // A second later the first 20,000 are due in the past: growing shards drop them.
        let later = t0 + Duration::from_secs(1);
        for i in 0..17_600u32 {
            let _ = limit.check_at(client(i + 1_000_000), later);
        }
        assert!(limit.tracked() < 20_000, "{} clients kept", limit.tracked());
    }
}
