//! HTTP/1.1 to upstream servers, made for the proxy's request path. The request's own future
//! writes the head to the socket and reads the answer: no connection task, no channel and no
//! new timer per request (hyper's client spends all three on every request, about a fifth of
//! the proxy's user time). Between requests a connection waits in its server's idle pool.
//!
//! The parsers here read what upstream servers send ([`parse_response_head`], [`Chunked`]);
//! they are pure functions over a buffer, so the fuzz target `upstream_response` drives them.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A response head larger than this is refused (HAProxy's default buffer is 16 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields in one response head, as hyper's and the listeners' default.
pub const MAX_HEADERS: usize = 100;
/// Trailer fields of a chunked body are read and dropped, up to this much.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// The read buffer a new connection starts with, and what a read asks the kernel for at least.
const READ_BUFFER: usize = 8 * 1024;
/// Body reads ask for more, so a large download takes fewer system calls.
const BODY_READ: usize = 64 * 1024;

/// Why an exchange with an upstream server failed.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The server closed the connection before its answer was complete.
    Closed,
    /// What the server sent is not HTTP/1.x the proxy can pass on.
    Invalid(&'static str),
    /// No response head within the first-byte timeout.
    TimedOut,
    /// Nothing arrived for the idle timeout in the middle of a body.
    Stalled(Duration),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Closed => f.write_str("connection closed before the response was complete"),
            Error::Invalid(what) => write!(f, "invalid response: {what}"),
            Error::TimedOut => f.write_str("no response in time"),
            Error::Stalled(idle) => write!(f, "upstream sent nothing for {} ms mid-response", idle.as_millis()),
        }
    }
}

impl std::error::Error for Error {}

/// How a request's body is delimited on the way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    None,
    /// No body, but the method expects one: `Content-Length: 0` tells the server so.
    EmptyLength,
    /// The client's Content-Length goes on; the body follows as it is.
    Length,
    /// No length known in advance (a chunked or HTTP/2 upload): chunked upstream.
    Chunked,
}

impl RequestFraming {
    pub fn of<B: http_body::Body>(req: &Request<B>) -> RequestFraming {
        if req.headers().contains_key(header::CONTENT_LENGTH) {
            return RequestFraming::Length;
        }
        if !req.body().is_end_stream() {
            return RequestFraming::Chunked;
        }
        match *req.method() {
            Method::POST | Method::PUT | Method::PATCH => RequestFraming::EmptyLength,
            _ => RequestFraming::None,
        }
    }

    pub fn has_body(self) -> bool {
        matches!(self, RequestFraming::Length | RequestFraming::Chunked)
    }
}

/// How a response's body is delimited (RFC 9112 §6.3), and how much of it is left.
#[derive(Debug)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes the connection.
    UntilClose,
}

impl Framing {
    /// True once the whole body has been read.
    pub fn is_done(&self) -> bool {
        match self {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(chunked) => chunked.is_done(),
            _ => false,
        }
    }
}

/// A parsed response head, with what the proxy needs to carry its body.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// End-to-end fields only: Connection, Keep-Alive, Transfer-Encoding and the fields that
    /// Connection names are left out.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another request after this body.
    pub keep_alive: bool,
    /// The protocol of a 101 answer, for the client's side of the tunnel.
    pub upgrade: Option<HeaderValue>,
}

