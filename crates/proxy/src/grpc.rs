//! gRPC over HTTP/2 at the level the proxy needs: status codes, trailers-only answers,
//! the empty `Commands` acknowledgement, `grpc-timeout`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};

use crate::payload::Payload;

/// The body type the proxy serves (and relays from upstreams).
pub type Body = BoxBody<Bytes, BoxError>;
/// The body type the proxy sends upstream.
pub type UpstreamBody = BoxBody<Payload, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC status codes the proxy answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    Ok = 0,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
    Unimplemented = 12,
}

pub fn empty_body() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The `grpc-status` (and `grpc-message`) fields that end a call.
pub fn status_headers(code: Code, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if !message.is_empty() {
        // grpc-message is percent-encoded; keep it to safe printable ASCII.
        let encoded: String = message
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    }
    headers
}

/// An upstream request body of the given data.
pub fn upstream_body(payload: impl Into<Payload>) -> UpstreamBody {
    http_body_util::Full::new(payload.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A gRPC call the proxy makes itself (a batch, a health probe, its telemetry): `POST` of
/// `body` (already framed) to `path` on `upstream`, `grpc-encoding` set when the messages
/// are compressed. `None` when the two do not make a URI.
pub fn request(
    upstream: &str,
    path: &str,
    encoding: Option<&str>,
    body: impl Into<Payload>,
) -> Option<http::Request<UpstreamBody>> {
    let uri: http::Uri = format!("http://{upstream}{path}").parse().ok()?;
    let mut request = http::Request::post(uri)
        .body(upstream_body(body))
        .expect("a URI and a method make a valid request");
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(encoding) = encoding.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert("grpc-encoding", encoding);
    }
    Some(request)
}

/// The fields of a trailers-only error answer: gRPC content type and the status.
pub fn error_headers(code: Code, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.extend(status_headers(code, message));
    headers
}

/// A trailers-only error answer.
pub fn error(code: Code, message: &str) -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = error_headers(code, message);
    response
}

/// Parses `grpc-timeout` (`<digits><unit>`, units H M S m u n).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The grpc-status of a finished call: from the trailers, or from the headers of a
/// trailers-only answer.
pub fn status_of(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u16> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let mut headers = HeaderMap::new();
        for (value, expected) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("700u", Duration::from_micros(700)),
            ("30n", Duration::from_nanos(30)),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            assert_eq!(timeout(&headers), Some(expected), "{value}");
        }
        for bad in ["S", "5", "5x", "1234567890S"] {
            headers.insert("grpc-timeout", HeaderValue::from_static(bad));
            assert_eq!(timeout(&headers), None, "{bad}");
        }
    }

    #[test]
    fn errors_are_trailers_only_with_a_readable_message() {
        let response = error(Code::ResourceExhausted, "queue full: 100% used");
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(
            response.headers()["grpc-message"],
            "queue full: 100%25 used"
        );
        assert_eq!(status_of(response.headers(), None), Some(8));
    }
}
