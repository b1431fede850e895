//! Header blocks: requests decoded with HPACK (RFC 7541) into `http` types, and responses
//! encoded. The encoder never indexes, so every block stands alone: a block can be encoded
//! away from the connection (in a handler's task) and the client's table size never
//! matters.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};

use super::hpack::Decoder;

/// The decoder's table could not follow the block: the connection cannot go on.
#[derive(Debug)]
pub(crate) struct CompressionError;

/// A request block that decodes but cannot be served (a stream error).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unservable {
    /// Not a valid request (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Decoded, the header list is larger than [`MAX_LIST`]: answered 431 (RFC 9113
    /// §10.5.1).
    TooLarge,
}

/// Longest header block (compressed) a client may send.
pub(crate) const MAX_BLOCK: usize = 64 * 1024;
/// Largest header list, decoded, counted as RFC 7541 §4.1 and RFC 9113 §6.5.2 count it
/// (name, value and 32 per field); advertised as SETTINGS_MAX_HEADER_LIST_SIZE. A block
/// that references one large table entry over and over (an "HPACK bomb") stays within
/// [`MAX_BLOCK`] and decodes to hundreds of megabytes: the fields past this limit are
/// decoded (the table must follow the block) but never kept.
pub(crate) const MAX_LIST: usize = 64 * 1024;
/// Per-field overhead of the header list size.
const FIELD_OVERHEAD: usize = 32;

/// The decoder a connection keeps, with the table size this server leaves at its default
/// (4096).
pub(crate) fn decoder() -> Decoder {
    Decoder::new(4096)
}

fn decode(
    decoder: &mut Decoder,
    block: &[u8],
    field: impl FnMut(&[u8], &[u8]),
) -> Result<(), CompressionError> {
    decoder.decode(block, field).map_err(|_| CompressionError)
}

/// Connection-specific fields are not allowed in HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8], value: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    ) || (name == b"te" && value != b"trailers")
}

/// Field names are lowercase in HTTP/2 (RFC 9113 §8.2.1); `http` would fold them silently.
fn has_uppercase(name: &[u8]) -> bool {
    name.iter().any(u8::is_ascii_uppercase)
}

/// Counts a header list's decoded size and says when it passed [`MAX_LIST`].
#[derive(Default)]
struct ListSize(usize);

impl ListSize {
    fn add(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.0 = self
            .0
            .saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
        self.0 > MAX_LIST
    }
}

/// A request's header block as a request without a body.
pub(crate) fn decode_request(
    decoder: &mut Decoder,
    block: &[u8],
) -> Result<Result<Request<()>, Unservable>, CompressionError> {
    let mut method = None;
    let mut path: Option<Vec<u8>> = None;
    let (mut scheme, mut authority) = (false, false);
    let mut headers = HeaderMap::new();
    let mut unservable = None;
    let mut size = ListSize::default();
    decode(decoder, block, |name, value| {
        if unservable.is_some() {
            return;
        }
        if size.add(name, value) {
            unservable = Some(Unservable::TooLarge);
            return;
        }
        let malformed = |why| Some(Unservable::Malformed(why));
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !headers.is_empty() {
                unservable = malformed("a pseudo-header after a regular header");
                return;
            }
            match pseudo {
                b"method" if method.is_none() => {
                    method = Some(Method::from_bytes(value).ok());
                }
                b"path" if path.is_none() => path = Some(value.to_vec()),
                b"scheme" if !scheme => scheme = true,
                b"authority" if !authority => authority = true,
                _ => unservable = malformed("an unknown, response or repeated pseudo-header"),
            }
            return;
        }
        if connection_specific(name, value) {
            unservable = malformed("a connection-specific header");
            return;
        }
        if has_uppercase(name) {
            unservable = malformed("an uppercase header name");
            return;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => unservable = malformed("an invalid header name or value"),
        }
    })?;
    if let Some(unservable) = unservable {
        return Ok(Err(unservable));
    }
    let (Some(Some(method)), Some(path), true) = (method, path, scheme) else {
        return Ok(Err(Unservable::Malformed(
            ":method, :scheme or :path is missing or invalid",
        )));
    };
    if path.is_empty() {
        return Ok(Err(Unservable::Malformed("an empty :path")));
    }
    let Ok(uri) = Uri::try_from(path) else {
        return Ok(Err(Unservable::Malformed("an invalid :path")));
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(Ok(request))
}

