//! The access log: one line per request, in the combined format (with the proxy's own fields
//! after it, as HAProxy's httplog adds them) or as JSON, to a file or to a syslog daemon
//! (HAProxy's `log 127.0.0.1:514 local0`, nginx's `access_log syslog:`). Lines go through a
//! buffer that a background task flushes, so the request path never waits on the disk; a
//! syslog daemon that is away or cannot keep up loses lines rather than stalling requests.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode, Uri, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
    /// The operator's own line, with nginx's variables (`log_format`, HAProxy's `log-format`).
    Custom(Arc<[Segment]>),
}

/// A piece of a custom line: text as written, or a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(Box<str>),
    Field(Field),
}

/// What a custom line can say, by nginx's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    RemoteAddr,
    RemotePort,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Status,
    BodyBytesSent,
    RequestTime,
    HttpReferer,
    HttpUserAgent,
    RequestId,
    Listener,
    Pool,
    Server,
    SslClientVerify,
    SslClientSDn,
}

const FIELDS: [(&str, Field); 22] = [
    ("remote_addr", Field::RemoteAddr),
    ("remote_port", Field::RemotePort),
    ("time_local", Field::TimeLocal),
    ("time_iso8601", Field::TimeIso8601),
    ("msec", Field::Msec),
    ("request", Field::Request),
    ("request_method", Field::RequestMethod),
    ("request_uri", Field::RequestUri),
    ("uri", Field::Uri),
    ("args", Field::Args),
    ("server_protocol", Field::ServerProtocol),
    ("status", Field::Status),
    ("body_bytes_sent", Field::BodyBytesSent),
    ("request_time", Field::RequestTime),
    ("http_referer", Field::HttpReferer),
    ("http_user_agent", Field::HttpUserAgent),
    ("request_id", Field::RequestId),
    ("listener", Field::Listener),
    ("pool", Field::Pool),
    ("server", Field::Server),
    ("ssl_client_verify", Field::SslClientVerify),
    ("ssl_client_s_dn", Field::SslClientSDn),
];

impl Format {
    /// `combined`, `json`, or `custom` with its `line`.
    pub fn from_config(format: &str, line: Option<&str>) -> Result<Format, (&'static str, String)> {
        match (format, line) {
            ("combined", None) => Ok(Format::Combined),
            ("json", None) => Ok(Format::Json),
            ("custom", Some(line)) => {
                parse_line(line).map(|segments| Format::Custom(segments.into())).map_err(|e| ("line", e))
            }
            ("custom", None) => Err(("line", "a custom format needs its `line`".into())),
            ("combined" | "json", Some(_)) => Err(("line", "only a custom format has a `line`".into())),
            (other, _) => Err(("format", format!("`{other}`: expected combined, json or custom"))),
        }
    }
}

/// Splits a custom line into text and `$variable`s (also `${variable}`, to put text right
/// after one); an unknown variable is an error naming the known ones.
pub fn parse_line(line: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut rest = line;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => return Err(format!("`${{` without its `}}` in `{line}`")),
            },
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.is_empty() {
            // A `$` that starts no variable is text.
            text.push('$');
            rest = after;
            continue;
        }
        let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
            return Err(format!("unknown variable `${name}`; known: {}", known.join(", ")));
        };
        if !text.is_empty() {
            segments.push(Segment::Text(std::mem::take(&mut text).into()));
        }
        segments.push(Segment::Field(*field));
        rest = next;
    }
    text.push_str(rest);
    if !text.is_empty() {
        segments.push(Segment::Text(text.into()));
    }
    Ok(segments)
}

/// Where lines go; shared by every connection of the process.
#[derive(Clone)]
pub struct AccessLog {
    format: Format,
    out: Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>,
}

