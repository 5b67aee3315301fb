//! Serving files from a directory, as nginx's `location /static/ { alias DIR; }`: GET and HEAD,
//! a content type from the extension, Last-Modified and ETag with 304 answers, and never a
//! file outside the directory (encoded `..`, NUL bytes and symlinks out of the root are
//! refused).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

use crate::body::ProxyBody;
use crate::forward::error_response;

/// Files larger than this are refused for now; streaming large files comes with the web role's
/// full static serving.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Where a request path leads under `root`, or the status that refuses it.
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

pub async fn serve<B>(root: &Path, prefix: &str, req: &Request<B>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = match resolve(root, prefix, req.uri().path()) {
        Ok(path) => path,
        Err(status) => return error_response(status),
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return error_response(StatusCode::NOT_FOUND),
        Err(_) => return error_response(StatusCode::NOT_FOUND),
    };
    if meta.len() > MAX_FILE_BYTES {
        return error_response(StatusCode::FORBIDDEN);
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let etag = etag(meta.len(), modified);
    let last_modified = httpdate::fmt_http_date(modified);

    let mut response = if not_modified(req, &etag, modified) {
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if req.method() == Method::HEAD {
        let mut r = Response::new(ProxyBody::empty());
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        r
    } else {
        match tokio::fs::read(&path).await {
            Ok(bytes) => Response::new(ProxyBody::full(Bytes::from(bytes))),
            Err(_) => return error_response(StatusCode::NOT_FOUND),
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    response
}

fn etag(len: u64, modified: SystemTime) -> String {
    let secs = modified.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // nginx's form: hex mtime and hex length.
    format!("\"{secs:x}-{len:x}\"")
}

fn not_modified<B>(req: &Request<B>, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    }
    let since = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (since, modified.duration_since(SystemTime::UNIX_EPOCH)) {
        (Some(since), Ok(m)) => since.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|s| m.as_secs() <= s.as_secs()),
        _ => false,
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
}