/// A trailer block as a header map. Pseudo-headers, connection-specific or uppercase
/// fields make the trailers malformed (RFC 9113 §8.1); so does a list past [`MAX_LIST`].
pub(crate) fn decode_trailers(
    decoder: &mut Decoder,
    block: &[u8],
) -> Result<Result<HeaderMap, Unservable>, CompressionError> {
    let mut trailers = HeaderMap::new();
    let mut unservable = None;
    let mut size = ListSize::default();
    decode(decoder, block, |name, value| {
        if unservable.is_some() {
            return;
        }
        if size.add(name, value) {
            unservable = Some(Unservable::TooLarge);
            return;
        }
        if name.starts_with(b":") || connection_specific(name, value) || has_uppercase(name) {
            unservable = Some(Unservable::Malformed(
                "a pseudo-header, connection-specific or uppercase field in trailers",
            ));
            return;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                trailers.append(name, value);
            }
            _ => unservable = Some(Unservable::Malformed("an invalid trailer")),
        }
    })?;
    Ok(match unservable {
        Some(unservable) => Err(unservable),
        None => Ok(trailers),
    })
}

fn integer(value: usize, prefix_bits: u8, first: u8, out: &mut BytesMut) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

fn string(bytes: &[u8], out: &mut BytesMut) {
    integer(bytes.len(), 7, 0, out);
    out.put_slice(bytes);
}

/// A field as "literal without indexing, new name".
fn literal(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.put_u8(0);
    string(name, out);
    string(value, out);
}

/// Encodes a response's status and headers.
pub(crate) fn encode_response(status: StatusCode, headers: &HeaderMap, out: &mut BytesMut) {
    // Static table entries 8..=14 are the common statuses.
    let indexed = match status.as_u16() {
        200 => Some(8),
        204 => Some(9),
        206 => Some(10),
        304 => Some(11),
        400 => Some(12),
        404 => Some(13),
        500 => Some(14),
        _ => None,
    };
    match indexed {
        Some(index) => out.put_u8(0x80 | index),
        None => {
            // Literal without indexing, name from static entry 8 (`:status`).
            integer(8, 4, 0, out);
            string(status.as_str().as_bytes(), out);
        }
    }
    encode_fields(headers, out);
}

/// Encodes a request of the proxy's own to an upstream: `POST` of `path` to `authority`,
/// then `fields` (lowercase names, as HTTP/2 wants them).
pub(crate) fn encode_request<'a>(
    https: bool,
    authority: &[u8],
    path: &[u8],
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    out: &mut BytesMut,
) {
    // Room for all of it at once: grown piece by piece, a block took several allocations
    // on every unary report. A string is its length (at most 4 bytes here) and its bytes;
    // each field starts with a byte saying how it is coded.
    let room = |bytes: &[u8]| 4 + bytes.len();
    out.reserve(
        2 + (1 + room(authority))
            + (1 + room(path))
            + fields
                .clone()
                .map(|(name, value)| 1 + room(name) + room(value))
                .sum::<usize>(),
    );
    // Static table: 3 `:method POST`, 6/7 `:scheme http`/`https`, 1 `:authority`, 4 `:path`.
    out.put_u8(0x80 | 3);
    out.put_u8(0x80 | if https { 7 } else { 6 });
    // Literal without indexing, name from the static table.
    integer(1, 4, 0, out);
    string(authority, out);
    integer(4, 4, 0, out);
    string(path, out);
    for (name, value) in fields {
        literal(name, value, out);
    }
}

/// What the proxy reads of an upstream's answer block (headers or trailers): the first
/// `:status`, `grpc-status` and `grpc-message`. Nothing else is kept: the proxy's own calls
/// need no more, and building a header map was a few percent of a unary report's cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AnswerFields {
    pub status: Option<u16>,
    /// Present (outer), and a number (inner).
    pub grpc_status: Option<Option<u16>>,
    pub grpc_message: Option<Vec<u8>>,
}

/// Decodes an upstream's answer block into [`AnswerFields`] (the whole block is decoded:
/// the table must follow it).
pub(crate) fn decode_answer(
    decoder: &mut Decoder,
    block: &[u8],
) -> Result<AnswerFields, CompressionError> {
    let number = |value: &[u8]| std::str::from_utf8(value).ok()?.parse::<u16>().ok();
    let mut fields = AnswerFields::default();
    decode(decoder, block, |name, value| match name {
        b":status" if fields.status.is_none() => fields.status = number(value),
        b"grpc-status" if fields.grpc_status.is_none() => {
            fields.grpc_status = Some(number(value));
        }
        b"grpc-message" if fields.grpc_message.is_none() => {
            fields.grpc_message = Some(value.to_vec());
        }
        _ => {}
    })?;
    Ok(fields)
}

