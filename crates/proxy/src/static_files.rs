//! Serving files from a directory, as nginx's `location /static/ { alias DIR; }`: GET and
//! HEAD; a content type from the extension; ETag and Last-Modified with 304 answers; single
//! byte ranges (206, and 416 for a range past the end, If-Range honoured); index files for
//! directories (and a redirect adding the slash, as nginx does); `FILE.br` / `FILE.gz`
//! siblings for clients that accept them; Cache-Control per route; files streamed from disk.
//! Never a file outside the directory: encoded `..`, NUL bytes, backslashes and symlinks out of
//! the root are refused.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::body::ProxyBody;
use crate::config::StaticRoute;
use crate::forward::error_response;

/// Bytes read from disk per body frame.
const CHUNK: usize = 64 * 1024;

/// Where a request path leads under `root`, or the status that refuses it. The path may be a
/// directory; the caller looks for index files in it.
pub fn resolve(root: &Path, prefix: &str, path: &str) -> Result<PathBuf, StatusCode> {
    let rest = path.strip_prefix(prefix).ok_or(StatusCode::NOT_FOUND)?;
    let decoded = percent_decode_str(rest).decode_utf8().map_err(|_| StatusCode::BAD_REQUEST)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut full = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(StatusCode::BAD_REQUEST),
            s => full.push(s),
        }
    }
    // Symlinks are followed, but only to somewhere inside the root.
    let real = full.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
    if !real.starts_with(root) {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(real)
}

pub async fn serve<B>(route: &StaticRoute, prefix: &str, req: &Request<B>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut path = match resolve(&route.root, prefix, req.uri().path()) {
        Ok(path) => path,
        Err(status) => return error_response(status),
    };
    if path.is_dir() {
        if !req.uri().path().ends_with('/') {
            return add_slash(req);
        }
        match route.index.iter().map(|i| path.join(i)).find(|p| p.is_file()) {
            Some(index) => path = index,
            None => return error_response(StatusCode::NOT_FOUND),
        }
    }
    let content_type = content_type(&path);
    let (path, encoding) = match route.precompressed {
        true => precompressed_sibling(&path, req.headers()).await,
        false => (path, None),
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => return error_response(StatusCode::NOT_FOUND),
    };
    let meta = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta,
        _ => return error_response(StatusCode::NOT_FOUND),
    };
    let len = meta.len();
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = etag(len, modified, encoding);
    let last_modified = httpdate::fmt_http_date(modified);

    let mut response = if not_modified(req.headers(), &etag, modified) {
        status_only(StatusCode::NOT_MODIFIED)
    } else {
        // Ranges apply to the file as stored; a compressed variant is always sent whole.
        let range = match encoding {
            None if if_range_holds(req.headers(), &etag, modified) => requested_range(req.headers(), len),
            _ => Ok(None),
        };
        match range {
            Err(Unsatisfiable) => {
                let mut r = error_response(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
            Ok(Some((start, end))) => {
                if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                    return error_response(StatusCode::INTERNAL_SERVER_ERROR);
                }
                let mut r = body_response(req.method(), file, end - start + 1);
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Ok(None) => body_response(req.method(), file, len),
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if encoding.is_none() {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if route.precompressed {
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(cache_control) = &route.cache_control {
        headers.insert(header::CACHE_CONTROL, cache_control.clone());
    }
    response
}

fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = status;
    r
}

/// `len` bytes of `file` from where it stands; HEAD gets the headers only.
fn body_response(method: &Method, file: tokio::fs::File, len: u64) -> Response<ProxyBody> {
    let body = match *method {
        Method::HEAD => ProxyBody::empty(),
        _ => ProxyBody::file(FileBody { file, remaining: len, buffer: vec![0; CHUNK.min(len as usize).max(1)] }),
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// `/static/docs` names a directory: nginx answers 301 to `/static/docs/`.
fn add_slash<B>(req: &Request<B>) -> Response<ProxyBody> {
    let mut location = format!("{}/", req.uri().path());
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let mut r = status_only(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `FILE.br` or `FILE.gz` when the client accepts it and it exists, else `FILE` itself.
async fn precompressed_sibling(path: &Path, headers: &HeaderMap) -> (PathBuf, Option<&'static str>) {
    let accepted = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    for (encoding, suffix) in [("br", "br"), ("gzip", "gz")] {
        if accepts(accepted, encoding) {
            let mut candidate = path.as_os_str().to_owned();
            candidate.push(".");
            candidate.push(suffix);
            let candidate = PathBuf::from(candidate);
            if tokio::fs::metadata(&candidate).await.is_ok_and(|m| m.is_file()) {
                return (candidate, Some(encoding));
            }
        }
    }
    (path.to_path_buf(), None)
}

/// Whether an Accept-Encoding value allows `encoding` (a `q=0` refuses it).
pub fn accepts(accept_encoding: &str, encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q == 0.0)
        });
        (name.eq_ignore_ascii_case(encoding) || name == "*") && !refused
    })
}

/// A Range that starts past the end of the file: 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The single byte range asked for: `Ok(None)` for the whole file (no Range, a form we do not
/// serve, several ranges), `Err(Unsatisfiable)` when it starts past the end.
pub fn requested_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let range = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let Some(n) = parse(last) else { return Ok(None) };
            if n == 0 || len == 0 {
                return Err(Unsatisfiable);
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let Some(start) = parse(first) else { return Ok(None) };
            let end = match last.is_empty() {
                true => len.saturating_sub(1),
                false => match parse(last) {
                    Some(end) if end >= start => end.min(len.saturating_sub(1)),
                    _ => return Ok(None),
                },
            };
            if start >= len {
                return Err(Unsatisfiable);
            }
            (start, end)
        }
        (true, true) => return Ok(None),
    };
    Ok(Some(range))
}

/// If-Range: the range applies only while the validator still matches.
fn if_range_holds(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else { return true };
    if value.starts_with('"') {
        return value == etag;
    }
    httpdate::parse_http_date(value).is_ok_and(|date| same_second(date, modified))
}

fn same_second(a: SystemTime, b: SystemTime) -> bool {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs(a) == secs(b)
}

fn etag(len: u64, modified: SystemTime, encoding: Option<&str>) -> String {
    let secs = modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // nginx's form: hex mtime and hex length; a compressed variant gets its own tag.
    match encoding {
        Some(e) => format!("\"{secs:x}-{len:x}-{e}\""),
        None => format!("\"{secs:x}-{len:x}\""),
    }
}

fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    }
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified.duration_since(SystemTime::UNIX_EPOCH)) {
        (Some(since), Ok(m)) => since.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|s| m.as_secs() <= s.as_secs()),
        _ => false,
    }
}

