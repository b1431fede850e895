//! gRPC's length-prefixed message framing: a 1-byte compressed flag, a 4-byte big-endian
//! length, then the message. Reports are forwarded as these frames without decoding the
//! protobuf inside.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 5;

/// One gRPC message, still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message is compressed with the stream's `grpc-encoding`.
    pub compressed: bool,
    pub message: Bytes,
}

/// Why a stream's framing cannot be read. Each maps to the gRPC status a client gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `RESOURCE_EXHAUSTED`: detected from the header, before the body is buffered.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// `INTERNAL`: the compressed flag must be 0 or 1.
    #[error("invalid compressed flag {0} (must be 0 or 1)")]
    BadFlag(u8),
    /// `INTERNAL`: the stream ended inside a frame.
    #[error("stream ended {missing} bytes short of a complete message")]
    Truncated { missing: usize },
}

impl FrameError {
    /// The gRPC status code (numeric) a client is answered with.
    pub fn grpc_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => 8, // RESOURCE_EXHAUSTED
            FrameError::BadFlag(_) | FrameError::Truncated { .. } => 13, // INTERNAL
        }
    }
}

/// Splits a byte stream into frames as data arrives. Whole messages inside a received
/// chunk are sliced out of it without copying; only a message split across chunks is
/// gathered in a buffer.
#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    /// The received chunk not yet looked at, when the buffer is empty.
    chunk: Bytes,
    limit: usize,
}

impl Decoder {
    /// `limit`: the largest message accepted (`--max-message-bytes`).
    pub fn new(limit: usize) -> Self {
        Decoder {
            buffer: BytesMut::new(),
            chunk: Bytes::new(),
            limit,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.push_bytes(Bytes::copy_from_slice(data));
    }

    /// Adds a received chunk, keeping it shared (no copy) while whole messages are in it.
    pub fn push_bytes(&mut self, data: Bytes) {
        if self.buffer.is_empty() && self.chunk.is_empty() {
            self.chunk = data;
        } else {
            self.gather();
            self.buffer.extend_from_slice(&data);
        }
    }

    /// Moves the unread part of the current chunk into the buffer.
    fn gather(&mut self) {
        if !self.chunk.is_empty() {
            self.buffer.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
    }

    /// The header of the next frame in `bytes`: (compressed flag, size), checked.
    fn header(&self, bytes: &[u8]) -> Result<Option<(bool, usize)>, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Ok(None);
        }
        let flag = bytes[0];
        if flag > 1 {
            return Err(FrameError::BadFlag(flag));
        }
        let size = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(Some((flag == 1, size)))
    }

    /// The next complete frame, `None` until one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.is_empty() && !self.chunk.is_empty() {
            match self.header(&self.chunk)? {
                Some((compressed, size)) if self.chunk.len() >= HEADER_LEN + size => {
                    let message = self.chunk.slice(HEADER_LEN..HEADER_LEN + size);
                    self.chunk.advance(HEADER_LEN + size);
                    return Ok(Some(Frame {
                        compressed,
                        message,
                    }));
                }
                // A message continues in the next chunk: gather it.
                _ => self.gather(),
            }
        }
        let Some((compressed, size)) = self.header(&self.buffer)? else {
            return Ok(None);
        };
        if self.buffer.len() < HEADER_LEN + size {
            // Reserve once, so a large message is not reallocated per chunk.
            self.buffer.reserve(HEADER_LEN + size - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(HEADER_LEN);
        let message = self.buffer.split_to(size).freeze();
        Ok(Some(Frame {
            compressed,
            message,
        }))
    }

    /// At the end of the stream: an error if a frame was left incomplete.
    pub fn finish(&self) -> Result<(), FrameError> {
        let rest: &[u8] = if self.buffer.is_empty() {
            &self.chunk
        } else {
            &self.buffer
        };
        match rest.len() {
            0 => Ok(()),
            n if n < HEADER_LEN => Err(FrameError::Truncated {
                missing: HEADER_LEN - n,
            }),
            n => {
                let size = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                Err(FrameError::Truncated {
                    missing: HEADER_LEN + size - n,
                })
            }
        }
    }
}

/// Appends `message` as one frame.
pub fn encode(compressed: bool, message: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + message.len());
    out.put_u8(u8::from(compressed));
    out.put_u32(u32::try_from(message.len()).expect("gRPC messages are below 4 GiB"));
    out.put_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in messages {
            encode(false, m, &mut out);
        }
        out.to_vec()
    }

    #[test]
    fn frames_split_across_any_chunking_are_reassembled() {
        let wire = framed(&[b"first", b"", b"third message"]);
        for chunk in 1..wire.len() {
            let mut decoder = Decoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame.message);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(
                got,
                vec![
                    Bytes::from_static(b"first"),
                    Bytes::new(),
                    Bytes::from_static(b"third message")
                ]
            );
        }
    }

    #[test]
    fn whole_messages_are_sliced_from_the_received_chunk_without_copying() {
        let wire = Bytes::from(framed(&[b"one", b"two", b"three-part"]));
        let mut decoder = Decoder::new(1024);
        // The first chunk ends inside the third message.
        decoder.push_bytes(wire.slice(..20));
        let one = decoder.next_frame().unwrap().unwrap();
        let two = decoder.next_frame().unwrap().unwrap();
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(
            one.message.as_ptr(),
            wire[5..].as_ptr(),
            "sliced, not copied"
        );
        assert_eq!(two.message, Bytes::from_static(b"two"));
        decoder.push_bytes(wire.slice(20..));
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().message,
            Bytes::from_static(b"three-part")
        );
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.finish().unwrap();
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header_alone() {
        let mut decoder = Decoder::new(10);
        decoder.push(&[0, 0, 0, 0, 11]);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                size: 11,
                limit: 10
            }
        );
        assert_eq!(err.grpc_code(), 8);
    }

    #[test]
    fn bad_flags_and_truncation_are_internal_errors() {
        let mut decoder = Decoder::new(10);
        decoder.push(&[7, 0, 0, 0, 1, b'x']);
        assert_eq!(decoder.next_frame().unwrap_err(), FrameError::BadFlag(7));

        let mut decoder = Decoder::new(10);
        decoder.push(&[0, 0, 0, 0, 4, b'a']);
        assert_eq!(decoder.next_frame().unwrap(), None);
        let err = decoder.finish().unwrap_err();
        assert_eq!(err, FrameError::Truncated { missing: 3 });
        assert_eq!(err.grpc_code(), 13);
    }
}
