//! The one message of a buffered unary call, decoded: its 5-byte header read, and its
//! bytes gunzipped when the client compressed it (`grpc-encoding: gzip`, flag 1). The
//! decoded size is held to the proxy's message limit as it is inflated, so a small gzip
//! bomb costs no more memory than a plain message of the limit.

use std::io::Read;

use bytes::Bytes;

/// What a buffered request body holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The message, uncompressed.
    Message(Bytes),
    /// Its decoded size is over the limit.
    TooLarge,
    /// Not one message the proxy can read, and why (`framing`: not exactly one whole
    /// message; `encoding`: compressed other than with gzip; `corrupt`: a compressed
    /// message that does not inflate).
    Unreadable(&'static str),
}

/// The message of `body` (a whole unary request), with `encoding` its `grpc-encoding`.
pub fn single(body: &Bytes, encoding: Option<&str>, max_bytes: usize) -> Decoded {
    let Some(header) = body.get(..5) else {
        return Decoded::Unreadable("framing");
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if body.len() - 5 != length {
        return Decoded::Unreadable("framing");
    }
    let message = body.slice(5..);
    match header[0] {
        0 if message.len() > max_bytes => Decoded::TooLarge,
        0 => Decoded::Message(message),
        1 => match encoding {
            Some("gzip") => gunzip(&message, max_bytes),
            // Flag 1 without an encoding is malformed (grpc-go: "compressed flag set with
            // identity or empty encoding"); the upstream says so to the client.
            None | Some("identity") => Decoded::Unreadable("framing"),
            Some(_) => Decoded::Unreadable("encoding"),
        },
        _ => Decoded::Unreadable("framing"),
    }
}

/// `compressed` (a gzip member) inflated, within `max_bytes`.
pub fn gunzip(compressed: &[u8], max_bytes: usize) -> Decoded {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(max_bytes + 1));
    let reader = flate2::read::GzDecoder::new(compressed);
    // One byte past the limit tells "at the limit" from "over it".
    match reader.take(max_bytes as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > max_bytes => Decoded::TooLarge,
        Ok(_) => Decoded::Message(Bytes::from(out)),
        Err(_) => Decoded::Unreadable("corrupt"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::grpc::framing::frame;

    fn gzipped(message: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(message).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut framed = vec![1];
        framed.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        framed.extend_from_slice(&compressed);
        Bytes::from(framed)
    }

    #[test]
    fn a_plain_message_reads_back_and_is_held_to_the_limit() {
        let body = frame(b"spans");
        assert_eq!(
            single(&body, None, 100),
            Decoded::Message(Bytes::from_static(b"spans"))
        );
        assert_eq!(
            single(&body, Some("gzip"), 100),
            Decoded::Message("spans".into())
        );
        assert_eq!(single(&body, None, 4), Decoded::TooLarge);
        assert_eq!(single(&frame(b""), None, 4), Decoded::Message(Bytes::new()));
    }

    #[test]
    fn a_gzip_message_is_inflated_within_the_limit() {
        let message = vec![b'x'; 10_000];
        let body = gzipped(&message);
        assert!(
            body.len() < 200,
            "a bomb in miniature: {} bytes",
            body.len()
        );
        assert_eq!(
            single(&body, Some("gzip"), 10_000),
            Decoded::Message(Bytes::from(message))
        );
        assert_eq!(single(&body, Some("gzip"), 9_999), Decoded::TooLarge);
    }

    #[test]
    fn what_cannot_be_read_says_why() {
        let two = [frame(b"a"), frame(b"b")].concat();
        assert_eq!(
            single(&two.into(), None, 100),
            Decoded::Unreadable("framing")
        );
        let truncated = frame(b"spans").slice(..7);
        assert_eq!(
            single(&truncated, None, 100),
            Decoded::Unreadable("framing")
        );
        assert_eq!(
            single(&Bytes::new(), None, 100),
            Decoded::Unreadable("framing")
        );
        let body = gzipped(b"spans");
        assert_eq!(single(&body, None, 100), Decoded::Unreadable("framing"));
        assert_eq!(
            single(&body, Some("zstd"), 100),
            Decoded::Unreadable("encoding")
        );
        let mut corrupt = body.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff; // the length in gzip's trailer
        assert_eq!(
            single(&corrupt.into(), Some("gzip"), 100),
            Decoded::Unreadable("corrupt")
        );
        let flagged = [&[2u8, 0, 0, 0, 1][..], b"x"].concat();
        assert_eq!(
            single(&flagged.into(), None, 100),
            Decoded::Unreadable("framing")
        );
    }
}
