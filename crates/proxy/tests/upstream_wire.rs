//! The proxy's HTTP/1.1 client against upstream servers that answer with exact bytes: every
//! way a response body can be delimited, informational answers, HEAD, chunked uploads, and
//! an idle connection that the server closed. Each test uses its own 127.212.N.0/24 addresses.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::Proxy;

/// What a wire server saw: connections accepted and every request (head and body) in full.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

/// A server that reads each request whole (by Content-Length or chunked) and writes what
/// `answer` returns for it; `None` closes the connection after `linger`.
fn wire_server(address: SocketAddr, answer: fn(&str) -> (Vec<u8>, Option<Duration>)) -> Arc<Seen> {
    let listener = TcpListener::bind(address).unwrap();
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            record.connections.fetch_add(1, Ordering::SeqCst);
            let record = record.clone();
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                while let Some(request) = read_request(&mut stream) {
                    record.requests.lock().unwrap().push(request.clone());
                    let (bytes, close_after) = answer(&request);
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                    if let Some(linger) = close_after {
                        std::thread::sleep(linger);
                        return;
                    }
                }
            });
        }
    });
    seen
}

fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        while !data.ends_with(b"\r\n0\r\n\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            data.push(byte[0]);
        }
    } else if let Some(length) =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).ok()?;
        data.extend_from_slice(&body);
    }
    Some(String::from_utf8_lossy(&data).into_owned())
}

fn proxy_config(net: u8, server: SocketAddr) -> String {
    format!(
        "name = \"lb\"\n[[listeners]]\nname = \"www\"\nbind = \"127.212.{net}.1:8080\"\n\
         [[listeners.routes]]\nprefix = \"/\"\npool = \"web\"\n[pools.web]\nidle_timeout_ms = 2000\n\
         [[pools.web.servers]]\nname = \"wire\"\naddress = \"{server}\"\n"
    )
}

/// Sends requests on one keep-alive connection and reads each answer whole.
struct Client {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl Client {
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { stream, buffered: Vec::new() }
    }

    /// Writes `raw` and returns the answer's head and its body (de-chunked).
    fn exchange(&mut self, raw: &[u8], head_request: bool) -> (String, Vec<u8>) {
        self.stream.write_all(raw).unwrap();
        let head_end = loop {
            if let Some(at) = self.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buffered[..head_end]).into_owned();
        self.buffered.drain(..head_end);
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if head_request {
            return (head, body);
        }
        if let Some(length) = lower.lines().find_map(|l| l.strip_prefix("content-length:")) {
            let length: usize = length.trim().parse().unwrap();
            while self.buffered.len() < length {
                self.fill();
            }
            body = self.buffered.drain(..length).collect();
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    self.fill();
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buffered[..line_end]).trim(), 16).unwrap();
                self.buffered.drain(..line_end + 2);
                while self.buffered.len() < size + 2 {
                    self.fill();
                }
                body.extend(self.buffered.drain(..size));
                self.buffered.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        (head, body)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the proxy closed the connection; got so far: {:?}", String::from_utf8_lossy(&self.buffered));
        self.buffered.extend_from_slice(&chunk[..n]);
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n").into_bytes()
}

#[test]
fn chunked_close_delimited_informational_and_head_answers_pass_through() {
    let server = "127.212.1.11:9000".parse().unwrap();
    let seen = wire_server(server, |request| {
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let keep = None;
        match path {
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nX-T: 1\r\n\r\n"
                    .to_vec(),
                keep,
            ),
            "/hints" => (
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                keep,
            ),
            "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(), keep),
            "/big" => {
                let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".to_vec();
                answer.extend((0..300_000).map(|i| (i % 251) as u8));
                (answer, keep)
            }
            "/close" => (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the server closes".to_vec(), Some(Duration::ZERO)),
            _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(), keep),
        }
    });
    let _proxy = Proxy::start(&proxy_config(1, server));
    let mut client = Client::connect("127.212.1.1:8080".parse().unwrap());

    let (head, body) = client.exchange(&get("/chunked"), false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello, world");
    let (head, body) = client.exchange(&get("/hints"), false);
    assert!(head.starts_with("HTTP/1.1 200") && !head.contains("Link"), "the 103 is not passed on: {head}");
    assert_eq!(body, b"ok");
    let (head, _) = client.exchange(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n", true);
    assert!(head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("content-length: 1000"), "{head}");
    let (_, body) = client.exchange(&get("/big"), false);
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "the body arrived intact");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "one upstream connection served all of these");

    let (head, body) = client.exchange(&get("/close"), false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"until the server closes");
    let (head, _) = client.exchange(&get("/after"), false);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2, "a close-delimited answer's connection is not reused");
}

#[test]
fn uploads_without_a_length_go_upstream_chunked() {
    let server = "127.212.2.11:9000".parse().unwrap();
    let seen = wire_server(server, |_| (b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_vec(), None));
    let _proxy = Proxy::start(&proxy_config(2, server));
    let mut client = Client::connect("127.212.2.1:8080".parse().unwrap());
    let (head, _) = client.exchange(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        false,
    );
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let (head, _) = client.exchange(b"POST /empty HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", false);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let requests = seen.requests.lock().unwrap().clone();
    let upload = requests[0].to_ascii_lowercase();
    assert!(upload.contains("transfer-encoding: chunked\r\n"), "{upload}");
    let body = upload.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let decoded: String = body.split("\r\n").skip(1).step_by(2).collect();
    assert_eq!(decoded, "abcdefg", "the body as sent: {body:?}");
    assert!(requests[1].to_ascii_lowercase().contains("content-length: 0"), "{}", requests[1]);
}

#[test]
fn an_idle_connection_the_server_closed_is_not_used_for_the_next_request() {
    let server = "127.212.3.11:9000".parse().unwrap();
    // Like a server whose keep-alive timeout is shorter than the proxy's: it answers, keeps
    // the connection a moment, and closes it.
    let seen = wire_server(server, |_| {
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), Some(Duration::from_millis(100)))
    });
    let _proxy = Proxy::start(&proxy_config(3, server));
    let proxy = "127.212.3.1:8080".parse().unwrap();
    for i in 0..3 {
        let mut client = Client::connect(proxy);
        let post = format!("POST /order-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        let (head, body) = client.exchange(post.as_bytes(), false);
        assert!(head.starts_with("HTTP/1.1 200"), "POST {i}: {head}");
        assert_eq!(body, b"ok");
        std::thread::sleep(Duration::from_millis(400));
    }
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "each POST reached the server once: {requests:?}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}