/// What one line says about one request.
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub status: StatusCode,
    /// Content-Length of the response when it is known up front.
    pub bytes: Option<u64>,
    /// From the request's arrival to the response's headers.
    pub duration: Duration,
    pub pool: Option<&'a str>,
    pub server: Option<&'a str>,
    pub request_id: &'a str,
    /// On a listener that verifies clients: what the client's certificate said.
    pub client_certificate: Option<&'a crate::client_cert::ClientIdentity>,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A file appended to; stderr for `-`.
    File(PathBuf),
    /// A syslog daemon, one datagram per line (RFC 3164, as HAProxy sends by default).
    Syslog(Syslog),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslog {
    pub to: SyslogTarget,
    /// 0 (kern) to 23 (local7).
    pub facility: u8,
    /// The program name each line is sent as.
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(SocketAddr),
    /// A Unix datagram socket, as `/dev/log`.
    Unix(PathBuf),
}

impl Syslog {
    /// From the config's words: `host:port` (`ip` alone: port 514) or a socket path, and a
    /// facility name (`local0` …).
    pub fn from_config(to: &str, facility: &str, tag: &str) -> Result<Syslog, (&'static str, String)> {
        let to = if to.starts_with('/') {
            SyslogTarget::Unix(PathBuf::from(to))
        } else if let Ok(address) = to.parse::<SocketAddr>() {
            SyslogTarget::Udp(address)
        } else if let Ok(ip) = to.parse::<std::net::IpAddr>() {
            SyslogTarget::Udp(SocketAddr::new(ip, 514))
        } else {
            return Err(("syslog", format!("`{to}` is neither ip:port nor a socket path (/dev/log)")));
        };
        const FACILITIES: [&str; 24] = [
            "kern",
            "user",
            "mail",
            "daemon",
            "auth",
            "syslog",
            "lpr",
            "news",
            "uucp",
            "cron",
            "authpriv",
            "ftp",
            "ntp",
            "security",
            "console",
            "solaris-cron",
            "local0",
            "local1",
            "local2",
            "local3",
            "local4",
            "local5",
            "local6",
            "local7",
        ];
        let Some(facility) = FACILITIES.iter().position(|f| *f == facility) else {
            return Err(("facility", format!("`{facility}` is not a syslog facility (local0 … local7, daemon, …)")));
        };
        let tag_ok =
            !tag.is_empty() && tag.len() <= 32 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !tag_ok {
            return Err(("tag", format!("`{tag}` is not a program name (1 to 32 letters, digits, - _ .)")));
        }
        Ok(Syslog { to, facility: facility as u8, tag: tag.to_string() })
    }
}

impl AccessLog {
    /// Appends to the file (stderr for `-`), or sends to the syslog daemon.
    pub fn open(destination: &Destination, format: Format) -> io::Result<AccessLog> {
        let out = match destination {
            Destination::File(path) => {
                let sink: Box<dyn Write + Send> =
                    if path == Path::new("-") { Box::new(io::stderr()) } else { Box::new(open_append(path)?) };
                BufWriter::with_capacity(64 * 1024, sink)
            }
            // A smaller buffer: its lines go out as datagrams a few dozen at a time, not in
            // bursts the daemon's socket buffer would drop.
            Destination::Syslog(syslog) => {
                let sink: Box<dyn Write + Send> = Box::new(SyslogWriter::connect(syslog)?);
                BufWriter::with_capacity(8 * 1024, sink)
            }
        };
        Ok(AccessLog { format, out: Arc::new(Mutex::new(out)) })
    }

    /// Flushes the buffer every `every` until the task is dropped.
    pub async fn flush_every(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.flush();
        }
    }

    /// Both write to the same buffer (one is a clone of the other).
    pub fn same_sink(&self, other: &AccessLog) -> bool {
        Arc::ptr_eq(&self.out, &other.out)
    }

    pub fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let mut line = String::with_capacity(256);
        match &self.format {
            Format::Combined => combined(&mut line, entry),
            Format::Json => json(&mut line, entry),
            Format::Custom(segments) => custom(&mut line, segments, entry, SystemTime::now()),
        }
        line.push('\n');
        let _ = self.out.lock().unwrap_or_else(|p| p.into_inner()).write_all(line.as_bytes());
    }
}

