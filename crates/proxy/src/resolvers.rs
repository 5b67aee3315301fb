//! Server host names asked again while the proxy runs (HAProxy's `resolvers` section, nginx's
//! `resolver` with `server … resolve`): a server written as `web-01.internal:8080` follows its
//! name when the address behind it changes (a container rescheduled, a host replaced, a DNS
//! record that follows health), without a reload.
//!
//! The proxy asks the configured nameservers itself, over UDP (TCP when the answer comes back
//! truncated), every `hold_valid_ms`, as HAProxy does — not through the system's resolver,
//! whose caching and search rules the proxy could not see. What an answer does to a server:
//! - addresses: the server keeps its address while it is among them (HAProxy's preference for
//!   the current address), else takes the first; idle connections to the old one are closed;
//! - the name does not exist or has no address (NXDOMAIN, NODATA): the server takes no
//!   requests until it has one again, as HAProxy puts it in maintenance;
//! - no answer, a server failure, a refusal, garbage: the last address stands — an outage of
//!   DNS must not take every server out.
//!
//! [`read_answer`] is a pure function over a datagram from the network (the fuzz target
//! `dns_answer` drives it); [`resolve`] is the blocking exchange, used at load and, on the
//! blocking pool, by [`watch_server`] and [`watch_template`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::config::Resolvers;
use crate::upstream::ServerState;

/// A UDP answer without EDNS is at most 512 bytes; a bigger buffer costs nothing and takes
/// what a server sends anyway.
const UDP_BUFFER: usize = 4096;
/// The longest DNS message over TCP (its two-byte length prefix).
const TCP_MAX: usize = 65_535;

/// What the nameservers said about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Its addresses, in the order given.
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN: no such name.
    NoSuchName,
    /// The name exists without an address (NODATA).
    NoAddress,
}

/// Why a name could not be resolved this time (the last address then stands).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("`{0}` is not a DNS name")]
    BadName(String),
    #[error("no nameserver answered within {0} ms")]
    Timeout(u128),
    #[error("nameserver {0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("nameserver {0} answered {1}")]
    Refused(SocketAddr, ResponseCode),
    #[error("nameserver {0} sent an answer that does not fit the question: {1}")]
    Malformed(SocketAddr, String),
}

/// One reply read from the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Answer(Answer),
    /// The answer did not fit a datagram: ask again over TCP.
    Truncated,
    /// A server failure or refusal (SERVFAIL, REFUSED, NOTIMP…).
    Failed(ResponseCode),
}

/// The fully qualified name for `host` (`web-01.internal` → `web-01.internal.`): the proxy
/// applies no search list, so a name is asked as written.
pub fn fqdn(host: &str) -> Result<Name, ResolveError> {
    let dotted = if host.ends_with('.') { host.to_string() } else { format!("{host}.") };
    Name::from_str(&dotted).map_err(|_| ResolveError::BadName(host.to_string()))
}

/// The bytes of a recursive query for `name`'s records of `qtype`.
pub fn query_bytes(id: u16, name: &Name, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), qtype));
    // Encoding a query of a valid name cannot fail; an empty datagram would just go unanswered.
    message.to_vec().unwrap_or_default()
}

