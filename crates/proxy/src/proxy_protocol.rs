//! The PROXY protocol (HAProxy's `accept-proxy`): a listener behind a layer-4 load balancer
//! (another HAProxy, an AWS NLB, a TCP proxy) reads the header that balancer puts at the start
//! of each connection and takes the client's address from it, not from the socket, so that
//! X-Forwarded-For, `allow`/`deny`, rate limits, `balance = "source"` and the access log see
//! the real client. Versions 1 (text) and 2 (binary) are both read, as HAProxy does. A
//! connection that does not open with a valid header is closed: a listener that expects one
//! must never take a client's own bytes for it, nor let a client name its own address.
//!
//! [`parse`] is a pure function over the bytes received so far (the fuzz target
//! `proxy_header` drives it); [`read`] peeks at the socket so that nothing after the header
//! is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest version 1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Version 2's fixed part: the signature, version and command, family, length.
const V2_FIXED: usize = 16;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 2 header taken: addresses and a reasonable set of TLVs (an AWS NLB's
/// endpoint ID, a TLS summary). HAProxy's own limit is its buffer size.
pub const V2_MAX: usize = 1024;

/// A complete header: how many bytes it takes, and the client it names (`None`: a LOCAL
/// connection, a health check from the balancer itself, or an address family other than TCP
/// over IPv4 or IPv6: the socket's peer stands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub length: usize,
    pub source: Option<SocketAddr>,
}

/// Reads the header from the start of `received`: `Ok(None)` when more bytes are needed.
pub fn parse(received: &[u8]) -> Result<Option<ProxyHeader>, String> {
    if received.is_empty() {
        return Ok(None);
    }
    if received[0] == b'P' {
        return parse_v1(received);
    }
    if received[0] == b'\r' {
        return parse_v2(received);
    }
    Err("the connection did not open with a PROXY protocol header".into())
}

fn parse_v1(received: &[u8]) -> Result<Option<ProxyHeader>, String> {
    let prefix = b"PROXY ";
    let seen = received.len().min(prefix.len());
    if received[..seen] != prefix[..seen] {
        return Err("the connection did not open with a PROXY protocol header".into());
    }
    let Some(end) = received.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return match received.len() < V1_MAX {
            true => Ok(None),
            false => Err(format!("a PROXY v1 header longer than {V1_MAX} bytes")),
        };
    };
    let line = received[..end].strip_suffix(b"\r").ok_or("a PROXY v1 header must end with CRLF")?;
    let line = std::str::from_utf8(line).map_err(|_| "a PROXY v1 header that is not ASCII")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), source, _destination, source_port, destination_port] => {
            let ip: IpAddr = source.parse().map_err(|_| format!("`{source}` is not an IP address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(format!("`{source}` is not a {family} address"));
            }
            let port = v1_port(source_port)?;
            v1_port(destination_port)?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(format!("`{line}` is not a PROXY v1 header")),
    };
    Ok(Some(ProxyHeader { length: end + 1, source }))
}

/// A port as version 1 writes it: decimal, no sign, no leading zero.
fn v1_port(text: &str) -> Result<u16, String> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    match canonical {
        true => text.parse().map_err(|_| format!("`{text}` is not a port")),
        false => Err(format!("`{text}` is not a port")),
    }
}

fn parse_v2(received: &[u8]) -> Result<Option<ProxyHeader>, String> {
    let seen = received.len().min(V2_SIGNATURE.len());
    if received[..seen] != V2_SIGNATURE[..seen] {
        return Err("the connection did not open with a PROXY protocol header".into());
    }
    if received.len() < V2_FIXED {
        return Ok(None);
    }
    let (version, command) = (received[12] >> 4, received[12] & 0x0f);
    if version != 2 {
        return Err(format!("PROXY protocol version {version} is not known"));
    }
    let length = V2_FIXED + usize::from(u16::from_be_bytes([received[14], received[15]]));
    if length > V2_MAX {
        return Err(format!("a PROXY v2 header of {length} bytes (at most {V2_MAX} are taken)"));
    }
    if received.len() < length {
        return Ok(None);
    }
    let addresses = &received[V2_FIXED..length];
    let source = match command {
        // LOCAL: the balancer's own connection (its health check); the socket's peer stands.
        0 => None,
        1 => match received[13] {
            // TCP over IPv4: source and destination addresses, then their ports.
            0x11 => {
                let a = addresses.get(..12).ok_or("a PROXY v2 header too short for IPv4 addresses")?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
            }
            0x21 => {
                let a = addresses.get(..36).ok_or("a PROXY v2 header too short for IPv6 addresses")?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(Ipv6Addr::from(octets).into(), u16::from_be_bytes([a[32], a[33]])))
            }
            // UNSPEC, UDP, unix sockets: nothing this proxy can use as a client address.
            _ => None,
        },
        other => return Err(format!("PROXY v2 command {other} is not known")),
    };
    Ok(Some(ProxyHeader { length, source }))
}

/// Reads the header at the start of `stream` within `within`, leaving whatever follows it
/// (the client's TLS handshake or request) unread; the client it names, if any.
pub async fn read(stream: &mut TcpStream, within: Duration) -> Result<Option<SocketAddr>, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut peeked = [0u8; V2_MAX];
    let header = loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut peeked)).await {
            Ok(Ok(0)) => return Err("the connection closed before its PROXY protocol header".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no PROXY protocol header within {} ms", within.as_millis())),
        };
        match parse(&peeked[..n])? {
            Some(header) => break header,
            // The rest is on its way: peeking again at once would return the same bytes.
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    // The header was peeked whole, so it is all in the socket's buffer: this does not wait.
    stream.read_exact(&mut peeked[..header.length]).await.map_err(|e| e.to_string())?;
    Ok(header.source)
}

/// Which version a pool writes to its servers (HAProxy's `send-proxy`, `send-proxy-v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The header naming `source` (the client) and `destination` (where it connected) that opens
/// a connection to a server; `None` for both: the proxy's own connection, a health check
/// (v1 `UNKNOWN`, v2 `LOCAL`). Mixed families are written as IPv6, IPv4 mapped.
pub fn encode(version: Version, addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let addresses = addresses.map(|(s, d)| match (s, d) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (s, d),
        _ => (as_v6(s), as_v6(d)),
    });
    match version {
        Version::V1 => encode_v1(addresses),
        Version::V2 => encode_v2(addresses),
    }
}