/// Sends each line it is given as one syslog datagram, never waiting: a daemon whose socket
/// is full or gone loses the line (HAProxy does the same).
struct SyslogWriter {
    socket: SyslogSocket,
    target: SyslogTarget,
    /// `<PRI>` for info messages of the facility.
    priority: String,
    /// `tag[pid]: `
    program: String,
    datagram: Vec<u8>,
}

enum SyslogSocket {
    Udp(std::net::UdpSocket),
    Unix(std::os::unix::net::UnixDatagram),
}

impl SyslogWriter {
    fn connect(syslog: &Syslog) -> io::Result<SyslogWriter> {
        let socket = open_syslog_socket(&syslog.to)?;
        const INFO: u8 = 6;
        Ok(SyslogWriter {
            socket,
            target: syslog.to.clone(),
            priority: format!("<{}>", u16::from(syslog.facility) * 8 + u16::from(INFO)),
            program: format!("{}[{}]: ", syslog.tag, std::process::id()),
            datagram: Vec::with_capacity(512),
        })
    }

    fn send(&mut self) -> io::Result<usize> {
        match &self.socket {
            SyslogSocket::Udp(socket) => socket.send(&self.datagram),
            SyslogSocket::Unix(socket) => socket.send(&self.datagram),
        }
    }
}

