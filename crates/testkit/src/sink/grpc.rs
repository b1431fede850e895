//! What grpc-java's Netty server (the one OAP serves its gRPC port with) refuses before a
//! handler sees a call, rule by rule, with the class each rule comes from in grpc-java
//! (`netty/.../NettyServerHandler`, `core/.../ServerImpl`, `core/.../MessageDeframer`,
//! `stub/.../ServerCalls`, `protobuf-lite/.../ProtoLiteUtils`).

use std::io::Read;

use bytes::Bytes;

/// A gRPC status as a server closes a call with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub message: String,
    /// The HTTP status of the answer: 200 for a gRPC status, another for the refusals
    /// grpc-java answers at the HTTP level (with a `grpc-status` beside it).
    pub http: u16,
}

pub const OK: u16 = 0;
pub const INVALID_ARGUMENT: u16 = 3;
pub const RESOURCE_EXHAUSTED: u16 = 8;
pub const UNIMPLEMENTED: u16 = 12;
pub const INTERNAL: u16 = 13;
pub const UNAVAILABLE: u16 = 14;
pub const UNAUTHENTICATED: u16 = 16;

impl Status {
    pub fn new(code: u16, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            http: 200,
        }
    }

    fn http(http: u16, code: u16, message: impl Into<String>) -> Status {
        Status {
            http,
            ..Status::new(code, message)
        }
    }
}

/// OAP's default `maxMessageSize` (`SW_CORE_GRPC_MAX_MESSAGE_SIZE`, 50 MB since OAP 10.1).
pub const OAP_MAX_MESSAGE_SIZE: usize = 52_428_800;

/// The checks `NettyServerHandler.onHeadersRead` makes on a request's headers: gRPC content
/// (415), `POST` (405). A missing `te: trailers` is only logged by the Netty server.
pub fn check_headers(method: &http::Method, headers: &http::HeaderMap) -> Result<(), Status> {
    let content_type = match headers.get(http::header::CONTENT_TYPE) {
        None => {
            return Err(Status::http(
                415,
                INTERNAL,
                "Content-Type is missing from the request",
            ));
        }
        Some(value) => value.to_str().unwrap_or_default(),
    };
    // GrpcUtil.isGrpcContentType: application/grpc, alone or followed by '+' or ';'.
    let grpc = content_type
        .to_ascii_lowercase()
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'));
    if !grpc {
        return Err(Status::http(
            415,
            INTERNAL,
            format!("Content-Type '{content_type}' is not supported"),
        ));
    }
    if method != http::Method::POST {
        return Err(Status::http(
            405,
            INTERNAL,
            format!("Method '{method}' is not supported"),
        ));
    }
    Ok(())
}

/// How the call's messages are compressed, from `grpc-encoding`: `ServerImpl` looks the
/// name up in the default `DecompressorRegistry` (gzip and identity) and closes the call
/// with UNIMPLEMENTED when it is not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

pub fn encoding(headers: &http::HeaderMap) -> Result<Encoding, Status> {
    match headers
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => Ok(Encoding::Identity),
        Some("gzip") => Ok(Encoding::Gzip),
        Some(other) => Err(Status::new(
            UNIMPLEMENTED,
            format!("Can't find decompressor for {other}"),
        )),
    }
}

/// A body's messages as `MessageDeframer` reads them, decompressing those with the
/// compressed flag, up to the first it refuses: the messages before that one were already
/// handed to a streaming handler when the call is closed.
#[derive(Debug, PartialEq)]
pub struct Deframed {
    pub messages: Vec<Bytes>,
    pub refused: Option<Status>,
    /// Of the messages, those that came compressed (flag 1).
    pub compressed: usize,
}

pub fn deframe(body: &[u8], encoding: Encoding, max_message_size: usize) -> Deframed {
    let mut messages = Vec::new();
    let mut compressed = 0;
    let refused = deframe_into(
        body,
        encoding,
        max_message_size,
        &mut messages,
        &mut compressed,
    )
    .err();
    Deframed {
        messages,
        refused,
        compressed,
    }
}

