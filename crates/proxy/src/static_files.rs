//! Serving files from a directory, as nginx's `location /static/ { alias DIR; }`: GET and
//! HEAD; a content type from the extension; ETag and Last-Modified with 304 answers; single
//! byte ranges (206, and 416 for a range past the end, If-Range honoured); index files for
//! directories (and a redirect adding the slash, as nginx does); `FILE.br` / `FILE.gz`
//! siblings for clients that accept them; Cache-Control per route; large files streamed from
//! disk, small ones kept in memory and checked against the disk on every request.
//! Never a file outside the directory: encoded `..`, NUL bytes, backslashes and symlinks out of
//! the root are refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

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

/// The request path below the route's prefix, decoded and checked: no `..`, NUL or backslash.
pub fn relative_path(prefix: &str, path: &str) -> Result<PathBuf, StatusCode> {
    let rest = path.strip_prefix(prefix).ok_or(StatusCode::NOT_FOUND)?;
    let decoded = percent_decode_str(rest).decode_utf8().map_err(|_| StatusCode::BAD_REQUEST)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut relative = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(StatusCode::BAD_REQUEST),
            s => relative.push(s),
        }
    }
    Ok(relative)
}

/// Opens `relative` below the route's root so that nothing outside it can be reached, also
/// through symlinks: `openat2` with `RESOLVE_BENEATH` (Linux 5.6) in one syscall; a canonical
/// path check where that refuses or is missing.
fn open_beneath(route: &StaticRoute, relative: &Path) -> Result<std::fs::File, StatusCode> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let target: &Path = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
    let Ok(c_path) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    // SAFETY: open_how is plain data; every field is set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path, and the size of the struct passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            route.root_dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor.
        return Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) });
    }
    match std::io::Error::last_os_error().raw_os_error() {
        // No openat2 (before Linux 5.6), or EXDEV: a symlink on the way is absolute or leads
        // out. The slow check decides: an absolute link that stays inside the root is fine.
        Some(libc::ENOSYS) | Some(libc::EXDEV) => {
            let real = route.root.join(relative).canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
            if !real.starts_with(&route.root) {
                return Err(StatusCode::FORBIDDEN);
            }
            std::fs::File::open(real).map_err(|_| StatusCode::NOT_FOUND)
        }
        Some(libc::ELOOP) | Some(libc::EACCES) | Some(libc::EPERM) => Err(StatusCode::FORBIDDEN),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

/// Files up to this size are read whole at once; larger ones stream in chunks.
const READ_WHOLE: u64 = 256 * 1024;

pub async fn serve<B>(route: &StaticRoute, prefix: &str, req: &Request<B>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // Files are opened and read on this thread, as nginx does without aio: from the page
    // cache that takes microseconds, where a hop to tokio's blocking pool costs far more.
    let relative = match relative_path(prefix, req.uri().path()) {
        Ok(relative) => relative,
        Err(status) => return error_response(status),
    };
    // A precompressed sibling depends on the client's Accept-Encoding: such routes take the
    // full path every time.
    if !route.precompressed {
        if let Some(cached) = route.cache.fresh(&route.root, &cache_key(req, &relative)) {
            return respond(route, req, Representation::cached(cached));
        }
    }
    match open_representation(route, req, relative) {
        Ok(representation) => respond(route, req, representation),
        Err(Refused::Status(status)) => error_response(status),
        Err(Refused::AddSlash) => add_slash(req),
    }
}

/// What a request path names, opened: the file (or the directory's index file), or the
/// precompressed sibling the client prefers. Small files read whole are kept in the cache.
fn open_representation<B>(
    route: &StaticRoute,
    req: &Request<B>,
    mut relative: PathBuf,
) -> Result<Representation, Refused> {
    let key = cache_key(req, &relative);
    let mut file = open_beneath(route, &relative).map_err(Refused::Status)?;
    let mut meta = file.metadata().map_err(|_| Refused::Status(StatusCode::NOT_FOUND))?;
    if meta.is_dir() {
        if !req.uri().path().ends_with('/') {
            return Err(Refused::AddSlash);
        }
        let index = route.index.iter().find_map(|name| {
            let candidate = relative.join(name);
            let file = open_beneath(route, &candidate).ok()?;
            let meta = file.metadata().ok().filter(|m| m.is_file())?;
            Some((candidate, file, meta))
        });
        match index {
            Some((candidate, f, m)) => (relative, file, meta) = (candidate, f, m),
            None => return Err(Refused::Status(StatusCode::NOT_FOUND)),
        }
    }
    if !meta.is_file() {
        return Err(Refused::Status(StatusCode::NOT_FOUND));
    }
    let content_type = content_type(&relative);
    let mut encoding = None;
    if route.precompressed {
        if let Some((f, m, e)) = precompressed_sibling(route, &relative, req.headers()) {
            (file, meta, encoding) = (f, m, Some(e));
        }
    }
    let len = meta.len();
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let validators = Arc::new(Validators::new(len, modified, encoding));
    let cacheable = !route.precompressed && *req.method() == Method::GET && len <= CACHED_FILE_MAX;
    let source = match cacheable.then(|| read_whole(&mut file, len)).flatten() {
        Some(content) => {
            let cached = CachedFile {
                identity: Identity::of(&meta),
                resolved: relative,
                content: content.clone(),
                content_type,
                validators: validators.clone(),
            };
            route.cache.insert(key, cached);
            Source::Memory(content)
        }
        None => Source::File(file),
    };
    Ok(Representation { len, content_type, encoding, validators, source })
}

/// Why a path gives no file: an error status, or a directory named without its slash.
enum Refused {
    Status(StatusCode),
    AddSlash,
}

/// A directory's path with and without its final slash get different answers (the index
/// file, a redirect), so the slash is part of the key.
fn cache_key<B>(req: &Request<B>, relative: &Path) -> CacheKey {
    (relative.to_path_buf(), req.uri().path().ends_with('/'))
}

type CacheKey = (PathBuf, bool);

fn read_whole(file: &mut std::fs::File, len: u64) -> Option<Bytes> {
    let mut bytes = vec![0u8; usize::try_from(len).ok()?];
    std::io::Read::read_exact(file, &mut bytes).ok()?;
    Some(Bytes::from(bytes))
}

/// A file as the response will carry it.
struct Representation {
    len: u64,
    content_type: &'static str,
    encoding: Option<&'static str>,
    validators: Arc<Validators>,
    source: Source,
}

enum Source {
    File(std::fs::File),
    Memory(Bytes),
}

impl Representation {
    fn cached(cached: Arc<CachedFile>) -> Self {
        Representation {
            len: cached.content.len() as u64,
            content_type: cached.content_type,
            encoding: None,
            validators: cached.validators.clone(),
            source: Source::Memory(cached.content.clone()),
        }
    }
}

/// ETag and Last-Modified of a file, made once per file version.
#[derive(Debug)]
struct Validators {
    modified: SystemTime,
    etag: String,
    etag_header: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
}

impl Validators {
    fn new(len: u64, modified: SystemTime, encoding: Option<&str>) -> Self {
        let etag = etag(len, modified, encoding);
        Validators {
            modified,
            etag_header: HeaderValue::from_str(&etag).ok(),
            etag,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok(),
        }
    }
}

/// The answer for a representation: 304 when the client's copy is current, a range, or all.
fn respond<B>(route: &StaticRoute, req: &Request<B>, file: Representation) -> Response<ProxyBody> {
    let Representation { len, content_type, encoding, validators, source } = file;
    let mut response = if not_modified(req.headers(), &validators.etag, validators.modified) {
        status_only(StatusCode::NOT_MODIFIED)
    } else {
        // Ranges apply to the file as stored; a compressed variant is always sent whole.
        let range = match encoding {
            None if if_range_holds(req.headers(), &validators.etag, validators.modified) => {
                requested_range(req.headers(), len)
            }
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
                let mut r = match body_response(req.method(), source, start, end - start + 1) {
                    Ok(r) => r,
                    Err(status) => return error_response(status),
                };
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Ok(None) => match body_response(req.method(), source, 0, len) {
                Ok(r) => r,
                Err(status) => return error_response(status),
            },
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
    if let Some(v) = &validators.etag_header {
        headers.insert(header::ETAG, v.clone());
    }
    if let Some(v) = &validators.last_modified {
        headers.insert(header::LAST_MODIFIED, v.clone());
    }
    if let Some(cache_control) = &route.cache_control {
        headers.insert(header::CACHE_CONTROL, cache_control.clone());
    }
    response
}

/// Files up to this size are kept in memory after their first GET.
const CACHED_FILE_MAX: u64 = 256 * 1024;
/// Memory the cache of one route may hold.
const CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Small files kept in memory, as nginx's `open_file_cache` keeps descriptors, with a check
/// on disk for each request (one `statx`): a file edited, replaced or removed is never served
/// stale. A hit skips open, read and close, and its ETag and Last-Modified are made once.
#[derive(Debug, Default)]
pub struct FileCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    files: HashMap<CacheKey, Arc<CachedFile>>,
    bytes: usize,
}

#[derive(Debug)]
struct CachedFile {
    /// Which file version this is: the check compares what `statx` says now.
    identity: Identity,
    /// The file served, below the root (the index file for a directory's path).
    resolved: PathBuf,
    content: Bytes,
    content_type: &'static str,
    validators: Arc<Validators>,
}

/// A file version: same device, inode, size and change times. ctime cannot be set by anyone,
/// so a different file can never pass for the cached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Identity {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl FileCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic mid-insert leaves a map that is still sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached file for `relative`, if the file on disk is still that version. The path
    /// was resolved beneath the root when the entry was made; a path that now leads to any
    /// other file (a symlink swapped in) fails the identity check and takes the full path.
    fn fresh(&self, root: &Path, key: &CacheKey) -> Option<Arc<CachedFile>> {
        let cached = self.lock().files.get(key).cloned()?;
        let meta = std::fs::metadata(root.join(&cached.resolved)).ok();
        if meta.is_some_and(|m| Identity::of(&m) == cached.identity) {
            return Some(cached);
        }
        let mut inner = self.lock();
        if let Some(gone) = inner.files.remove(key) {
            inner.bytes -= gone.content.len();
        }
        None
    }

    fn insert(&self, key: CacheKey, file: CachedFile) {
        let size = file.content.len();
        let mut inner = self.lock();
        if let Some(old) = inner.files.remove(&key) {
            inner.bytes -= old.content.len();
        }
        // Full: make room by dropping arbitrary entries (the map's order is random enough).
        while inner.bytes + size > CACHE_BYTES_MAX {
            let Some(victim) = inner.files.keys().next().cloned() else { break };
            if let Some(gone) = inner.files.remove(&victim) {
                inner.bytes -= gone.content.len();
            }
        }
        if inner.bytes + size <= CACHE_BYTES_MAX {
            inner.bytes += size;
            inner.files.insert(key, Arc::new(file));
        }
    }
}

fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = status;
    r
}

