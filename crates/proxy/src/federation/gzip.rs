//! gRPC's `gzip` message encoding (RFC 1952 around raw deflate), for the federation
//! upstream's WAN link. gRPC compresses each message on its own and flags it in the
//! message's 5-byte header; a stream marked `grpc-encoding: gzip` may still carry messages
//! flagged uncompressed, which is how small messages, that gzip would only make larger,
//! are sent.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

/// Messages smaller than this are sent as they are: gzip's 18 bytes of header and trailer
/// and deflate's block overhead outweigh what it saves on them.
pub const MIN_COMPRESSED_BYTES: usize = 256;

thread_local! {
    // A gzip stream (header, deflate, CRC and length trailer written by zlib-rs), made
    // once per thread and reset per message: making one allocates its window and tables.
    static GZIP: RefCell<Compress> = RefCell::new(Compress::new_gzip(Compression::fast(), 15));
}

/// The gRPC frame (flag 1, length, gzip member) of `message`, or `None` when compressing
/// does not make it smaller.
pub fn frame(message: &[u8]) -> Option<Bytes> {
    if message.len() < MIN_COMPRESSED_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(5 + message.len() / 2 + 64);
    out.extend_from_slice(&[1, 0, 0, 0, 0]); // the length, once known
    GZIP.with(|gzip| {
        let mut gzip = gzip.borrow_mut();
        gzip.reset();
        let mut input = message;
        loop {
            // compress_vec writes into the spare capacity only.
            if out.capacity() - out.len() < 64 {
                out.reserve(out.len().max(256));
            }
            let before = gzip.total_in();
            let status = gzip
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .expect("gzip of an in-memory buffer cannot fail");
            input = &input[usize::try_from(gzip.total_in() - before).unwrap_or(0)..];
            if status == Status::StreamEnd {
                break;
            }
        }
    });
    let length = out.len() - 5;
    if length >= message.len() {
        return None;
    }
    out[1..5].copy_from_slice(&(length as u32).to_be_bytes());
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn gunzip(framed: &[u8]) -> Vec<u8> {
        assert_eq!(framed[0], 1, "flagged compressed");
        let length = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, framed.len() - 5);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&framed[5..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_compressible_message_reads_back_as_any_gzip_reader_reads_it() {
        for size in [256, 4096, 300_000] {
            let message: Vec<u8> = (0..size).map(|i| (i % 61) as u8).collect();
            let framed = frame(&message).expect("repetitive data compresses");
            assert!(framed.len() < message.len() / 2, "{size}: {}", framed.len());
            assert_eq!(gunzip(&framed), message);
            // The deflate state is reused: the next message is not tied to this one.
            let other: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            assert_eq!(gunzip(&frame(&other).unwrap()), other);
        }
    }

    #[test]
    fn small_or_incompressible_messages_are_left_as_they_are() {
        assert_eq!(frame(&[7u8; 100]), None);
        // Random bytes do not shrink.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..2048)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(frame(&noise), None);
    }
}