/// Encodes header fields (trailers, or a response's regular headers).
pub(crate) fn encode_fields(headers: &HeaderMap, out: &mut BytesMut) {
    for (name, value) in headers {
        if connection_specific(name.as_str().as_bytes(), value.as_bytes()) {
            continue;
        }
        literal(name.as_str().as_bytes(), value.as_bytes(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_fields(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        decode(&mut decoder(), block, |n, v| {
            fields.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ));
        })
        .unwrap();
        fields
    }

    #[test]
    fn responses_decode_back_with_common_and_uncommon_statuses() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("x-long", HeaderValue::from_str(&"v".repeat(300)).unwrap());
        for status in [StatusCode::OK, StatusCode::BAD_GATEWAY] {
            let mut block = BytesMut::new();
            encode_response(status, &headers, &mut block);
            let fields = response_fields(&block);
            assert_eq!(fields[0], (":status".into(), status.as_str().into()));
            assert_eq!(
                fields[1],
                ("content-type".into(), "application/grpc".into())
            );
            assert_eq!(fields[2].1.len(), 300);
        }
    }

    #[test]
    fn the_proxys_requests_decode_as_a_server_reads_them() {
        let mut block = BytesMut::new();
        encode_request(
            true,
            b"oap-0:11800",
            b"/skywalking.v3.TraceSegmentReportService/collect",
            [
                (&b"content-type"[..], &b"application/grpc"[..]),
                (b"te", b"trailers"),
            ]
            .into_iter(),
            &mut block,
        );
        let request = decode_request(&mut decoder(), &block).unwrap().unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(
            request.uri().path(),
            "/skywalking.v3.TraceSegmentReportService/collect"
        );
        assert_eq!(request.headers()["te"], "trailers");
        // And by an independent decoder.
        let fields = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(fields[0], (b":method".to_vec(), b"POST".to_vec()));
        assert_eq!(fields[1], (b":scheme".to_vec(), b"https".to_vec()));
        assert_eq!(fields[2], (b":authority".to_vec(), b"oap-0:11800".to_vec()));
    }

    #[test]
    fn answers_and_trailers_give_their_status_and_message() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut decoder = decoder();
        let block = encoder.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
        ]);
        let fields = decode_answer(&mut decoder, &block).unwrap();
        assert_eq!(fields.status, Some(200));
        assert_eq!(fields.grpc_status, None);
        let block = encoder.encode([
            (&b"grpc-status"[..], &b"3"[..]),
            (b"grpc-message", b"bad%20data"),
            (b"grpc-status", b"0"),
        ]);
        let fields = decode_answer(&mut decoder, &block).unwrap();
        assert_eq!(fields.status, None);
        assert_eq!(fields.grpc_status, Some(Some(3)), "the first one counts");
        assert_eq!(fields.grpc_message.as_deref(), Some(&b"bad%20data"[..]));
        let block = encoder.encode([(&b"grpc-status"[..], &b"x"[..])]);
        let fields = decode_answer(&mut decoder, &block).unwrap();
        assert_eq!(fields.grpc_status, Some(None), "present, not a number");
        assert!(decode_answer(&mut decoder, &[0xff, 0x40]).is_err());
    }

    /// A request block as grpc clients write it: indexed and incrementally indexed fields.
    fn request_block(path: &str) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"oap:11800"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    #[test]
    fn requests_decode_with_the_table_carried_between_blocks() {
        let mut encoder_side = loona_hpack::Encoder::new();
        let mut decoder = decoder();
        for path in ["/skywalking.v3.TraceSegmentReportService/collect"; 2] {
            let block = encoder_side.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b"content-type", b"application/grpc"),
            ]);
            let request = decode_request(&mut decoder, &block).unwrap().unwrap();
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.uri().path(), path);
            assert_eq!(request.headers()["content-type"], "application/grpc");
        }
        let request = decode_request(&mut decoder, &request_block("/a/b?x=1"))
            .unwrap()
            .unwrap();
        assert_eq!(request.uri().path_and_query().unwrap(), "/a/b?x=1");
    }

    #[test]
    fn malformed_requests_are_stream_errors_and_garbage_is_a_connection_error() {
        let mut encoder = loona_hpack::Encoder::new();
        let missing_path = encoder.encode([(&b":method"[..], &b"POST"[..]), (b":scheme", b"http")]);
        assert!(
            decode_request(&mut decoder(), &missing_path)
                .unwrap()
                .is_err()
        );
        let late_pseudo = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b"x", b"y"),
            (b":path", b"/"),
        ]);
        assert!(
            decode_request(&mut decoder(), &late_pseudo)
                .unwrap()
                .is_err()
        );
        let connection = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"connection", b"close"),
        ]);
        assert!(
            decode_request(&mut decoder(), &connection)
                .unwrap()
                .is_err()
        );
        // Index 127 does not exist in an empty table.
        assert!(decode_request(&mut decoder(), &[0xff, 0x40]).is_err());
    }
}