/// `len` bytes of a representation from `start`; HEAD gets the headers only.
fn body_response(method: &Method, source: Source, start: u64, len: u64) -> Result<Response<ProxyBody>, StatusCode> {
    let body = match (method, source) {
        (&Method::HEAD, _) => ProxyBody::empty(),
        (_, Source::Memory(content)) => {
            let (start, end) = (start as usize, (start + len) as usize);
            ProxyBody::full(content.slice(start..end.min(content.len())))
        }
        (_, Source::File(mut file)) => {
            if start > 0 && std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).is_err() {
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            if len <= READ_WHOLE {
                ProxyBody::full(read_whole(&mut file, len).ok_or(StatusCode::INTERNAL_SERVER_ERROR)?)
            } else {
                ProxyBody::file(FileBody { file, remaining: len, buffer: vec![0; CHUNK] })
            }
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
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

/// `FILE.br` or `FILE.gz`, opened, when the client accepts it and it exists.
fn precompressed_sibling(
    route: &StaticRoute,
    relative: &Path,
    headers: &HeaderMap,
) -> Option<(std::fs::File, std::fs::Metadata, &'static str)> {
    let accepted = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok())?;
    for (encoding, suffix) in [("br", "br"), ("gzip", "gz")] {
        if accepts(accepted, encoding) {
            let mut candidate = relative.as_os_str().to_owned();
            candidate.push(".");
            candidate.push(suffix);
            if let Ok(file) = open_beneath(route, Path::new(&candidate)) {
                if let Some(meta) = file.metadata().ok().filter(|m| m.is_file()) {
                    return Some((file, meta, encoding));
                }
            }
        }
    }
    None
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

/// A large file streamed from disk in chunks, as the client takes them: it never sits in
/// memory whole.
pub struct FileBody {
    file: std::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

impl FileBody {
    /// The next chunk. The read blocks this thread for as long as the disk takes, as nginx's
    /// reads do; from the page cache that is microseconds.
    pub fn poll_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (self.remaining as usize).min(self.buffer.len());
        match std::io::Read::read(&mut self.file, &mut self.buffer[..want]) {
            Err(e) => Poll::Ready(Some(Err(e))),
            Ok(0) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being sent",
            )))),
            Ok(n) => {
                self.remaining -= n as u64;
                Poll::Ready(Some(Ok(Bytes::copy_from_slice(&self.buffer[..n]))))
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
    fn relative_paths_are_checked() {
        assert_eq!(relative_path("/static/", "/static/a/%62.css"), Ok(PathBuf::from("a/b.css")));
        assert_eq!(relative_path("/static/", "/static/"), Ok(PathBuf::new()));
        assert_eq!(relative_path("/static/", "/static/a/../b"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(relative_path("/static/", "/static/%2e%2e/x"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(relative_path("/static/", "/static/x%00"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(relative_path("/static/", "/other"), Err(StatusCode::NOT_FOUND));
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