fn as_v6(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

fn encode_v1(addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    match addresses {
        None => b"PROXY UNKNOWN\r\n".to_vec(),
        Some((s, d)) => {
            let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
        }
    }
}

fn encode_v2(addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED + 36);
    out.extend_from_slice(V2_SIGNATURE);
    let Some((s, d)) = addresses else {
        // LOCAL, family UNSPEC, no addresses.
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let (family, body): (u8, Vec<u8>) = match (s.ip(), d.ip()) {
        (IpAddr::V4(si), IpAddr::V4(di)) => (0x11, [si.octets().as_slice(), di.octets().as_slice()].concat()),
        (si, di) => (0x21, [v6(si).as_slice(), v6(di).as_slice()].concat()),
    };
    out.extend_from_slice(&[0x21, family]);
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | command, family]);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn what_a_pool_writes_reads_back_as_the_client_it_names() {
        let v4 = ("198.18.0.7:40000".parse().unwrap(), "198.18.0.1:8080".parse().unwrap());
        let v6 = ("[2001:db8::7]:40000".parse().unwrap(), "[2001:db8::1]:8080".parse().unwrap());
        let mixed: (SocketAddr, SocketAddr) =
            ("198.18.0.7:40000".parse().unwrap(), "[2001:db8::1]:8080".parse().unwrap());
        for version in [Version::V1, Version::V2] {
            for (source, destination) in [v4, v6, mixed] {
                let bytes = encode(version, Some((source, destination)));
                let header = parse(&bytes).unwrap().expect("whole");
                assert_eq!(header.length, bytes.len());
                let expected = if source.is_ipv4() && destination.is_ipv6() { as_v6(source) } else { source };
                assert_eq!(header.source, Some(expected), "{version:?} {source} → {destination}");
            }
            let local = encode(version, None);
            assert_eq!(parse(&local).unwrap(), Some(ProxyHeader { length: local.len(), source: None }));
        }
        assert_eq!(encode(Version::V1, Some(v4)), b"PROXY TCP4 198.18.0.7 198.18.0.1 40000 8080\r\n");
    }

    #[test]
    fn version_1_names_the_client_and_its_length() {
        let text = b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let header = parse(text).unwrap().unwrap();
        assert_eq!(header.length, 47);
        assert_eq!(header.source, Some("198.51.100.7:51234".parse().unwrap()));
        let six = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n").unwrap().unwrap();
        assert_eq!(six.source, Some("[2001:db8::7]:40000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some(ProxyHeader { length: 15, source: None }));
    }

    #[test]
    fn a_header_cut_short_asks_for_more_and_anything_else_is_refused() {
        let whole = b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        let binary = v2(1, 0x11, &[198, 51, 100, 7, 203, 0, 113, 1, 0xc8, 0x22, 1, 187]);
        for cut in 0..binary.len() {
            assert_eq!(parse(&binary[..cut]), Ok(None), "cut at {cut}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 198.51.100.7 203.0.113.1 51234\r\n",
            b"PROXY TCP4 2001:db8::7 203.0.113.1 51234 443\r\n",
            b"PROXY TCP4 198.51.100.7 203.0.113.1 051234 443\r\n",
            b"PROXY TCP4 198.51.100.7 203.0.113.1 70000 443\r\n",
            b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert!(parse(&endless).is_err(), "a v1 header has at most 107 bytes");
    }

    #[test]
    fn version_2_names_the_client_or_leaves_the_socket_peer_for_local_and_unspec() {
        let four = v2(1, 0x11, &[198, 51, 100, 7, 203, 0, 113, 1, 0xc8, 0x22, 1, 187]);
        let header = parse(&[four.as_slice(), b"GET /"].concat()).unwrap().unwrap();
        assert_eq!(header, ProxyHeader { length: 28, source: Some("198.51.100.7:51234".parse().unwrap()) });
        let mut six = vec![0x20, 0x01, 0x0d, 0xb8];
        six.extend_from_slice(&[0; 11]);
        six.push(7);
        six.extend_from_slice(&[0; 16]);
        six.extend_from_slice(&[0x9c, 0x40, 0, 80]);
        // TLVs after the addresses (an NLB's endpoint ID) are skipped with the length.
        six.extend_from_slice(&[0xEA, 0, 3, b'v', b'p', b'c']);
        let header = parse(&v2(1, 0x21, &six)).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:40000".parse().unwrap()));
        assert_eq!(header.length, 16 + six.len());
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap(), Some(ProxyHeader { length: 16, source: None }));
        assert_eq!(parse(&v2(1, 0x00, &[])).unwrap().unwrap().source, None);
        assert!(parse(&v2(1, 0x11, &[198, 51, 100, 7])).is_err(), "addresses cut short");
        assert!(parse(&v2(2, 0x11, &[0; 12])).is_err(), "an unknown command");
        let mut three = v2(1, 0x11, &[0; 12]);
        three[12] = 0x31;
        assert!(parse(&three).is_err(), "an unknown version");
        let mut huge = v2(1, 0x11, &[0; 12]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse(&huge).is_err(), "longer than taken");
    }
}