fn open_syslog_socket(to: &SyslogTarget) -> io::Result<SyslogSocket> {
    let named =
        |e: io::Error, what: &dyn std::fmt::Display| io::Error::new(e.kind(), format!("access log syslog {what}: {e}"));
    match to {
        SyslogTarget::Udp(address) => {
            let any: SocketAddr = if address.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let socket = std::net::UdpSocket::bind(any).map_err(|e| named(e, address))?;
            socket.connect(address).map_err(|e| named(e, address))?;
            socket.set_nonblocking(true).map_err(|e| named(e, address))?;
            Ok(SyslogSocket::Udp(socket))
        }
        SyslogTarget::Unix(path) => {
            let socket = std::os::unix::net::UnixDatagram::unbound().map_err(|e| named(e, &path.display()))?;
            socket.connect(path).map_err(|e| named(e, &path.display()))?;
            socket.set_nonblocking(true).map_err(|e| named(e, &path.display()))?;
            Ok(SyslogSocket::Unix(socket))
        }
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut stamp = String::with_capacity(16);
        rfc3164_time(&mut stamp, SystemTime::now());
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.datagram.clear();
            self.datagram.extend_from_slice(self.priority.as_bytes());
            self.datagram.extend_from_slice(stamp.as_bytes());
            self.datagram.extend_from_slice(self.program.as_bytes());
            self.datagram.extend_from_slice(line);
            // A restarted daemon has a new Unix socket: connect to it again, once. (Over UDP
            // an error only reports an earlier datagram nobody took; the socket is fine.)
            let failed = self.send().is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock);
            if failed && matches!(self.target, SyslogTarget::Unix(_)) {
                if let Ok(socket) = open_syslog_socket(&self.target) {
                    self.socket = socket;
                    let _ = self.send();
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Nov 26 13:52:35 ` (RFC 3164's timestamp, the day padded with a space), in UTC.
fn rfc3164_time(out: &mut String, now: SystemTime) {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (_, m, d) = civil_from_days(days as i64);
    let _ =
        write!(out, "{} {d:>2} {:02}:{:02}:{:02} ", MONTHS[(m - 1) as usize], rem / 3600, rem % 3600 / 60, rem % 60);
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `25/Nov/2026:19:26:34 +0000`, in UTC.
fn clf_time(out: &mut String, now: SystemTime) {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Howard Hinnant's days-to-civil-date algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

fn combined(out: &mut String, e: &Entry<'_>) {
    let _ = write!(out, "{} - - [", e.client.ip());
    clf_time(out, SystemTime::now());
    out.push(']');
    let bytes = e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
    let _ = write!(
        out,
        " \"{} {} {}\" {} {} \"{}\" \"{}\" rid={} listener={} pool={} server={} ms={}",
        e.method,
        e.uri,
        version(e.version),
        e.status.as_u16(),
        bytes,
        escape_quotes(e.referer.unwrap_or("-")),
        escape_quotes(e.user_agent.unwrap_or("-")),
        e.request_id,
        e.listener,
        e.pool.unwrap_or("-"),
        e.server.unwrap_or("-"),
        e.duration.as_millis()
    );
}

/// `2026-11-25T19:26:34+00:00`.
fn iso8601_time(out: &mut String, now: SystemTime) {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(out, "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", rem / 3600, rem % 3600 / 60, rem % 60);
}

fn custom(out: &mut String, segments: &[Segment], e: &Entry<'_>, now: SystemTime) {
    for segment in segments {
        let field = match segment {
            Segment::Text(text) => {
                out.push_str(text);
                continue;
            }
            Segment::Field(field) => field,
        };
        let _ = match field {
            Field::RemoteAddr => write!(out, "{}", e.client.ip()),
            Field::RemotePort => write!(out, "{}", e.client.port()),
            Field::TimeLocal => {
                clf_time(out, now);
                Ok(())
            }
            Field::TimeIso8601 => {
                iso8601_time(out, now);
                Ok(())
            }
            Field::Msec => {
                let t = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                write!(out, "{}.{:03}", t.as_secs(), t.subsec_millis())
            }
            Field::Request => {
                write!(out, "{} {} {}", e.method, escape_quotes(&e.uri.to_string()), version(e.version))
            }
            Field::RequestMethod => write!(out, "{}", e.method),
            Field::RequestUri => write!(out, "{}", escape_quotes(&e.uri.to_string())),
            Field::Uri => write!(out, "{}", escape_quotes(e.uri.path())),
            Field::Args => write!(out, "{}", escape_quotes(e.uri.query().unwrap_or(""))),
            Field::ServerProtocol => write!(out, "{}", version(e.version)),
            Field::Status => write!(out, "{}", e.status.as_u16()),
            Field::BodyBytesSent => match e.bytes {
                Some(b) => write!(out, "{b}"),
                None => write!(out, "-"),
            },
            Field::RequestTime => {
                write!(out, "{}.{:03}", e.duration.as_secs(), e.duration.subsec_millis())
            }
            Field::HttpReferer => write!(out, "{}", escape_quotes(e.referer.unwrap_or("-"))),
            Field::HttpUserAgent => write!(out, "{}", escape_quotes(e.user_agent.unwrap_or("-"))),
            Field::RequestId => write!(out, "{}", e.request_id),
            Field::Listener => write!(out, "{}", e.listener),
            Field::Pool => write!(out, "{}", e.pool.unwrap_or("-")),
            Field::Server => write!(out, "{}", e.server.unwrap_or("-")),
            Field::SslClientVerify => write!(out, "{}", e.client_certificate.map_or("NONE", |c| c.verify())),
            Field::SslClientSDn => {
                let subject = e.client_certificate.and_then(|c| c.certificate()).map(|c| c.subject.as_str());
                write!(out, "{}", escape_quotes(subject.unwrap_or("-")))
            }
        };
    }
}

fn escape_quotes(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('"') || s.contains('\\') {
        s.replace('\\', "\\\\").replace('"', "\\\"").into()
    } else {
        s.into()
    }
}

fn json(out: &mut String, e: &Entry<'_>) {
    let time = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let string = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let _ = write!(
        out,
        "{{\"time\":{time:.3},\"client\":\"{}\",\"method\":{},\"uri\":{},\"version\":\"{}\",\"status\":{},\"bytes\":{},\
         \"duration_ms\":{:.3},\"listener\":{},\"pool\":{},\"server\":{},\"request_id\":{},\"referer\":{},\"user_agent\":{}}}",
        e.client.ip(),
        string(e.method.as_str()),
        string(&e.uri.to_string()),
        version(e.version),
        e.status.as_u16(),
        e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "null".into()),
        e.duration.as_secs_f64() * 1000.0,
        string(e.listener),
        e.pool.map(string).unwrap_or_else(|| "null".into()),
        e.server.map(string).unwrap_or_else(|| "null".into()),
        string(e.request_id),
        e.referer.map(string).unwrap_or_else(|| "null".into()),
        e.user_agent.map(string).unwrap_or_else(|| "null".into()),
    );
}

/// A request id the client sent, if it is one we may keep: 1 to 128 visible characters of
/// a safe set (so it can go into logs and upstream headers as is).
pub fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn syslog_targets_facilities_and_tags_are_read_as_haproxy_writes_them() {
        let syslog = Syslog::from_config("127.0.0.1", "local0", "webstack").unwrap();
        assert_eq!((syslog.to, syslog.facility), (SyslogTarget::Udp("127.0.0.1:514".parse().unwrap()), 16));
        let syslog = Syslog::from_config("[::1]:1514", "daemon", "lb-01").unwrap();
        assert_eq!((syslog.to, syslog.facility), (SyslogTarget::Udp("[::1]:1514".parse().unwrap()), 3));
        assert_eq!(Syslog::from_config("/dev/log", "local7", "x").unwrap().to, SyslogTarget::Unix("/dev/log".into()));
        assert_eq!(Syslog::from_config("logs.internal:514", "local0", "x").unwrap_err().0, "syslog");
        assert_eq!(Syslog::from_config("127.0.0.1", "local8", "x").unwrap_err().0, "facility");
        assert_eq!(Syslog::from_config("127.0.0.1", "local0", "has space").unwrap_err().0, "tag");
        let mut stamp = String::new();
        rfc3164_time(&mut stamp, SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_165_155));
        assert_eq!(stamp, "Nov 26 13:52:35 ");
        stamp.clear();
        rfc3164_time(&mut stamp, SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 5));
        assert_eq!(stamp, "Jan  6 00:00:00 ", "the day padded with a space");
    }

    #[test]
    fn a_custom_line_says_what_its_variables_name() {
        let segments =
            parse_line("$remote_addr:$remote_port \"$request\" $status ${request_time}s $$ $upstream_x").unwrap_err();
        assert!(segments.contains("unknown variable `$upstream_x`") && segments.contains("remote_addr"), "{segments}");
        assert!(parse_line("${status").is_err());
        let segments = parse_line(
            "$remote_addr:$remote_port \"$request\" $status ${request_time}s $ $pool/$server $args $time_iso8601",
        )
        .unwrap();
        let uri: Uri = "/search?q=%22x%22".parse().unwrap();
        let entry = Entry {
            client: "198.18.0.7:40000".parse().unwrap(),
            listener: "www",
            method: &Method::GET,
            uri: &uri,
            version: Version::HTTP_11,
            referer: None,
            user_agent: Some("curl \"8\""),
            status: StatusCode::OK,
            bytes: Some(12),
            duration: Duration::from_micros(12_345),
            pool: Some("web"),
            server: None,
            request_id: "r-1",
            client_certificate: None,
        };
        let mut line = String::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(20_417 * 86_400 + 3_600);
        custom(&mut line, &segments, &entry, now);
        assert_eq!(
            line,
            "198.18.0.7:40000 \"GET /search?q=%22x%22 HTTP/1.1\" 200 0.012s $ web/- q=%22x%22 2025-11-25T01:00:00+00:00"
        );
        assert_eq!(Format::from_config("custom", None).unwrap_err().0, "line");
        assert_eq!(Format::from_config("apache", None).unwrap_err().0, "format");
        assert_eq!(Format::from_config("json", Some("$status")).unwrap_err().0, "line");
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