/// Parses a response head at the start of `buf`. On success the head's bytes are taken off
/// `buf` (header values share them, no copy); `Ok(None)` means more bytes are needed.
/// `head_request`: the request was HEAD, so no body follows whatever the head says.
pub fn parse_response_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<ResponseHead>, Error> {
    // Where each field's name and value lie in the head: the fields are copied into the map
    // after the head is split off the buffer, when they can share its bytes.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let (length, code, minor, count) = {
        let mut response = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut fields);
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(Error::Invalid("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many header fields")),
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let base = buf.as_ptr() as usize;
        for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            *span = (name as u32, field.name.len() as u32, value as u32, field.value.len() as u32);
        }
        (length, response.code.unwrap_or(0), response.version.unwrap_or(1), response.headers.len())
    };
    let head = buf.split_to(length).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;

    let mut headers = HeaderMap::with_capacity(count);
    let (mut close_token, mut keep_alive_token) = (false, false);
    // Fields that Connection names are for this hop only; rare, so no allocation otherwise.
    let mut connection_names: Vec<Bytes> = Vec::new();
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut upgrade = None;
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let name = &head[name_at as usize..(name_at + name_len) as usize];
        let value = head.slice(value_at as usize..(value_at + value_len) as usize);
        let name = HeaderName::from_bytes(name).map_err(|_| Error::Invalid("header name"))?;
        if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                if token.eq_ignore_ascii_case(b"close") {
                    close_token = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                    connection_names.push(value.slice_ref(token));
                }
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            chunked =
                value.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if name == header::UPGRADE {
            upgrade = Some(HeaderValue::from_maybe_shared(value).map_err(|_| Error::Invalid("header value"))?);
            continue;
        }
        if name == KEEP_ALIVE || name == header::TE || name == header::TRAILER || name == PROXY_CONNECTION {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let length = parse_content_length(&value).ok_or(Error::Invalid("content-length"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(Error::Invalid("conflicting content-length"));
            }
            content_length = Some(length);
        }
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| Error::Invalid("header value"))?;
        headers.append(name, value);
    }
    for name in connection_names {
        if let Ok(name) = HeaderName::from_bytes(&name) {
            headers.remove(name);
        }
    }
    let mut close = close_token || (minor == 0 && !keep_alive_token);

    let framing = if status.is_informational()
        || head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if transfer_encoding {
        // Transfer-Encoding overrides Content-Length, and a message carrying both is a
        // smuggling attempt or a broken server: its connection is not reused (RFC 9112 §6.3).
        if content_length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            close = true;
        }
        if chunked {
            Framing::Chunked(Chunked::new())
        } else {
            close = true;
            Framing::UntilClose
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(Some(ResponseHead { status, headers, framing, keep_alive: !close, upgrade }))
}

// `http` has no constants for these two hop-by-hop names.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn parse_content_length(value: &[u8]) -> Option<u64> {
    // A list of equal values ("5, 5") is allowed by RFC 9110 §8.6; anything else is not.
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|seen| seen != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The state of a chunked body's decoder (RFC 9112 §7.1). Trailer fields are read and
/// dropped.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    /// The size being read, then what is left of the chunk's data.
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    /// Blanks after the size, before an extension or the line's end.
    SizeBlank,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a line after the last chunk: a trailer field or the end.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Chunked { state: ChunkState::Size, size: 0, digits: 0, trailer_bytes: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes what it can from `buf`: `Ok(Some(data))` for the next piece of the body,
    /// `Ok(None)` when `buf` holds no more of it (the end, if [`Chunked::is_done`]).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        while !buf.is_empty() {
            if self.state == ChunkState::Data {
                let n = buf.len().min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                return Ok(Some(buf.split_to(n).freeze()));
            }
            if self.state == ChunkState::Done {
                return Ok(None);
            }
            let byte = buf[0];
            buf.advance(1);
            self.step(byte)?;
        }
        Ok(None)
    }

    fn step(&mut self, byte: u8) -> Result<(), Error> {
        const BAD: Error = Error::Invalid("chunked encoding");
        self.state = match (self.state, byte) {
            (ChunkState::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                if self.digits == 15 {
                    return Err(Error::Invalid("chunk size too large"));
                }
                self.digits += 1;
                self.size = self.size * 16 + digit;
                ChunkState::Size
            }
            (ChunkState::Size | ChunkState::SizeBlank, b' ' | b'\t') if self.digits > 0 => ChunkState::SizeBlank,
            (ChunkState::Size | ChunkState::SizeBlank, b';') if self.digits > 0 => ChunkState::Extension,
            (ChunkState::Size | ChunkState::SizeBlank | ChunkState::Extension, b'\r') if self.digits > 0 => {
                ChunkState::SizeLf
            }
            (ChunkState::Extension, b'\n') => return Err(BAD),
            (ChunkState::Extension, _) => ChunkState::Extension,
            (ChunkState::SizeLf, b'\n') if self.size == 0 => ChunkState::TrailerStart,
            (ChunkState::SizeLf, b'\n') => ChunkState::Data,
            (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
            (ChunkState::DataLf, b'\n') => {
                self.digits = 0;
                ChunkState::Size
            }
            (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
            (ChunkState::TrailerStart | ChunkState::Trailer, b'\n') => return Err(BAD),
            (ChunkState::Trailer, b'\r') => ChunkState::TrailerLf,
            (ChunkState::TrailerStart | ChunkState::Trailer, _) => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(Error::Invalid("trailer fields too large"));
                }
                ChunkState::Trailer
            }
            (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
            (ChunkState::EndLf, b'\n') => ChunkState::Done,
            _ => return Err(BAD),
        };
        Ok(())
    }
}