fn deframe_into(
    mut body: &[u8],
    encoding: Encoding,
    max_message_size: usize,
    messages: &mut Vec<Bytes>,
    compressed: &mut usize,
) -> Result<(), Status> {
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(Status::new(INTERNAL, "Encountered end-of-stream mid-frame"));
        }
        let flags = body[0];
        // MessageDeframer.processHeader: the seven reserved bits must be zero.
        if flags & 0xfe != 0 {
            return Err(Status::new(
                INTERNAL,
                "gRPC frame header malformed: reserved bits not zero",
            ));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if len > max_message_size {
            return Err(Status::new(
                RESOURCE_EXHAUSTED,
                format!("gRPC message exceeds maximum size {max_message_size}: {len}"),
            ));
        }
        if body.len() < 5 + len {
            return Err(Status::new(INTERNAL, "Encountered end-of-stream mid-frame"));
        }
        let message = &body[5..5 + len];
        body = &body[5 + len..];
        messages.push(match (flags & 1 == 1, encoding) {
            (false, _) => Bytes::copy_from_slice(message),
            // MessageDeframer.getCompressedBody: no decompressor beyond identity.
            (true, Encoding::Identity) => {
                return Err(Status::new(
                    INTERNAL,
                    "Can't decode compressed gRPC message as compression not configured",
                ));
            }
            (true, Encoding::Gzip) => {
                *compressed += 1;
                let mut plain = Vec::new();
                let read = flate2::read::GzDecoder::new(message)
                    .take(max_message_size as u64 + 1)
                    .read_to_end(&mut plain);
                match read {
                    Ok(n) if n > max_message_size => {
                        return Err(Status::new(
                            RESOURCE_EXHAUSTED,
                            format!(
                                "Decompressed gRPC message exceeds maximum size {max_message_size}"
                            ),
                        ));
                    }
                    Ok(_) => Bytes::from(plain),
                    Err(err) => {
                        return Err(Status::new(INTERNAL, format!("Decompressor failed: {err}")));
                    }
                }
            }
        });
    }
    Ok(())
}

/// `ProtoLiteUtils`' marshaller: a message that does not parse closes the call.
impl From<crate::protobuf::Malformed> for Status {
    fn from(_: crate::protobuf::Malformed) -> Status {
        Status::new(INTERNAL, "Invalid protobuf byte sequence")
    }
}

/// How `ServerCalls` hands a method's messages to its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `UnaryServerCallHandler`: exactly one request message, seen at half-close.
    Unary,
    /// `StreamingServerCallHandler`: every message, as it arrives.
    ClientStreaming,
    /// The same handler, answering as it goes.
    Bidi,
}

impl Kind {
    /// The call-level refusal for these messages, if any: a unary call takes exactly one.
    pub fn check(self, messages: usize) -> Result<(), Status> {
        match (self, messages) {
            (Kind::Unary, 0) => Err(Status::new(INTERNAL, "Half-closed without a request")),
            (Kind::Unary, 1) => Ok(()),
            (Kind::Unary, _) => Err(Status::new(INTERNAL, "Too many requests")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn unary_calls_take_exactly_one_message() {
        assert_eq!(Kind::Unary.check(1), Ok(()));
        assert_eq!(
            Kind::Unary.check(2).unwrap_err().message,
            "Too many requests"
        );
        assert_eq!(
            Kind::Unary.check(0).unwrap_err().message,
            "Half-closed without a request"
        );
        assert_eq!(Kind::ClientStreaming.check(0), Ok(()));
    }

    #[test]
    fn framing_is_refused_as_grpc_java_refuses_it() {
        let refused =
            |body: &[u8], limit| deframe(body, Encoding::Identity, limit).refused.unwrap();
        let err = refused(&frame(1, b"x"), 100);
        assert_eq!(err.code, INTERNAL);
        assert!(err.message.contains("compression not configured"));
        assert_eq!(refused(&frame(0, &[0; 11]), 10).code, RESOURCE_EXHAUSTED);
        assert_eq!(refused(&frame(2, b"x"), 10).code, INTERNAL);
        assert_eq!(
            refused(&frame(0, b"abc")[..6], 10).message,
            "Encountered end-of-stream mid-frame"
        );
        // The messages before the refused one were read (and handed to the handler).
        let body = [frame(0, b"ok"), frame(0, &[0; 11])].concat();
        let read = deframe(&body, Encoding::Identity, 10);
        assert_eq!(read.messages, vec![Bytes::from_static(b"ok")]);
        assert_eq!(read.refused.unwrap().code, RESOURCE_EXHAUSTED);
        let mut gzipped = Vec::new();
        let mut encoder = flate2::write::GzEncoder::new(&mut gzipped, flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, b"hello").unwrap();
        encoder.finish().unwrap();
        assert_eq!(
            deframe(&frame(1, &gzipped), Encoding::Gzip, 100),
            Deframed {
                messages: vec![Bytes::from_static(b"hello")],
                refused: None,
                compressed: 1,
            }
        );
    }

    #[test]
    fn headers_must_be_a_grpc_post() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            check_headers(&http::Method::POST, &headers)
                .unwrap_err()
                .http,
            415
        );
        headers.insert("content-type", "application/grpc+proto".parse().unwrap());
        assert_eq!(check_headers(&http::Method::POST, &headers), Ok(()));
        assert_eq!(
            check_headers(&http::Method::GET, &headers)
                .unwrap_err()
                .http,
            405
        );
        headers.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(
            check_headers(&http::Method::POST, &headers)
                .unwrap_err()
                .http,
            415
        );
        headers.insert("grpc-encoding", "snappy".parse().unwrap());
        assert_eq!(encoding(&headers).unwrap_err().code, UNIMPLEMENTED);
    }
}
