//! Compressing answers on the fly, as nginx's `gzip on` (and the brotli module): text-like
//! content types above a minimum size, for clients that accept br or gzip, when the answer is
//! not already encoded or partial. The body is compressed as it streams; nothing is buffered
//! whole.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, ProxyBody};
use crate::static_files::accepts;

/// nginx's `gzip_comp_level` default is 1; 5 costs little more CPU and shrinks text further.
const GZIP_LEVEL: u32 = 5;
/// Brotli's fast end: quality 11 is for precompressing, far too slow per request.
const BROTLI_QUALITY: u32 = 4;
const BROTLI_WINDOW: u32 = 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Brotli,
    Gzip,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// What the client takes, brotli first.
pub fn negotiate(request: &HeaderMap) -> Option<Encoding> {
    let accepted = request.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    [Encoding::Brotli, Encoding::Gzip].into_iter().find(|e| accepts(accepted, e.name()))
}

/// Content types worth compressing: text, and the text formats that do not say so.
pub fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/javascript" | "application/xml" | "image/svg+xml" | "application/wasm"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

/// Compresses `response` with the encoding the client accepted, when that is worth it.
pub fn maybe_compress(
    method: &Method,
    accepted: Option<Encoding>,
    min_bytes: u64,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(encoding) = accepted else { return response };
    let headers = response.headers();
    let worth_it = *method != Method::HEAD
        && response.status() == StatusCode::OK
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !headers.contains_key(header::CONTENT_RANGE)
        && headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(compressible)
        && response.body().size_hint().exact().is_none_or(|len| len >= min_bytes);
    if !worth_it {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.name()));
    parts.headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    // The bytes differ from the stored entity's: a strong tag would lie (nginx weakens it too).
    if let Some(tag) = parts.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !tag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{tag}")) {
                parts.headers.insert(header::ETAG, weak);
            }
        }
    }
    let encoder = match encoding {
        Encoding::Gzip => {
            Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(GZIP_LEVEL)))
        }
        Encoding::Brotli => {
            Encoder::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 8192, BROTLI_QUALITY, BROTLI_WINDOW)))
        }
    };
    Response::from_parts(parts, ProxyBody::compressed(CompressedBody { inner: Box::pin(body), encoder: Some(encoder) }))
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
        }))
    }
}

/// A body compressed as it streams.
pub struct CompressedBody {
    inner: Pin<Box<ProxyBody>>,
    encoder: Option<Encoder>,
}

impl CompressedBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(encoder) = self.encoder.as_mut() else { return Poll::Ready(None) };
            match self.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers do not survive compression; data does.
                    let Ok(data) = frame.into_data() else { continue };
                    match encoder.write(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Poll::Ready(None) => {
                    let Some(encoder) = self.encoder.take() else { return Poll::Ready(None) };
                    return match encoder.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_types() {
        for t in ["text/html; charset=utf-8", "text/css", "application/json", "image/svg+xml", "application/ld+json"] {
            assert!(compressible(t), "{t}");
        }
        for t in ["image/png", "application/octet-stream", "video/mp4", ""] {
            assert!(!compressible(t), "{t}");
        }
    }

    #[test]
    fn negotiation_prefers_brotli() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate, br"));
        assert_eq!(negotiate(&h), Some(Encoding::Brotli));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(negotiate(&h), Some(Encoding::Gzip));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        assert_eq!(negotiate(&h), None);
    }
}