/// A connection to a server: plain TCP, or TLS over it for a pool with `tls`.
pub enum UpstreamStream {
    Plain(TcpStream),
    /// Boxed: rustls's state is kilobytes, which plain connections need not carry.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A server on this host's Unix socket (nginx's `unix:/run/app.sock`).
    Unix(tokio::net::UnixStream),
}

/// Where a server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Tcp(SocketAddr),
    Unix(&'a std::path::Path),
}

impl std::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(address) => write!(f, "{address}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl UpstreamStream {
    fn peer(&self) -> String {
        match self {
            UpstreamStream::Plain(tcp) => tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            UpstreamStream::Tls(tls) => tls.get_ref().0.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            UpstreamStream::Unix(unix) => unix
                .peer_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_default(),
        }
    }

    /// True when the server closed this idle connection or sent something nobody asked for.
    /// Costs no system call unless the socket became readable. Over TLS, what arrived may be
    /// the server's session tickets (TLS 1.3 sends them after the handshake): rustls takes
    /// those in, and only a close or application data make the connection stale.
    fn is_stale(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            UpstreamStream::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            UpstreamStream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                !Pin::new(&mut **tls).poll_read(&mut cx, &mut probe).is_pending()
            }
            UpstreamStream::Unix(unix) => match unix.poll_read_ready(&mut cx) {
                Poll::Pending => false,
                Poll::Ready(Err(_)) => true,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    !matches!(unix.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            UpstreamStream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
            UpstreamStream::Unix(unix) => Pin::new(unix).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            UpstreamStream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, data),
            UpstreamStream::Unix(unix) => Pin::new(unix).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            UpstreamStream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
            UpstreamStream::Unix(unix) => Pin::new(unix).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            UpstreamStream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
            UpstreamStream::Unix(unix) => Pin::new(unix).poll_shutdown(cx),
        }
    }
}

/// A connection to `address` within `timeout`, TLS handshake included when `tls` is given.
impl UpstreamStream {
    /// Whether TLS agreed on HTTP/2 (ALPN h2); false on a plain connection.
    pub fn negotiated_h2(&self) -> bool {
        match self {
            UpstreamStream::Plain(_) | UpstreamStream::Unix(_) => false,
            UpstreamStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// `host` is the name the server's address was written with, if any (TLS's default name);
/// `preface`, a PROXY protocol header written first, under TLS.
pub async fn connect(
    endpoint: Endpoint<'_>,
    host: Option<&str>,
    timeout: Duration,
    tls: Option<&crate::tls::UpstreamTls>,
    preface: Option<&[u8]>,
) -> io::Result<UpstreamStream> {
    let deadline = Instant::now() + timeout;
    let address = match endpoint {
        Endpoint::Tcp(address) => address,
        // The config refuses TLS to a Unix socket.
        Endpoint::Unix(path) => return connect_unix(path, deadline, preface).await.map(UpstreamStream::Unix),
    };
    let mut tcp = connect_tcp(address, timeout).await?;
    if let Some(header) = preface {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout_at(deadline, tcp.write_all(header)).await {
            Ok(written) => written?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "PROXY header: no room to write it in time")),
        }
    }
    let Some(tls) = tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    match tokio::time::timeout_at(deadline, tls.connect(tcp, address, host)).await {
        Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("TLS: {e}"))),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// One keep-alive connection to an upstream server.
pub struct Connection {
    stream: UpstreamStream,
    /// Bytes read and not handed on yet.
    buf: BytesMut,
    /// The request head being written; kept to reuse its allocation.
    out: Vec<u8>,
    /// One timer for the connection's life, moved on for each wait: pushing a registered
    /// tokio timer later is an atomic store, where a new timer is a wheel insertion.
    timer: Pin<Box<Sleep>>,
    /// The server's address generation it was opened under (see `ServerState`).
    pub(crate) generation: u32,
    /// The client and listener address its PROXY header named: it serves that client only.
    pub(crate) owner: Option<(SocketAddr, SocketAddr)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.stream.peer()).finish()
    }
}

