//! Health probes, and the few requests the supervisor makes of components' admin listeners: a
//! plain HTTP/1.1 request over a fresh connection, bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_BODY: usize = 64 * 1024;

/// `GET path` on `address`: the status code and body, or why it failed.
pub async fn http_get(address: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    http_request("GET", address, path, timeout).await
}

/// `POST path` (no body) on `address`: the status code and body, or why it failed.
pub async fn http_post(address: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    http_request("POST", address, path, timeout).await
}

async fn http_request(
    method: &str,
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: webstack-supervisor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 || buf.len() > MAX_BODY {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        parse_response(&buf).ok_or_else(|| format!("{address} gave no HTTP answer"))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{address} did not answer in {} ms", timeout.as_millis())))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status_and_body() {
        let (s, b) = super::parse_response(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\ndown\n").unwrap();
        assert_eq!((s, b.as_str()), (503, "down\n"));
        assert!(super::parse_response(b"garbage").is_none());
    }
}
