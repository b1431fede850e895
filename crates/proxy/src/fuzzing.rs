//! What the fuzz targets (`fuzz/`, run by `hack/fuzz.sh`) check on arbitrary input, kept
//! here so that the inputs they once failed on (`fuzz/regressions/<target>/`) are checked
//! by the same code in every test run. Each function panics when a property fails.

use bytes::{BufMut, Bytes, BytesMut};

use crate::grpc::framing::Decoder;
use crate::grpc::message::{self, Decoded};
use crate::grpc::otlp;
use crate::grpc::protocol::Shape;
use crate::grpc::wire;
use crate::h2::headers;
use crate::h2::session::{self, Event, Outgoing, Session, Settings};
use crate::ingest::reshape::{Carried, MeterSet};
use crate::queue::journal::record;

/// The gRPC framing decoder, fed `input` in chunks of `chunk` bytes with a message limit
/// of `limit`: it never panics, and the messages it returns are the input's frames, in
/// order, each within the limit.
pub fn grpc_framing(data: &[u8]) {
    let (chunk, limit, input) = match data {
        [c, l, rest @ ..] => (usize::from(*c % 64) + 1, usize::from(*l) * 16, rest),
        _ => return,
    };
    let mut decoder = Decoder::new(limit);
    let mut rebuilt = BytesMut::new();
    let mut failed = false;
    'input: for piece in input.chunks(chunk) {
        decoder.push_bytes(Bytes::copy_from_slice(piece));
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.message().len() <= limit, "a message above the limit");
                    rebuilt.put_slice(&frame.framed);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'input;
                }
            }
        }
    }
    if !failed && decoder.finish().is_ok() {
        assert_eq!(
            &rebuilt[..],
            input,
            "every byte belongs to a returned frame"
        );
    } else {
        assert!(
            input.starts_with(&rebuilt),
            "frames come from the input, in order"
        );
    }
}

/// The protobuf fields read for routing keys and spliced when streams are reshaped:
/// errors on bad input, never panics.
pub fn routing_key(data: &[u8]) {
    let _ = wire::meter_key(data);
    let _ = wire::meter_batch_key(data);
    let _ = wire::meter_set_header(data);
    let mut set = MeterSet::new(4096);
    let mut carriers: Vec<Carried> = [
        Shape::FirstService,
        Shape::FirstIdentifier,
        Shape::Latest {
            metadata: 1,
            context: Some(2),
        },
    ]
    .into_iter()
    .filter_map(Carried::for_shape)
    .collect();
    for message in data.split(|b| *b == 0xff) {
        let _ = set.add(message);
        for carried in &mut carriers {
            let _ = carried.message(Bytes::copy_from_slice(message));
        }
    }
    let _ = set.finish();
}

/// Request header blocks (split at 0xfe) decoded in sequence on one HPACK decoder, as on
/// a connection: a request, a malformed-request answer or a compression error.
pub fn request_headers(data: &[u8]) {
    let mut decoder = headers::decoder();
    for block in data.split(|b| *b == 0xfe) {
        if headers::decode_request(&mut decoder, block).is_err() {
            // A compression error ends the connection: the decoder is not used again.
            break;
        }
    }
}

/// A journal segment read back: good records and a damage count, never a panic; every
/// record reported good encodes to bytes that read back as itself.
pub fn journal_records(data: &[u8]) {
    let scan = record::scan(&Bytes::copy_from_slice(data));
    assert!(scan.good_len <= data.len());
    for found in scan.records {
        let mut again = Vec::new();
        found.parts().encode(found.seq, &mut again);
        assert_eq!(record::scan(&Bytes::from(again)).records, vec![found]);
    }
}

/// A property checked on arbitrary input.
pub type Check = fn(&[u8]);

/// The targets by name, as `fuzz/` and `fuzz/regressions/` name them.
pub const TARGETS: [(&str, Check); 6] = [
    ("h2_session", h2_session),
    ("grpc_framing", grpc_framing),
    ("routing_key", routing_key),
    ("request_headers", request_headers),
    ("journal_records", journal_records),
    ("otlp_split", otlp_split),
];