impl Connection {
    /// Opens a connection within `timeout` (TLS to the server when `tls` is given).
    pub async fn open(
        endpoint: Endpoint<'_>,
        host: Option<&str>,
        timeout: Duration,
        tls: Option<&crate::tls::UpstreamTls>,
        preface: Option<&[u8]>,
    ) -> io::Result<Connection> {
        let stream = connect(endpoint, host, timeout, tls, preface).await?;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            out: Vec::with_capacity(1024),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            generation: 0,
            owner: None,
        })
    }

    /// True when the server closed this idle connection (or sent something nobody asked
    /// for). Costs no system call unless the socket became readable.
    pub fn is_stale(&mut self) -> bool {
        !self.buf.is_empty() || self.stream.is_stale()
    }

    /// Writes the request's head. Nothing of the request is consumed: on failure it can go
    /// to another connection.
    pub async fn write_head<B>(&mut self, req: &Request<B>, framing: RequestFraming) -> io::Result<()> {
        encode_head(&mut self.out, req, framing);
        let out = std::mem::take(&mut self.out);
        let written = write_all_within(&mut self.stream, &mut self.timer, &out, HEAD_WRITE_TIMEOUT).await;
        self.out = out;
        written
    }

    /// Streams the request body upstream, chunked or as it is.
    pub async fn write_body(
        &mut self,
        mut body: crate::body::RequestBody,
        framing: RequestFraming,
        idle: Duration,
    ) -> Result<(), BodyWriteError> {
        use http_body_util::BodyExt;
        let chunked = framing == RequestFraming::Chunked;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(BodyWriteError::from_client)?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let size = format!("{:x}\r\n", data.len());
                write_all_within(&mut self.stream, &mut self.timer, size.as_bytes(), idle).await?;
            }
            write_all_within(&mut self.stream, &mut self.timer, &data, idle).await?;
            if chunked {
                write_all_within(&mut self.stream, &mut self.timer, b"\r\n", idle).await?;
            }
        }
        if chunked {
            write_all_within(&mut self.stream, &mut self.timer, b"0\r\n\r\n", idle).await?;
        }
        Ok(())
    }

    /// Reads the response head within `timeout`, passing over 1xx answers other than 101.
    pub async fn read_head(&mut self, head_request: bool, timeout: Duration) -> Result<ResponseHead, Error> {
        self.timer.as_mut().reset(Instant::now() + timeout);
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_response_head(&mut self.buf, head_request)? {
                    if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    return Ok(head);
                }
            }
            let read = poll_fn(|cx| match self.poll_fill(cx, READ_BUFFER) {
                Poll::Pending => match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Error::TimedOut)),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(result) => Poll::Ready(result.map_err(Error::Io)),
            })
            .await?;
            if read == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// The next piece of a response body, within `idle` of the last one.
    pub fn poll_body(
        &mut self,
        framing: &mut Framing,
        idle: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            match framing {
                Framing::Empty | Framing::Length(0) => return Poll::Ready(Ok(None)),
                Framing::Length(left) if !self.buf.is_empty() => {
                    let n = self.buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    return Poll::Ready(Ok(Some(self.buf.split_to(n).freeze())));
                }
                Framing::Chunked(chunked) => match chunked.decode(&mut self.buf)? {
                    Some(data) => return Poll::Ready(Ok(Some(data))),
                    None if chunked.is_done() => return Poll::Ready(Ok(None)),
                    None => {}
                },
                Framing::UntilClose if !self.buf.is_empty() => return Poll::Ready(Ok(Some(self.buf.split().freeze()))),
                _ => {}
            }
            match self.poll_fill(cx, BODY_READ) {
                Poll::Ready(Ok(0)) => {
                    if let Framing::UntilClose = framing {
                        *framing = Framing::Empty;
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Err(Error::Closed));
                }
                Poll::Ready(Ok(_)) => self.timer.as_mut().reset(Instant::now() + idle),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {
                    return match self.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(Error::Stalled(idle))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }

    /// Starts the idle clock of a body.
    pub fn arm_idle_timer(&mut self, idle: Duration) {
        self.timer.as_mut().reset(Instant::now() + idle);
    }

    /// Takes `n` body bytes that are already buffered, if they all are.
    pub fn take_buffered(&mut self, n: u64) -> Option<Bytes> {
        let n = usize::try_from(n).ok()?;
        (self.buf.len() >= n).then(|| self.buf.split_to(n).freeze())
    }

    /// True when nothing beyond the last response was received: safe to pool.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }

    /// The socket and the bytes already read past the 101 head, for a tunnel.
    pub fn into_tunnel(self) -> (UpstreamStream, Bytes) {
        (self.stream, self.buf.freeze())
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, at_least: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < at_least / 2 {
            self.buf.reserve(at_least);
        }
        // `read_buf` keeps no state between polls, so a fresh one per poll is sound; it fills
        // the spare capacity without zeroing it first.
        let read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        read.poll(cx)
    }
}

/// A connection to a Unix socket by `deadline`, opening with `preface` when given.
async fn connect_unix(
    path: &std::path::Path,
    deadline: Instant,
    preface: Option<&[u8]>,
) -> io::Result<tokio::net::UnixStream> {
    let mut unix = tokio::time::timeout_at(deadline, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    if let Some(header) = preface {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout_at(deadline, unix.write_all(header)).await {
            Ok(written) => written?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "PROXY header: no room to write it in time")),
        }
    }
    Ok(unix)
}

