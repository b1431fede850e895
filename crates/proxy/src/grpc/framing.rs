//! gRPC's length-prefixed message framing: a 1-byte compressed flag, a 4-byte big-endian
//! length, then the message. Reports are forwarded as these frames without decoding the
//! protobuf inside.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the frame header.
pub(crate) const HEADER_LEN: usize = 5;

/// One gRPC message, still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message is compressed with the stream's `grpc-encoding`.
    pub compressed: bool,
    /// The frame as received: header and message.
    pub framed: Bytes,
}

impl Frame {
    /// The message, read in place: most are only looked at, and a handle of its own
    /// (`Bytes`) would cost two more atomic updates of the read buffer's count each,
    /// on a count the senders update too.
    pub fn message(&self) -> &[u8] {
        &self.framed[HEADER_LEN..]
    }
}

/// Why a stream's framing cannot be read. Each maps to the gRPC status a client gets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
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
    pub(crate) fn grpc_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => 8, // RESOURCE_EXHAUSTED
            FrameError::BadFlag(_) | FrameError::Truncated { .. } => 13, // INTERNAL
        }
    }
}

/// Splits a byte stream into frames as data arrives. Whole messages inside a received
/// chunk are sliced out of it without copying; only a message split across chunks is
/// gathered in a buffer, and only its own bytes are copied there.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// The start of a frame that continues in later chunks (empty when none).
    buffer: BytesMut,
    /// The received chunk not yet looked at; it follows the buffer's bytes.
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

    /// Bytes received and not yet taken out as whole frames.
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len() + self.chunk.len()
    }

    /// Adds received bytes.
    #[cfg(test)]
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.push_bytes(Bytes::copy_from_slice(data));
    }

    /// Adds a received chunk, keeping it shared (no copy) while whole messages are in it.
    pub(crate) fn push_bytes(&mut self, data: Bytes) {
        if !self.chunk.is_empty() {
            // The rest of the previous chunk is the start of a frame: it is gathered.
            self.move_to_buffer(self.chunk.len());
        }
        self.chunk = data;
    }

    /// Moves the first `n` bytes of the chunk to the end of the buffer.
    fn move_to_buffer(&mut self, n: usize) {
        let n = n.min(self.chunk.len());
        let needed = self.buffer.len() + n;
        if needed > self.buffer.capacity() {
            // Grown by a quarter rather than doubled: a message arriving in pieces holds
            // at most a quarter more than it received (doubling could hold twice, and
            // what a connection holds is bounded by what it received), while copying a
            // large message only a few times over.
            let mut grown = BytesMut::with_capacity(needed.max(self.buffer.len() * 5 / 4));
            grown.extend_from_slice(&self.buffer);
            self.buffer = grown;
        }
        self.buffer.extend_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        if self.chunk.is_empty() {
            // An empty slice still keeps its whole read buffer alive.
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
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if !self.buffer.is_empty() {
            return self.complete_buffered();
        }
        match self.header(&self.chunk)? {
            Some((compressed, size)) if self.chunk.len() >= HEADER_LEN + size => {
                let framed = self.chunk.split_to(HEADER_LEN + size);
                Ok(Some(Frame { compressed, framed }))
            }
            // A frame continues in the next chunk: its start is gathered.
            _ => {
                if !self.chunk.is_empty() {
                    // Only what arrived is kept: the announced size is a claim, and a
                    // client that announces 4 MiB and sends 1 KiB holds 1 KiB. The buffer
                    // grows by doubling as the rest arrives.
                    self.move_to_buffer(self.chunk.len());
                    self.header(&self.buffer)?;
                }
                Ok(None)
            }
        }
    }

    /// Completes the buffered frame with exactly the bytes it lacks from the chunk.
    fn complete_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < HEADER_LEN {
            self.move_to_buffer(HEADER_LEN - self.buffer.len());
        }
        let Some((compressed, size)) = self.header(&self.buffer)? else {
            return Ok(None);
        };
        let missing = HEADER_LEN + size - self.buffer.len();
        if missing > 0 {
            self.move_to_buffer(missing);
        }
        if self.buffer.len() < HEADER_LEN + size {
            return Ok(None);
        }
        let framed = self.buffer.split_to(HEADER_LEN + size).freeze();
        Ok(Some(Frame { compressed, framed }))
    }

    /// At the end of the stream: an error if a frame was left incomplete.
    pub fn finish(&self) -> Result<(), FrameError> {
        let mut rest = self.buffer.to_vec();
        rest.extend_from_slice(&self.chunk);
        match rest.len() {
            0 => Ok(()),
            n if n < HEADER_LEN => Err(FrameError::Truncated {
                missing: HEADER_LEN - n,
            }),
            n => {
                let size = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                Err(FrameError::Truncated {
                    missing: (HEADER_LEN + size).saturating_sub(n),
                })
            }
        }
    }
}

/// One uncompressed message as a frame of its own.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + message.len());
    encode(false, message, &mut out);
    out.freeze()
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
            let mut framed_again = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    // The frame as received is kept whole, header included.
                    framed_again.extend_from_slice(&frame.framed);
                    got.push(Bytes::copy_from_slice(frame.message()));
                }
            }
            decoder.finish().unwrap();
            assert_eq!(framed_again, wire, "chunks of {chunk}");
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
            one.message().as_ptr(),
            wire[5..].as_ptr(),
            "sliced, not copied"
        );
        assert_eq!(two.message(), b"two");
        decoder.push_bytes(wire.slice(20..));
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().message(),
            b"three-part"
        );
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.finish().unwrap();
    }

    #[test]
    fn after_a_split_message_the_next_chunk_is_sliced_again() {
        let wire = Bytes::from(framed(&[b"split-message", b"after", b"last"]));
        let mut decoder = Decoder::new(1024);
        decoder.push_bytes(wire.slice(..9));
        assert_eq!(decoder.next_frame().unwrap(), None);
        decoder.push_bytes(wire.slice(9..));
        let split = decoder.next_frame().unwrap().unwrap();
        assert_eq!(split.message(), b"split-message");
        let after = decoder.next_frame().unwrap().unwrap();
        assert_eq!(
            after.message().as_ptr(),
            wire[23..].as_ptr(),
            "sliced, not copied"
        );
        assert_eq!(decoder.next_frame().unwrap().unwrap().message(), b"last");
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
