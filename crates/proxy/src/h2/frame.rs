//! HTTP/2 frames (RFC 9113 §4, §6): reading the 9-byte header and writing the frames a
//! server sends. Pure: everything writes into a caller's buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// The client connection preface every HTTP/2 connection starts with.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub(crate) const HEADER_LEN: usize = 9;
/// The frame size every peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
pub(crate) const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest flow-control window.
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The window every stream and the connection start with.
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

pub mod setting {
    // Every SETTINGS id is named; the proxy keeps HPACK's default table, so it never
    // reads this one.
    #[allow(dead_code)]
    pub(crate) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(crate) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// HTTP/2 error codes (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Reads a header from the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Head {
        Head {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A frame's 9-byte header; its payload is written after it (or, for the upstream client's
/// DATA, handed to the socket from the buffers it is in).
pub(crate) fn head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut BytesMut) {
    debug_assert!(len < 1 << 24);
    let len = u32::try_from(len).expect("frame lengths fit 24 bits");
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

pub fn settings(values: &[(u16, u32)], out: &mut BytesMut) {
    head(values.len() * 6, kind::SETTINGS, 0, 0, out);
    for (id, value) in values {
        out.put_u16(*id);
        out.put_u32(*value);
    }
}

pub(crate) fn settings_ack(out: &mut BytesMut) {
    head(0, kind::SETTINGS, flag::ACK, 0, out);
}

pub fn ping(payload: [u8; 8], ack: bool, out: &mut BytesMut) {
    head(8, kind::PING, if ack { flag::ACK } else { 0 }, 0, out);
    out.put_slice(&payload);
}

pub fn window_update(stream: u32, increment: u32, out: &mut BytesMut) {
    head(4, kind::WINDOW_UPDATE, 0, stream, out);
    out.put_u32(increment);
}

pub(crate) fn rst_stream(stream: u32, reason: Reason, out: &mut BytesMut) {
    head(4, kind::RST_STREAM, 0, stream, out);
    out.put_u32(reason as u32);
}

pub fn goaway(last_stream: u32, reason: Reason, debug: &[u8], out: &mut BytesMut) {
    head(8 + debug.len(), kind::GOAWAY, 0, 0, out);
    out.put_u32(last_stream);
    out.put_u32(reason as u32);
    out.put_slice(debug);
}

/// A header block as HEADERS and, beyond `max_frame` bytes, CONTINUATION frames.
pub fn headers(stream: u32, block: &[u8], end_stream: bool, max_frame: usize, out: &mut BytesMut) {
    let end = if end_stream { flag::END_STREAM } else { 0 };
    let mut chunks = block.chunks(max_frame).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    head(
        first.len(),
        kind::HEADERS,
        end | if last { flag::END_HEADERS } else { 0 },
        stream,
        out,
    );
    out.put_slice(first);
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        head(
            chunk.len(),
            kind::CONTINUATION,
            if last { flag::END_HEADERS } else { 0 },
            stream,
            out,
        );
        out.put_slice(chunk);
    }
}

/// One DATA frame; `payload` must fit the peer's frame size.
pub fn data(stream: u32, payload: &[u8], end_stream: bool, out: &mut BytesMut) {
    head(
        payload.len(),
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream,
        out,
    );
    out.put_slice(payload);
}

/// The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, without
/// the priority fields). `None` when the padding is longer than the frame.
pub(crate) fn unpadded(head: &Head, mut payload: Bytes) -> Option<Bytes> {
    let mut pad = 0;
    if head.has(flag::PADDED) {
        pad = usize::from(*payload.first()?);
        payload = payload.slice(1..);
    }
    if head.kind == kind::HEADERS && head.has(flag::PRIORITY) {
        if payload.len() < 5 {
            return None;
        }
        payload = payload.slice(5..);
    }
    let len = payload.len().checked_sub(pad)?;
    Some(payload.slice(..len))
}

/// The settings in a SETTINGS payload, as (identifier, value); `None` when it is not a
/// whole number of settings.
pub(crate) fn parse_settings(payload: &[u8]) -> Option<Vec<(u16, u32)>> {
    if !payload.len().is_multiple_of(6) {
        return None;
    }
    Some(
        payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_written_with_the_reserved_bit_ignored() {
        let mut out = BytesMut::new();
        data(0x7fff_ffff, b"abc", true, &mut out);
        let head = Head::parse(&out);
        assert_eq!(head.len, 3);
        assert_eq!(head.kind, kind::DATA);
        assert!(head.has(flag::END_STREAM));
        assert_eq!(head.stream, 0x7fff_ffff);
        out[5] |= 0x80;
        assert_eq!(Head::parse(&out).stream, 0x7fff_ffff);
    }

    #[test]
    fn a_large_header_block_continues_in_continuation_frames() {
        let block = vec![7u8; 40_000];
        let mut out = BytesMut::new();
        headers(3, &block, true, DEFAULT_MAX_FRAME, &mut out);
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let head = Head::parse(rest);
            frames.push(head);
            rest = &rest[HEADER_LEN + head.len..];
        }
        let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.flags, f.len)).collect();
        assert_eq!(
            kinds,
            [
                (kind::HEADERS, flag::END_STREAM, 16_384),
                (kind::CONTINUATION, 0, 16_384),
                (kind::CONTINUATION, flag::END_HEADERS, 7_232),
            ]
        );
    }

    #[test]
    fn padding_and_priority_are_stripped_and_overlong_padding_is_caught() {
        let head = Head {
            len: 0,
            kind: kind::HEADERS,
            flags: flag::PADDED | flag::PRIORITY,
            stream: 1,
        };
        let payload = Bytes::from_static(&[2, 0, 0, 0, 0, 16, b'h', b'i', 0, 0]);
        assert_eq!(unpadded(&head, payload).unwrap(), &b"hi"[..]);
        let data_head = Head {
            kind: kind::DATA,
            flags: flag::PADDED,
            ..head
        };
        assert_eq!(unpadded(&data_head, Bytes::from_static(&[5, 1, 2])), None);
    }

    #[test]
    fn settings_are_read_in_sixes() {
        let mut out = BytesMut::new();
        settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 20), (9, 1)], &mut out);
        assert_eq!(
            parse_settings(&out[HEADER_LEN..]).unwrap(),
            [(setting::INITIAL_WINDOW_SIZE, 1 << 20), (9, 1)]
        );
        assert_eq!(parse_settings(&[0; 7]), None);
    }
}