/// A TCP connection to `address` within `timeout`, without Nagle's delay.
pub async fn connect_tcp(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What stopped a request body on its way upstream.
#[derive(Debug)]
pub enum BodyWriteError {
    /// The client's body passed the listener's limit.
    TooLarge,
    /// The client's body failed (it went away mid-upload).
    Client(String),
    /// The client went silent mid-upload for longer than its listener allows.
    ClientStalled(Duration),
    /// The server stopped taking it.
    Upstream(io::Error),
}

impl BodyWriteError {
    /// What the client's body failed with, as the cause of the request's failure.
    pub fn from_client(e: crate::body::BodyError) -> BodyWriteError {
        if e.is::<crate::body::BodyTooLarge>() {
            BodyWriteError::TooLarge
        } else if let Some(stalled) = e.downcast_ref::<crate::body::ClientStalled>() {
            BodyWriteError::ClientStalled(stalled.0)
        } else {
            BodyWriteError::Client(e.to_string())
        }
    }
}

impl From<io::Error> for BodyWriteError {
    fn from(e: io::Error) -> Self {
        BodyWriteError::Upstream(e)
    }
}

/// How long a request head may wait for room in the socket (a server that reads nothing).
const HEAD_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes all of `data` and flushes it (TLS holds records until then); the timer is only
/// armed when the socket is full, which the common case (a small head on an idle connection)
/// never meets.
async fn write_all_within(
    stream: &mut UpstreamStream,
    timer: &mut Pin<Box<Sleep>>,
    mut data: &[u8],
    limit: Duration,
) -> io::Result<()> {
    let mut armed = false;
    poll_fn(|cx| {
        loop {
            if data.is_empty() {
                // Plain TCP has nothing to flush; TLS sends the records it holds.
                if let Poll::Ready(flushed) = Pin::new(&mut *stream).poll_flush(cx) {
                    return Poll::Ready(flushed);
                }
            } else {
                match Pin::new(&mut *stream).poll_write(cx, data) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        data = &data[n..];
                        armed = false;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !armed {
                timer.as_mut().reset(Instant::now() + limit);
                armed = true;
            }
            return match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server took none of the request for too long",
                ))),
                Poll::Pending => Poll::Pending,
            };
        }
    })
    .await
}

