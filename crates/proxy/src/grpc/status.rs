//! gRPC over HTTP/2 at the level the proxy needs: status codes, trailers-only answers,
//! the empty `Commands` acknowledgement, `grpc-timeout`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};

/// The body type the proxy serves (and relays from upstreams).
pub(crate) type Body = BoxBody<Bytes, BoxError>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC status codes the proxy answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    Ok = 0,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl From<Code> for u16 {
    fn from(code: Code) -> u16 {
        code as u16
    }
}

pub(crate) fn empty_body() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The `grpc-status` (and `grpc-message`) fields that end a call.
pub(crate) fn status_headers(code: impl Into<u16>, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code.into()));
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

/// The fields of a trailers-only error answer: gRPC content type and the status.
pub(crate) fn error_headers(code: impl Into<u16>, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.extend(status_headers(code, message));
    headers
}

/// A trailers-only error answer.
pub fn error(code: impl Into<u16>, message: &str) -> Response<Body> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = error_headers(code, message);
    response
}

/// A successful unary answer: `message` (framed, uncompressed) and `grpc-status: 0` in the
/// trailers.
pub(crate) fn answer(message: &[u8]) -> Response<Body> {
    let frames = [
        Ok::<_, BoxError>(hyper::body::Frame::data(super::framing::frame(message))),
        Ok(hyper::body::Frame::trailers(status_headers(Code::Ok, ""))),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
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
pub(crate) fn status_of(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u16> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The grpc-message of a finished call, percent-decoded, when it has one.
pub(crate) fn message_of(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> String {
    let raw = trailers
        .and_then(|t| t.get("grpc-message"))
        .or_else(|| headers.get("grpc-message"))
        .map_or(&[][..], |v| v.as_bytes());
    percent_decoded(raw)
}

/// A grpc-message as its text: percent-decoded, invalid UTF-8 replaced.
pub(crate) fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status of an answer without `grpc-status`, from its HTTP status, as gRPC's HTTP
/// mapping gives it (`doc/http-grpc-status-mapping.md`).
pub(crate) fn status_of_http(status: http::StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// What an upstream's answer to a report means for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accepted,
    /// The upstream refused the data itself: it would refuse it anywhere, so it is not a
    /// sign of an unhealthy upstream, and sending it again cannot help for long.
    Refused,
    /// The upstream could not take it now (unavailable, overloaded, timed out, gone): the
    /// data waits and goes to another upstream.
    Failed,
}

/// The verdict of a status. Refusals are the statuses a server gives for the request
/// itself: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE,
/// UNIMPLEMENTED, INTERNAL (grpc-java's own protocol refusals: too many requests,
/// compression, malformed protobuf), DATA_LOSS, and RESOURCE_EXHAUSTED for a message over
/// the size limit. Everything else (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN,
/// ABORTED, RESOURCE_EXHAUSTED for load, UNAUTHENTICATED, PERMISSION_DENIED) is about the
/// upstream or the proxy's standing with it, not the data.
pub(crate) fn verdict(code: u16, message: &str) -> Verdict {
    match code {
        0 => Verdict::Accepted,
        3 | 5 | 6 | 9 | 11 | 12 | 13 | 15 => Verdict::Refused,
        // grpc-java: "gRPC message exceeds maximum size"; grpc-go: "received message
        // larger than max".
        8 if message.contains("exceeds maximum size") || message.contains("larger than max") => {
            Verdict::Refused
        }
        _ => Verdict::Failed,
    }
}

/// Whether a failing status may come after the upstream handled some of the call's
/// messages (a streaming handler takes them as they arrive, the status comes at the end):
/// DEADLINE_EXCEEDED, CANCELLED, UNKNOWN and ABORTED may; UNAVAILABLE, RESOURCE_EXHAUSTED
/// for load, UNAUTHENTICATED and PERMISSION_DENIED come before a handler runs (a server
/// shutting down, a load shedder, an interceptor). Sending again after the first kind may
/// duplicate data, so it counts against the data's delivery budget.
pub(crate) fn may_have_processed(code: u16) -> bool {
    matches!(code, 1 | 2 | 4 | 10)
}

/// Whether a refusal is of the method rather than of the messages: UNIMPLEMENTED comes
/// before any message is read (the upstream has no such method: another OAP version or
/// receiver set may), while the other refusals come at a message, once the ones before it
/// were handled.
pub(crate) fn refuses_the_method(code: u16) -> bool {
    code == 12
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
    fn refusals_of_the_data_are_told_from_failures_of_the_upstream() {
        for refused in [3, 5, 9, 11, 12, 13, 15] {
            assert_eq!(verdict(refused, ""), Verdict::Refused, "{refused}");
        }
        for failed in [1, 2, 4, 7, 10, 14, 16] {
            assert_eq!(verdict(failed, ""), Verdict::Failed, "{failed}");
        }
        assert_eq!(verdict(0, ""), Verdict::Accepted);
        assert_eq!(
            verdict(8, "gRPC message exceeds maximum size 4194304: 5000000"),
            Verdict::Refused
        );
        assert_eq!(
            verdict(8, "too many calls"),
            Verdict::Failed,
            "load is not the data's fault"
        );
        assert_eq!(status_of_http(http::StatusCode::NOT_FOUND), 12);
        assert_eq!(status_of_http(http::StatusCode::SERVICE_UNAVAILABLE), 14);
        assert!(refuses_the_method(12) && !refuses_the_method(3));
        // Failures after which the data may have been handled, and those before any handler.
        for maybe in [1, 2, 4, 10] {
            assert!(may_have_processed(maybe), "{maybe}");
        }
        for before in [7, 8, 14, 16] {
            assert!(!may_have_processed(before), "{before}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("queue full: 100%25 used"),
        );
        assert_eq!(
            message_of(&HeaderMap::new(), Some(&trailers)),
            "queue full: 100% used"
        );
        assert_eq!(message_of(&HeaderMap::new(), None), "");
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