/// Reads a nameserver's reply to the query `id` for `name` and `qtype`. `Err` for bytes that
/// are no reply to that question (another query's, a forgery, garbage): the caller keeps
/// waiting for the real one or gives up at its deadline.
pub fn read_answer(bytes: &[u8], id: u16, name: &Name, qtype: RecordType) -> Result<Reply, String> {
    if is_truncated_reply_to(bytes, id) {
        // Some servers cut a reply to its header, counts left as they were: what matters is
        // the TC bit, as glibc's resolver reads it. A forgery gains only a question over TCP.
        return Ok(Reply::Truncated);
    }
    let message = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
    let meta = &message.metadata;
    if meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return Err("not a response to a query".into());
    }
    if meta.id != id {
        return Err(format!("answers query {} where {id} was asked", meta.id));
    }
    match message.queries.as_slice() {
        [q] if q.name() == name && q.query_type() == qtype => {}
        // A truncated reply may drop even the question section.
        [] if meta.truncation => {}
        _ => return Err("answers another question".into()),
    }
    if meta.truncation {
        return Ok(Reply::Truncated);
    }
    match meta.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Reply::Answer(Answer::NoSuchName)),
        code => return Ok(Reply::Failed(code)),
    }
    let addresses: Vec<IpAddr> = message
        .answers
        .iter()
        .filter_map(|r| match (&r.data, qtype) {
            (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok(Reply::Answer(if addresses.is_empty() { Answer::NoAddress } else { Answer::Addresses(addresses) }))
}

/// A header with `id`, QR (a response) and TC (truncated) set.
fn is_truncated_reply_to(bytes: &[u8], id: u16) -> bool {
    matches!(bytes, [hi, lo, flags, ..] if bytes.len() >= 12 && u16::from_be_bytes([*hi, *lo]) == id && flags & 0x82 == 0x82)
}

/// Asks the nameservers, in order, for `host`'s IPv4 addresses, then its IPv6 ones when it has
/// none; the first nameserver that answers decides. Blocking: at most `timeout` per
/// nameserver and record type.
pub fn resolve(host: &str, nameservers: &[SocketAddr], timeout: Duration) -> Result<Answer, ResolveError> {
    let name = fqdn(host)?;
    let v4 = ask_any(&name, RecordType::A, nameservers, timeout)?;
    if v4 != Answer::NoAddress {
        return Ok(v4);
    }
    ask_any(&name, RecordType::AAAA, nameservers, timeout)
}

fn ask_any(
    name: &Name,
    qtype: RecordType,
    nameservers: &[SocketAddr],
    timeout: Duration,
) -> Result<Answer, ResolveError> {
    let mut last = ResolveError::Timeout(timeout.as_millis());
    for &ns in nameservers {
        match ask(name, qtype, ns, timeout) {
            Ok(answer) => return Ok(answer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One question to one nameserver: over UDP, again over TCP when the answer is truncated.
fn ask(name: &Name, qtype: RecordType, ns: SocketAddr, timeout: Duration) -> Result<Answer, ResolveError> {
    let deadline = Instant::now() + timeout;
    let id = random_id();
    let question = Question { bytes: query_bytes(id, name, qtype), id, name, qtype };
    let reply = match ask_udp(&question, ns, deadline)? {
        Reply::Truncated => ask_tcp(&question, ns, deadline)?,
        reply => reply,
    };
    match reply {
        Reply::Answer(answer) => Ok(answer),
        Reply::Failed(code) => Err(ResolveError::Refused(ns, code)),
        Reply::Truncated => Err(ResolveError::Malformed(ns, "truncated over TCP".into())),
    }
}

fn remaining(deadline: Instant, timeout_ms: u128) -> Result<Duration, ResolveError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(ResolveError::Timeout(timeout_ms)),
    }
}

/// One query as sent, and what its reply must match.
struct Question<'a> {
    bytes: Vec<u8>,
    id: u16,
    name: &'a Name,
    qtype: RecordType,
}

impl Question<'_> {
    fn read(&self, reply: &[u8]) -> Result<Reply, String> {
        read_answer(reply, self.id, self.name, self.qtype)
    }
}

fn ask_udp(question: &Question<'_>, ns: SocketAddr, deadline: Instant) -> Result<Reply, ResolveError> {
    let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis();
    let io = |e| ResolveError::Io(ns, e);
    let local: SocketAddr = if ns.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    // A connected socket on a random port takes datagrams from the nameserver only; with the
    // random id, a forged answer has to guess both.
    let socket = UdpSocket::bind(local).map_err(io)?;
    socket.connect(ns).map_err(io)?;
    socket.send(&question.bytes).map_err(io)?;
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        socket.set_read_timeout(Some(remaining(deadline, timeout_ms)?)).map_err(io)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ResolveError::Timeout(timeout_ms))
            }
            Err(e) => return Err(io(e)),
        };
        // Anything else (a late answer to an earlier query, a forgery) is skipped.
        if let Ok(reply) = question.read(&buf[..n]) {
            return Ok(reply);
        }
    }
}