/// The request line and fields, as HTTP/1.1 in origin form.
fn encode_head<B>(out: &mut Vec<u8>, req: &Request<B>, framing: RequestFraming) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::EmptyLength => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::None | RequestFraming::Length => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head_request: bool) -> (Result<Option<ResponseHead>, Error>, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let parsed = parse_response_head(&mut buf, head_request);
        (parsed, buf)
    }

    #[test]
    fn a_plain_response_keeps_end_to_end_fields_and_leaves_its_body() {
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello";
        let (head, rest) = parse(raw, false);
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["server"], "nginx");
        assert_eq!(head.headers["content-length"], "5");
        assert!(head.headers.get("connection").is_none() && head.headers.get("keep-alive").is_none());
        assert!(matches!(head.framing, Framing::Length(5)));
        assert!(head.keep_alive);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        let (head, rest) = parse("HTTP/1.1 200 OK\r\nContent-Le", false);
        assert!(head.unwrap().is_none());
        assert_eq!(rest.len(), 27, "nothing is taken from a partial head");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&str, bool, &str, bool); 8] = [
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, "chunked", true),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false,
                "chunked",
                false,
            ),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, "close", false),
            ("HTTP/1.1 200 OK\r\n\r\n", false, "close", false),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, "empty", true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, "empty", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, "empty", true),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, "length", false),
        ];
        for (raw, head_request, expected, keep_alive) in cases {
            let head = parse(raw, head_request).0.unwrap().unwrap();
            let framing = match head.framing {
                Framing::Chunked(_) => "chunked",
                Framing::UntilClose => "close",
                Framing::Empty => "empty",
                Framing::Length(_) => "length",
            };
            assert_eq!((framing, head.keep_alive), (expected, keep_alive), "{raw:?}");
            assert!(head.headers.get("transfer-encoding").is_none(), "{raw:?}");
        }
        let both = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", false).0;
        assert!(both.unwrap().unwrap().headers.get("content-length").is_none());
        let ka10 = parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false).0;
        assert!(ka10.unwrap().unwrap().keep_alive);
        let close = parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false).0;
        assert!(!close.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn bad_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(parse(raw, false).0.is_err(), "{raw:?}");
        }
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false).0.unwrap().is_some());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(parse(&huge, false).0.is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).0.is_err());
    }

    #[test]
    fn fields_named_by_connection_are_dropped() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n";
        let head = parse(raw, false).0.unwrap().unwrap();
        assert!(head.headers.get("x-hop").is_none() && head.headers.get("connection").is_none());
        assert_eq!(head.headers["x-end"], "2");
        assert!(!head.keep_alive);
    }

    fn decode_all(chunked: &mut Chunked, pieces: &[&[u8]]) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        let mut buf = BytesMut::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Some(data) = chunked.decode(&mut buf)? {
                body.extend_from_slice(&data);
            }
        }
        Ok(body)
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\nA \r\n, world!!!\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..wire.len() {
            let mut chunked = Chunked::new();
            let body = decode_all(&mut chunked, &[&wire[..split], &wire[split..]]).unwrap();
            assert_eq!(body, b"hello, world!!!", "split at {split}");
            assert!(chunked.is_done());
        }
        let mut rest = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        let mut chunked = Chunked::new();
        assert!(chunked.decode(&mut rest).unwrap().is_none() && chunked.is_done());
        assert_eq!(&rest[..], b"HTTP/1.1", "bytes after the body stay in the buffer");
    }

    #[test]
    fn bad_chunked_bodies_are_refused() {
        for wire in [&b"x\r\n"[..], b"\r\n", b"5\nhello", b"5\r\nhelloXX", b"fffffffffffffffff\r\n", b"0\r\n\n"] {
            assert!(decode_all(&mut Chunked::new(), &[wire]).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn request_heads_carry_framing() {
        let mut out = Vec::new();
        let req = Request::post("/p?q=1").header("host", "a").body(()).unwrap();
        encode_head(&mut out, &req, RequestFraming::Chunked);
        assert_eq!(out, b"POST /p?q=1 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n");
        encode_head(&mut out, &Request::get("http://x/").body(()).unwrap(), RequestFraming::None);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }
}