/// OTLP exports taken apart for affinity (`--otlp-affinity`), and the buffered message
/// read before it: never a panic; a trace export that splits is in its parts whole, every
/// span once, each part a framed export whose spans all belong to its target; metrics and
/// logs split or fail without panicking; a gzip message inflates within its limit.
pub fn otlp_split(data: &[u8]) {
    let (targets, input) = match data {
        [t, rest @ ..] => (usize::from(*t % 8) + 1, rest),
        _ => return,
    };
    let target = |id: &[u8]| id.first().map_or(0, |b| usize::from(*b) % targets);
    let spans_of = |request: &[u8]| -> Option<Vec<Vec<u8>>> {
        let mut spans = Vec::new();
        for resource in wire::values_of(request, 1).ok()? {
            for scope in wire::values_of(resource, 2).ok()? {
                for span in wire::values_of(scope, 2).ok()? {
                    spans.push(span.to_vec());
                }
            }
        }
        Some(spans)
    };
    if let Ok(parts) = otlp::split_traces(input, target) {
        let mut all = Vec::new();
        for part in &parts {
            let length = u32::from_be_bytes([
                part.framed[1],
                part.framed[2],
                part.framed[3],
                part.framed[4],
            ]);
            assert_eq!(part.framed.len(), 5 + length as usize, "framed whole");
            let spans = spans_of(&part.request()).expect("a part is a well-formed export");
            assert_eq!(spans.len() as u64, part.items);
            for span in &spans {
                let trace_id = wire::last_value(span, 1).unwrap().unwrap_or_default();
                assert_eq!(target(trace_id), part.target, "a span in its trace's part");
            }
            all.extend(spans);
        }
        let mut expected = spans_of(input).expect("what splits parses");
        expected.sort();
        all.sort();
        assert_eq!(all, expected, "every span once");
    }
    let _ = otlp::split_logs(input, target);
    let _ = otlp::split_metrics(input, "service.name", |value| {
        value.map_or(0, |v| v.len() % targets)
    });
    let limit = usize::from(data[0]) * 64;
    if let Decoded::Message(message) =
        message::single(&Bytes::copy_from_slice(input), Some("gzip"), limit)
    {
        assert!(message.len() <= limit, "inflated within the limit");
    }
}

/// The HTTP/2 session, fed a client's bytes (after a valid preface and SETTINGS, so the
/// frames reach the state machine) in chunks, with an application that answers, consumes
/// or resets streams as the input's first byte says. Whatever the frames: no panic; at
/// most the connection's budget is held; streams stay within the advertised limit; every
/// opened stream closes once and no event names a stream after it closed; output stays
/// bounded.
pub fn h2_session(data: &[u8]) {
    use std::collections::HashSet;
    let (mode, chunk, frames) = match data {
        [m, c, rest @ ..] => (*m, usize::from(*c % 32) * 64 + 1, rest),
        _ => return,
    };
    let settings = Settings {
        max_concurrent_streams: 4,
        stream_window: 4096,
        connection_window: 16_384,
    };
    let budget = u64::from(settings.connection_window);
    let mut session = Session::new(settings);
    let mut input = crate::h2::frame::PREFACE.to_vec();
    input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    input.extend_from_slice(frames);
    let mut open = HashSet::new();
    let mut closed = HashSet::new();
    let now = std::time::Instant::now();
    for piece in input.chunks(chunk) {
        session.input().extend_from_slice(piece);
        loop {
            let event = match session.poll_event(now) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) => return,
            };
            match event {
                Event::Open { stream, .. } => {
                    assert!(open.insert(stream), "stream {stream} opened twice");
                    assert!(!closed.contains(&stream), "stream {stream} reopened");
                    if mode & 1 != 0 {
                        session.send(
                            stream,
                            Outgoing::Headers {
                                block: Bytes::from_static(&[0x88]),
                                end: mode & 2 != 0,
                            },
                        );
                    }
                }
                Event::Data { stream, data, .. } => {
                    assert!(open.contains(&stream), "data on stream {stream}, not open");
                    if mode & 4 != 0 {
                        let n = u32::try_from(data.len()).expect("frames are small");
                        session.consumed(stream, n);
                    }
                    if mode & 8 != 0 {
                        session.send(
                            stream,
                            Outgoing::Data {
                                data: data.clone(),
                                end: false,
                                credit: 0,
                            },
                        );
                    }
                }
                Event::Trailers { stream, .. } => {
                    assert!(
                        open.contains(&stream),
                        "trailers on stream {stream}, not open"
                    );
                    if mode & 16 != 0 {
                        session.reset(stream, crate::h2::frame::Reason::Cancel);
                    }
                }
                Event::Closed { stream } => {
                    assert!(open.remove(&stream), "stream {stream} closed, not open");
                    closed.insert(stream);
                }
            }
            assert!(session.held() <= budget, "more than the budget held");
            assert!(session.stream_count() <= 4, "more streams than advertised");
        }
        assert!(
            session.output().len() <= session::MAX_OUTPUT + 64 * 1024,
            "output unbounded"
        );
        if mode & 32 != 0 {
            session.output().clear();
        }
        session.compact();
    }
}