fn ask_tcp(question: &Question<'_>, ns: SocketAddr, deadline: Instant) -> Result<Reply, ResolveError> {
    let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis();
    let io = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ResolveError::Timeout(timeout_ms),
        _ => ResolveError::Io(ns, e),
    };
    let mut stream = TcpStream::connect_timeout(&ns, remaining(deadline, timeout_ms)?).map_err(io)?;
    let len = u16::try_from(question.bytes.len()).map_err(|_| ResolveError::BadName(question.name.to_string()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(&question.bytes);
    stream.set_write_timeout(Some(remaining(deadline, timeout_ms)?)).map_err(io)?;
    stream.write_all(&framed).map_err(io)?;
    let mut prefix = [0u8; 2];
    stream.set_read_timeout(Some(remaining(deadline, timeout_ms)?)).map_err(io)?;
    stream.read_exact(&mut prefix).map_err(io)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix)).min(TCP_MAX)];
    stream.set_read_timeout(Some(remaining(deadline, timeout_ms)?)).map_err(io)?;
    stream.read_exact(&mut message).map_err(io)?;
    question.read(&message).map_err(|e| ResolveError::Malformed(ns, e))
}

/// A query id nobody can predict (RFC 5452): from the kernel's random pool.
fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: getrandom writes at most `id.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != 2 {
        // Never expected on Linux ≥ 3.17; the clock's nanoseconds are still hard to guess.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        return (nanos ^ (nanos >> 16)) as u16;
    }
    u16::from_ne_bytes(id)
}

/// The nameservers of `/etc/resolv.conf` (HAProxy's `parse-resolv-conf`), port 53.
pub fn system_nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        // A scoped IPv6 address (`fe80::1%eth0`) is not taken: std cannot parse the scope.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Asks the nameservers for `host` every `hold_valid` for as long as the task lives (it is
/// aborted and started again with the checks at each reload), handing each answer to
/// `apply`. A failure changes nothing and is logged once until it changes.
async fn watch(pool: &str, host: &str, resolvers: Resolvers, mut apply: impl FnMut(&Answer)) {
    let mut ticker = tokio::time::interval(resolvers.hold_valid);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now, and the name was just resolved when the config loaded.
    ticker.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let (name, nameservers, timeout) = (host.to_string(), resolvers.nameservers.clone(), resolvers.timeout);
        let asked = tokio::task::spawn_blocking(move || resolve(&name, &nameservers, timeout)).await;
        let Ok(result) = asked else { continue };
        match result {
            Ok(answer) => {
                last_error = None;
                apply(&answer);
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(pool, host, "DNS: {e}; the last addresses stand");
                }
                last_error = Some(e);
            }
        }
    }
}

/// Follows one server's host name.
pub async fn watch_server(pool: String, server: Arc<ServerState>, host: String, resolvers: Resolvers) {
    watch(&pool, &host, resolvers, |answer| follow(&pool, &server, &host, answer)).await
}

/// Which address each slot of a template takes from an answer: a slot keeps its address
/// while the answer still gives it; the answer's other addresses go, in order, to the slots
/// left without one; `None`: no address (more slots than addresses).
pub fn assign(current: &[Option<IpAddr>], answer: &[IpAddr]) -> Vec<Option<IpAddr>> {
    let mut next: Vec<Option<IpAddr>> = Vec::with_capacity(current.len());
    for ip in current {
        // A slot keeps its address if the answer has it and no earlier slot kept it too.
        next.push(ip.filter(|ip| answer.contains(ip) && !next.contains(&Some(*ip))));
    }
    let mut unplaced: Vec<IpAddr> = Vec::new();
    for ip in answer {
        if !next.contains(&Some(*ip)) && !unplaced.contains(ip) {
            unplaced.push(*ip);
        }
    }
    let mut unplaced = unplaced.into_iter();
    for slot in next.iter_mut().filter(|s| s.is_none()) {
        *slot = unplaced.next();
    }
    next
}

/// Follows a template's host name, spreading its addresses over the slots (HAProxy's
/// `server-template`): a new address fills a free slot, an address gone empties its slot,
/// and the others stay where they are, connections and all.
pub async fn watch_template(pool: String, slots: Vec<Arc<ServerState>>, host: String, resolvers: Resolvers) {
    watch(&pool, &host, resolvers, |answer| {
        let ips = match answer {
            Answer::Addresses(ips) => ips.as_slice(),
            Answer::NoSuchName | Answer::NoAddress => &[],
        };
        fill_slots(&pool, &slots, &host, ips)
    })
    .await
}

fn fill_slots(pool: &str, slots: &[Arc<ServerState>], host: &str, ips: &[IpAddr]) {
    let current: Vec<Option<IpAddr>> = slots.iter().map(|s| s.is_resolved().then(|| s.address().ip())).collect();
    for ((slot, was), now) in slots.iter().zip(&current).zip(assign(&current, ips)) {
        let name = &slot.config.name;
        match now {
            None if was.is_some()
                && slot.lose_address(format!("DNS: {host} no longer gives {}", slot.address().ip())) =>
            {
                tracing::warn!(pool, server = name, host, "server slot emptied: DNS no longer gives its address");
            }
            Some(ip) if *was != Some(ip) => {
                slot.follow_addresses(&[ip], slot.address().port());
                tracing::warn!(pool, server = name, host, address = %slot.address(), "server slot filled (DNS)");
            }
            _ => {}
        }
    }
}

/// What one answer does to a server; logs what changed.
fn follow(pool: &str, server: &ServerState, host: &str, answer: &Answer) {
    let name = &server.config.name;
    match answer {
        Answer::Addresses(ips) => {
            let port = server.address().port();
            let was_resolved = server.is_resolved();
            if let Some(old) = server.follow_addresses(ips, port) {
                tracing::warn!(pool, server = name, host, %old, new = %server.address(), "server address changed (DNS)");
            }
            if !was_resolved {
                tracing::warn!(pool, server = name, host, address = %server.address(), "server has an address again (DNS)");
            }
        }
        Answer::NoSuchName | Answer::NoAddress => {
            let why = if *answer == Answer::NoSuchName { "no such name" } else { "no address" };
            if server.lose_address(format!("DNS: {host}: {why}")) {
                tracing::warn!(pool, server = name, host, "server takes no requests: DNS says {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::Record;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn reply(id: u16, name: &str, qtype: RecordType, code: ResponseCode, answers: Vec<RData>) -> Vec<u8> {
        let name = fqdn(name).unwrap();
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.response_code = code;
        m.add_query(Query::query(name.clone(), qtype));
        m.add_answers(answers.into_iter().map(|d| Record::from_rdata(name.clone(), 30, d)));
        m.to_vec().unwrap()
    }

    #[test]
    fn takes_the_addresses_of_the_question_asked() {
        let name = fqdn("web-01.internal").unwrap();
        let a = |o: u8| RData::A(A(Ipv4Addr::new(198, 18, 0, o)));
        let bytes = reply(9, "web-01.internal", RecordType::A, ResponseCode::NoError, vec![a(2), a(1)]);
        assert_eq!(
            read_answer(&bytes, 9, &name, RecordType::A),
            Ok(Reply::Answer(Answer::Addresses(vec!["198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap()])))
        );
        let v6 = RData::AAAA(AAAA(Ipv6Addr::LOCALHOST));
        let bytes = reply(9, "WEB-01.internal", RecordType::AAAA, ResponseCode::NoError, vec![v6]);
        assert_eq!(
            read_answer(&bytes, 9, &name, RecordType::AAAA),
            Ok(Reply::Answer(Answer::Addresses(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]))),
            "names compare without case"
        );
    }

    #[test]
    fn nxdomain_nodata_and_failures_are_told_apart() {
        let name = fqdn("gone.internal").unwrap();
        let nx = reply(1, "gone.internal", RecordType::A, ResponseCode::NXDomain, vec![]);
        assert_eq!(read_answer(&nx, 1, &name, RecordType::A), Ok(Reply::Answer(Answer::NoSuchName)));
        let nodata = reply(1, "gone.internal", RecordType::A, ResponseCode::NoError, vec![]);
        assert_eq!(read_answer(&nodata, 1, &name, RecordType::A), Ok(Reply::Answer(Answer::NoAddress)));
        let servfail = reply(1, "gone.internal", RecordType::A, ResponseCode::ServFail, vec![]);
        assert_eq!(read_answer(&servfail, 1, &name, RecordType::A), Ok(Reply::Failed(ResponseCode::ServFail)));
    }

    #[test]
    fn replies_to_another_question_are_not_taken() {
        let name = fqdn("web-01.internal").unwrap();
        let a = vec![RData::A(A(Ipv4Addr::new(198, 18, 0, 1)))];
        let other_id = reply(2, "web-01.internal", RecordType::A, ResponseCode::NoError, a.clone());
        assert!(read_answer(&other_id, 1, &name, RecordType::A).is_err());
        let other_name = reply(1, "evil.internal", RecordType::A, ResponseCode::NoError, a.clone());
        assert!(read_answer(&other_name, 1, &name, RecordType::A).is_err());
        let other_type = reply(1, "web-01.internal", RecordType::MX, ResponseCode::NoError, a);
        assert!(read_answer(&other_type, 1, &name, RecordType::A).is_err());
        assert!(read_answer(&query_bytes(1, &name, RecordType::A), 1, &name, RecordType::A).is_err(), "a query");
        assert!(read_answer(b"\x00\x01garbage", 1, &name, RecordType::A).is_err());
        assert!(read_answer(&[], 1, &name, RecordType::A).is_err());
    }

    #[test]
    fn a_truncated_reply_asks_for_tcp() {
        let name = fqdn("big.internal").unwrap();
        let mut bytes = reply(4, "big.internal", RecordType::A, ResponseCode::NoError, vec![]);
        bytes[2] |= 0x02;
        assert_eq!(read_answer(&bytes, 4, &name, RecordType::A), Ok(Reply::Truncated));
        // The header alone, its counts still those of the whole answer.
        bytes.truncate(12);
        bytes[7] = 40;
        assert_eq!(read_answer(&bytes, 4, &name, RecordType::A), Ok(Reply::Truncated));
        assert!(read_answer(&bytes, 5, &name, RecordType::A).is_err(), "another query's");
    }

    #[test]
    fn template_slots_keep_their_addresses_and_free_ones_take_new_addresses() {
        let ip = |o: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 0, o));
        assert_eq!(assign(&[None, None, None], &[ip(1), ip(2)]), [Some(ip(1)), Some(ip(2)), None]);
        // A rotated answer moves nothing; a gone address frees its slot for a new one.
        assert_eq!(assign(&[Some(ip(1)), Some(ip(2)), None], &[ip(2), ip(1)]), [Some(ip(1)), Some(ip(2)), None]);
        assert_eq!(assign(&[Some(ip(1)), Some(ip(2)), None], &[ip(3), ip(2)]), [Some(ip(3)), Some(ip(2)), None]);
        assert_eq!(assign(&[Some(ip(1)), None], &[ip(2), ip(3), ip(4)]), [Some(ip(2)), Some(ip(3))], "more than fit");
        assert_eq!(assign(&[Some(ip(1)), Some(ip(1))], &[ip(1)]), [Some(ip(1)), None], "an address in one slot only");
        assert_eq!(assign(&[Some(ip(1))], &[]), [None]);
    }

    #[test]
    fn resolv_conf_gives_its_nameservers() {
        let conf = "# comment\nsearch example.org\nnameserver 198.18.0.53\nnameserver ::1\nnameserver fe80::1%eth0\noptions ndots:2\n";
        assert_eq!(system_nameservers(conf), vec!["198.18.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn names_that_dns_cannot_carry_are_refused() {
        assert!(fqdn("web-01.internal").is_ok());
        assert!(fqdn(&"a".repeat(64)).is_err(), "a label over 63 bytes");
    }
}
