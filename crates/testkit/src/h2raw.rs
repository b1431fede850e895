//! HTTP/2 as a hostile or conformance-testing client writes it by hand (RFC 9113 §4.1 frame
//! layout, RFC 7541 literals): frames built byte by byte, header blocks of literals without
//! indexing (so no table state has to be kept in step), and frames taken back out of what
//! the server sent. Used by the proxy's raw-frame tests and `skylift-h2-abuse`.

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a prefix of `bits` (RFC 7541 §5.1), its first byte or-ed with
/// `first`.
pub fn integer(value: usize, bits: u8, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A field as a literal without indexing, new name (RFC 7541 §6.2.2).
pub fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0);
    integer(name.len(), 7, 0, out);
    out.extend_from_slice(name.as_bytes());
    integer(value.len(), 7, 0, out);
    out.extend_from_slice(value.as_bytes());
}

/// A header block of literals without indexing.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(name, value, &mut out);
    }
    out
}

/// The header block of a gRPC call to `path`: the pseudo-headers and content-type.
pub fn grpc_request(path: &str) -> Vec<u8> {
    block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        ("content-type", "application/grpc"),
    ])
}

/// A frame read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Takes the first frame out of `buffer` once it is whole.
pub fn take_frame(buffer: &mut Vec<u8>) -> Option<Frame> {
    if buffer.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
    if buffer.len() < 9 + len {
        return None;
    }
    let frame = Frame {
        kind: buffer[3],
        flags: buffer[4],
        // The reserved bit is ignored on receipt.
        stream: u32::from_be_bytes([buffer[5], buffer[6], buffer[7], buffer[8]]) & 0x7fff_ffff,
        payload: buffer[9..9 + len].to_vec(),
    };
    buffer.drain(..9 + len);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written_and_integers_continue_past_their_prefix() {
        let mut buffer = frame(0x1, 0x5, 3, b"abc");
        buffer.extend(frame(0x0, 0, 3, b"d")[..5].to_vec());
        assert_eq!(
            take_frame(&mut buffer),
            Some(Frame {
                kind: 0x1,
                flags: 0x5,
                stream: 3,
                payload: b"abc".to_vec()
            })
        );
        assert_eq!(take_frame(&mut buffer), None, "the second is not whole");
        let mut out = Vec::new();
        integer(4000, 7, 0, &mut out);
        assert_eq!(out, [0x7f, 0x80 | 33, 30]);
    }
}