/// A file streamed from disk in chunks: a large file never sits in memory.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

impl FileBody {
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (self.remaining as usize).min(self.buffer.len());
        let mut read = ReadBuf::new(&mut self.buffer[..want]);
        match Pin::new(&mut self.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being sent",
            )))),
            Poll::Ready(Ok(())) => {
                let chunk = Bytes::copy_from_slice(read.filled());
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

pub fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("css")).unwrap();
        std::fs::write(root.join("css/site.css"), "body{}").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let root = root.canonicalize().unwrap();
        (dir, root)
    }

    #[test]
    fn resolves_inside_the_root() {
        let (_d, root) = root();
        assert_eq!(resolve(&root, "/static/", "/static/css/site.css").unwrap(), root.join("css/site.css"));
        assert_eq!(resolve(&root, "/static/", "/static/css/%73ite.css").unwrap(), root.join("css/site.css"));
    }

    #[test]
    fn refuses_every_way_out_of_the_root() {
        let (_d, root) = root();
        for (path, status) in [
            ("/static/../secret.txt", StatusCode::BAD_REQUEST),
            ("/static/%2e%2e/secret.txt", StatusCode::BAD_REQUEST),
            ("/static/css/%2E%2E/%2e%2e/secret.txt", StatusCode::BAD_REQUEST),
            ("/static/css%2f..%2f..%2fsecret.txt", StatusCode::BAD_REQUEST),
            ("/static/site.css%00.png", StatusCode::BAD_REQUEST),
            ("/static/..%5csecret.txt", StatusCode::BAD_REQUEST),
            ("/static/link.txt", StatusCode::FORBIDDEN),
            ("/static/missing.css", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(resolve(&root, "/static/", path), Err(status), "{path}");
        }
    }

    fn range(value: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        requested_range(&h, len)
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-500", 100), Ok(Some((0, 99))));
        assert_eq!(range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(range("bytes=-0", 100), Err(Unsatisfiable));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None), "several ranges: the whole file");
        assert_eq!(range("bytes=9-1", 100), Ok(None), "an invalid range is ignored");
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=x-", 100), Ok(None));
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("br;q=0.5", "br"));
        assert!(!accepts("br;q=0, gzip", "br"));
        assert!(accepts("*", "gzip"));
        assert!(!accepts("identity", "gzip"));
    }
}
