//! An h2spec-style conformance suite: raw HTTP/2 frames against a running proxy, one
//! connection per case, each case named by the RFC 9113 section it checks (h2spec's case
//! list is the outline), plus gRPC's request rules and the abuse limits. Every case runs
//! and the failures are reported together, as h2spec does.

mod support;

use std::time::Duration;

use skylift_testkit::h2raw::{Frame, block, frame, integer, take_frame};
use skylift_testkit::sink::Sink;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A sync call: the proxy answers it only once the (delayed) upstream has, so its
/// stream stays half-closed (remote) meanwhile.
const SYNC: &str = "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations";

fn request_fields(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "proxy"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
}

fn request(path: &str) -> Vec<u8> {
    block(&request_fields(path))
}

/// A gRPC-framed segment report.
fn report_body() -> Vec<u8> {
    framed(&[segment("h2spec")]).to_vec()
}

/// What the case expects of the proxy.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// GOAWAY with this code, or the connection closed.
    ConnectionError(u32),
    /// RST_STREAM with this code on the stream, or a connection error with it.
    StreamError(u32, u32),
    /// Either of two codes as a stream or connection error (h2spec accepts both).
    StreamErrorEither(u32, u32, u32),
    /// A response on the stream whose `:status` is this.
    Status(u32, &'static str),
    /// Nothing wrong: a PING sent after the case is answered.
    Alive,
    /// A frame of this type (and with this flag set).
    Frame(u8, u8),
}

struct Case {
    section: &'static str,
    what: &'static str,
    /// Frames after the preface and an empty SETTINGS.
    send: Vec<Vec<u8>>,
    /// Frames sent once the first response on stream 1 ends.
    after_response: Vec<Vec<u8>>,
    expect: Expect,
}

fn case(section: &'static str, what: &'static str, send: Vec<Vec<u8>>, expect: Expect) -> Case {
    Case {
        section,
        what,
        send,
        after_response: Vec::new(),
        expect,
    }
}

/// Reads frames until `done` says so; otherwise the frames seen, and whether the server
/// closed the connection (rather than going quiet for 3 s).
async fn read_until(
    conn: &mut TcpStream,
    buffer: &mut Vec<u8>,
    mut done: impl FnMut(&Frame) -> bool,
) -> Result<Frame, (Vec<Frame>, bool)> {
    let mut seen = Vec::new();
    loop {
        while let Some(frame) = take_frame(buffer) {
            if done(&frame) {
                return Ok(frame);
            }
            seen.push(frame);
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(3), conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err((seen, true)),
            Err(_) => return Err((seen, false)),
        }
    }
}

fn code_of(frame: &Frame) -> u32 {
    let at = if frame.kind == GOAWAY { 4 } else { 0 };
    u32::from_be_bytes(frame.payload[at..at + 4].try_into().unwrap())
}

/// Runs one case on a new connection: `Ok` or what went wrong.
async fn run(proxy: std::net::SocketAddr, case: &Case) -> Result<(), String> {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for f in &case.send {
        out.extend_from_slice(f);
    }
    // A write may fail once the proxy closed the connection: that is for the reads to see.
    let _ = conn.write_all(&out).await;
    let mut buffer = Vec::new();
    if !case.after_response.is_empty() {
        let ended = read_until(&mut conn, &mut buffer, |f| {
            f.stream == 1 && f.kind == HEADERS && f.flags & END_STREAM != 0
        })
        .await;
        if ended.is_err() {
            return Err("the first response never ended".into());
        }
        let mut out = Vec::new();
        for f in &case.after_response {
            out.extend_from_slice(f);
        }
        let _ = conn.write_all(&out).await;
    }
    let is_error_with = |f: &Frame, codes: &[u32], stream: Option<u32>| {
        (f.kind == GOAWAY && codes.contains(&code_of(f)))
            || (f.kind == RST_STREAM
                && stream.is_some_and(|s| s == f.stream)
                && codes.contains(&code_of(f)))
    };
    let describe = |seen: &[Frame]| {
        seen.iter()
            .map(|f| match f.kind {
                GOAWAY | RST_STREAM => format!("{}({:#x})@{}", f.kind, code_of(f), f.stream),
                _ => format!("{}/{:#x}@{}", f.kind, f.flags, f.stream),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match case.expect {
        Expect::ConnectionError(code) => {
            match read_until(&mut conn, &mut buffer, |f| f.kind == GOAWAY).await {
                Ok(f) if code_of(&f) == code => Ok(()),
                Ok(f) => Err(format!("GOAWAY {:#x}, expected {code:#x}", code_of(&f))),
                // Closed without a GOAWAY is accepted (as h2spec does); still open is not.
                Err((seen, true)) if seen.iter().all(|f| f.kind != RST_STREAM) => Ok(()),
                Err((seen, closed)) => Err(format!(
                    "no GOAWAY (closed: {closed}); saw {}",
                    describe(&seen)
                )),
            }
        }
        Expect::StreamError(stream, code) => read_until(&mut conn, &mut buffer, |f| {
            is_error_with(f, &[code], Some(stream))
        })
        .await
        .map(drop)
        .map_err(|(seen, _)| {
            format!(
                "no RST_STREAM/GOAWAY {code:#x} on {stream}; saw {}",
                describe(&seen)
            )
        }),
        Expect::StreamErrorEither(stream, a, b) => read_until(&mut conn, &mut buffer, |f| {
            is_error_with(f, &[a, b], Some(stream))
        })
        .await
        .map(drop)
        .map_err(|(seen, _)| {
            format!(
                "no error {a:#x}/{b:#x} on {stream}; saw {}",
                describe(&seen)
            )
        }),
        Expect::Status(stream, status) => {
            let expected = block(&[(":status", status)]);
            read_until(&mut conn, &mut buffer, |f| {
                f.kind == HEADERS && f.stream == stream
            })
            .await
            .map_err(|(seen, _)| format!("no response; saw {}", describe(&seen)))
            .and_then(|f| {
                // The proxy's encoder writes `:status` first, indexed or as a literal.
                let indexed = matches!((f.payload[0], status), (0x88, "200") | (0x8d, "404"));
                let literal = f.payload.windows(3).any(|w| w == status.as_bytes());
                if indexed || literal || f.payload.starts_with(&expected) {
                    Ok(())
                } else {
                    Err(format!("response block {:02x?}", f.payload))
                }
            })
        }
        Expect::Alive => {
            let _ = conn.write_all(&frame(PING, 0, 0, b"h2spec!!")).await;
            read_until(&mut conn, &mut buffer, |f| {
                f.kind == PING && f.flags & ACK != 0 && f.payload == b"h2spec!!"
            })
            .await
            .map(drop)
            .map_err(|(seen, _)| format!("no PING answer; saw {}", describe(&seen)))
        }
        Expect::Frame(kind, flags) => read_until(&mut conn, &mut buffer, |f| {
            f.kind == kind && f.flags & flags == flags
        })
        .await
        .map(drop)
        .map_err(|(seen, _)| format!("no frame {kind}/{flags:#x}; saw {}", describe(&seen))),
    }
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// A request on `stream` whose answer waits for the delayed upstream.
fn open_sync(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &request(SYNC))
}

fn rfc9113_cases() -> Vec<Case> {
    let req = request(SEGMENTS);
    let body = report_body();
    let data_end = |stream| frame(DATA, END_STREAM, stream, &body);
    let open = |stream| frame(HEADERS, END_HEADERS, stream, &req);
    let mut cases = vec![
        case(
            "3.5/1",
            "an invalid connection preface",
            vec![],
            Expect::Alive, // replaced below: the preface is part of every case
        ),
        case(
            "4.1/1",
            "a frame of an unknown type is ignored",
            vec![frame(0x42, 0, 0, b"unknown")],
            Expect::Alive,
        ),
        case(
            "4.1/2",
            "undefined flags are ignored",
            vec![frame(PING, 0x16, 0, b"h2spec!!")],
            Expect::Frame(PING, ACK),
        ),
        case(
            "4.2/1",
            "DATA larger than SETTINGS_MAX_FRAME_SIZE",
            vec![open(1), frame(DATA, 0, 1, &[0; 16_385])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "4.2/3",
            "HEADERS larger than SETTINGS_MAX_FRAME_SIZE",
            vec![frame(HEADERS, END_HEADERS, 1, &[0x88; 16_385])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "4.3/1",
            "an undecodable header block",
            vec![frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff])],
            Expect::ConnectionError(COMPRESSION_ERROR),
        ),
        case(
            "4.3/3",
            "PRIORITY between HEADERS and CONTINUATION",
            vec![
                frame(HEADERS, 0, 1, &req),
                frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
                frame(CONTINUATION, END_HEADERS, 1, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1/1",
            "idle: DATA",
            vec![frame(DATA, 0, 1, b"x")],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1/2",
            "idle: RST_STREAM",
            vec![rst(1, 8)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1/3",
            "idle: WINDOW_UPDATE",
            vec![window_update(1, 100)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1/4",
            "idle: CONTINUATION",
            vec![frame(CONTINUATION, END_HEADERS, 1, &req)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1/5",
            "half closed (remote): DATA",
            vec![open_sync(1), frame(DATA, 0, 1, b"x")],
            Expect::StreamError(1, STREAM_CLOSED),
        ),
        case(
            "5.1/6",
            "half closed (remote): HEADERS",
            vec![
                open_sync(1),
                frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&[("x", "y")])),
            ],
            Expect::StreamError(1, STREAM_CLOSED),
        ),
        case(
            "5.1/7",
            "half closed (remote): CONTINUATION",
            vec![open_sync(1), frame(CONTINUATION, END_HEADERS, 1, &req)],
            Expect::StreamErrorEither(1, STREAM_CLOSED, PROTOCOL_ERROR),
        ),
        case(
            "5.1/8",
            "closed: DATA after RST_STREAM",
            vec![open(1), rst(1, 8), frame(DATA, 0, 1, b"x")],
            Expect::StreamError(1, STREAM_CLOSED),
        ),
        case(
            "5.1/9",
            "closed: HEADERS after RST_STREAM",
            vec![open(1), rst(1, 8), frame(HEADERS, END_HEADERS, 1, &req)],
            Expect::StreamError(1, STREAM_CLOSED),
        ),
        case(
            "5.1/10",
            "closed: CONTINUATION after RST_STREAM",
            vec![
                open(1),
                rst(1, 8),
                frame(CONTINUATION, END_HEADERS, 1, &req),
            ],
            Expect::StreamErrorEither(1, STREAM_CLOSED, PROTOCOL_ERROR),
        ),
        Case {
            section: "5.1/11",
            what: "closed: DATA after the stream ended both ways",
            send: vec![open(1), data_end(1)],
            after_response: vec![frame(DATA, 0, 1, b"x")],
            expect: Expect::StreamError(1, STREAM_CLOSED),
        },
        Case {
            section: "5.1/12",
            what: "closed: HEADERS after the stream ended both ways",
            send: vec![open(1), data_end(1)],
            after_response: vec![frame(HEADERS, END_HEADERS | END_STREAM, 1, &req)],
            expect: Expect::StreamError(1, STREAM_CLOSED),
        },
        case(
            "5.1.1/1",
            "a stream identifier that is even",
            vec![frame(HEADERS, END_HEADERS, 2, &req)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.1.1/2",
            "a stream identifier below one already used",
            vec![open(5), frame(HEADERS, END_HEADERS, 3, &req)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "5.3.1/1",
            "HEADERS depending on its own stream",
            vec![frame(
                HEADERS,
                END_HEADERS | PRIORITY_FLAG,
                1,
                &[&[0, 0, 0, 1, 16][..], &req].concat(),
            )],
            Expect::StreamError(1, PROTOCOL_ERROR),
        ),
        case(
            "5.3.1/2",
            "PRIORITY depending on its own stream",
            vec![frame(PRIORITY, 0, 1, &[0, 0, 0, 1, 16])],
            Expect::StreamError(1, PROTOCOL_ERROR),
        ),
        case(
            "5.5/1",
            "an unknown extension frame is ignored",
            vec![frame(0xfe, 0, 0, b"extension")],
            Expect::Alive,
        ),
        case(
            "5.5/2",
            "an unknown extension frame inside a header block",
            vec![
                frame(HEADERS, 0, 1, &req),
                frame(0xfe, 0, 1, b"extension"),
                frame(CONTINUATION, END_HEADERS, 1, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.1/1",
            "DATA on stream 0",
            vec![frame(DATA, 0, 0, b"x")],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.1/2",
            "DATA on a stream not open or half closed (local)",
            vec![open_sync(1), frame(DATA, END_STREAM, 1, b"x")],
            Expect::StreamError(1, STREAM_CLOSED),
        ),
        case(
            "6.1/3",
            "DATA whose padding is longer than the frame",
            vec![open(1), frame(DATA, PADDED, 1, &[6, 0, 0, 0, 0, 0])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.2/1",
            "HEADERS without END_HEADERS, then another frame",
            vec![frame(HEADERS, 0, 1, &req), frame(DATA, 0, 1, b"x")],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.2/2",
            "HEADERS without END_HEADERS, then CONTINUATION on another stream",
            vec![
                frame(HEADERS, 0, 1, &req),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.2/3",
            "HEADERS on stream 0",
            vec![frame(HEADERS, END_HEADERS, 0, &req)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.2/4",
            "HEADERS whose padding is longer than the frame",
            vec![frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x88])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.3/1",
            "PRIORITY on stream 0",
            vec![frame(PRIORITY, 0, 0, &[0, 0, 0, 1, 16])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.3/2",
            "PRIORITY of 4 bytes",
            vec![frame(PRIORITY, 0, 1, &[0, 0, 0, 3])],
            Expect::StreamError(1, FRAME_SIZE_ERROR),
        ),
        case(
            "6.4/1",
            "RST_STREAM on stream 0",
            vec![rst(0, 8)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.4/2",
            "RST_STREAM on an idle stream",
            vec![rst(3, 8)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.4/3",
            "RST_STREAM of 3 bytes",
            vec![open(1), frame(RST_STREAM, 0, 1, &[0, 0, 8])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "6.5/1",
            "SETTINGS ACK with a payload",
            vec![frame(SETTINGS, ACK, 0, &[0, 3, 0, 0, 0, 1])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "6.5/2",
            "SETTINGS on a stream",
            vec![frame(SETTINGS, 0, 1, &[0, 3, 0, 0, 0, 1])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.5/3",
            "SETTINGS of a length not a multiple of 6",
            vec![frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 1])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "6.5.2/1",
            "SETTINGS_ENABLE_PUSH of 2",
            vec![settings(&[(2, 2)])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.5.2/2",
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            vec![settings(&[(4, 1 << 31)])],
            Expect::ConnectionError(FLOW_CONTROL_ERROR),
        ),
        case(
            "6.5.2/3",
            "SETTINGS_MAX_FRAME_SIZE below the initial value",
            vec![settings(&[(5, 16_383)])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.5.2/4",
            "SETTINGS_MAX_FRAME_SIZE above the maximum",
            vec![settings(&[(5, 1 << 24)])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.5.2/5",
            "an unknown setting is ignored and acknowledged",
            vec![settings(&[(0xff, 1)])],
            Expect::Frame(SETTINGS, ACK),
        ),
        case(
            "6.7/1",
            "PING is answered with the same payload",
            vec![],
            Expect::Alive,
        ),
        case(
            "6.7/2",
            "a PING ACK is not answered",
            vec![frame(PING, ACK, 0, b"unasked!")],
            Expect::Alive,
        ),
        case(
            "6.7/3",
            "PING on a stream",
            vec![frame(PING, 0, 1, b"h2spec!!")],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.7/4",
            "PING of 6 bytes",
            vec![frame(PING, 0, 0, b"h2spec")],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "6.8/1",
            "GOAWAY on a stream",
            vec![frame(GOAWAY, 0, 1, &[0; 8])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.9/1",
            "WINDOW_UPDATE of 0 on the connection",
            vec![window_update(0, 0)],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.9/2",
            "WINDOW_UPDATE of 0 on a stream",
            vec![open(1), window_update(1, 0)],
            Expect::StreamError(1, PROTOCOL_ERROR),
        ),
        case(
            "6.9/3",
            "WINDOW_UPDATE of 3 bytes",
            vec![frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1])],
            Expect::ConnectionError(FRAME_SIZE_ERROR),
        ),
        case(
            "6.9.1/2",
            "the connection window above 2^31-1",
            vec![window_update(0, 0x7fff_ffff)],
            Expect::ConnectionError(FLOW_CONTROL_ERROR),
        ),
        case(
            "6.9.1/3",
            "a stream window above 2^31-1",
            vec![open(1), window_update(1, 0x7fff_ffff)],
            Expect::StreamError(1, FLOW_CONTROL_ERROR),
        ),
        case(
            "6.9.2/3",
            "SETTINGS_INITIAL_WINDOW_SIZE making a stream window overflow",
            vec![
                open(1),
                window_update(1, 0x7fff_ffff - 65_535),
                settings(&[(4, 65_536)]),
            ],
            Expect::ConnectionError(FLOW_CONTROL_ERROR),
        ),
        case(
            "6.10/1",
            "CONTINUATION after END_HEADERS",
            vec![
                frame(HEADERS, END_HEADERS, 1, &req),
                frame(CONTINUATION, END_HEADERS, 1, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.10/2",
            "CONTINUATION after DATA",
            vec![
                open(1),
                frame(DATA, 0, 1, b"x"),
                frame(CONTINUATION, END_HEADERS, 1, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.10/3",
            "CONTINUATION on stream 0",
            vec![
                frame(HEADERS, 0, 1, &req),
                frame(CONTINUATION, END_HEADERS, 0, &[]),
            ],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "8.1/1",
            "trailers without END_STREAM",
            vec![
                open(1),
                frame(DATA, 0, 1, &body),
                frame(HEADERS, END_HEADERS, 1, &block(&[("x", "y")])),
            ],
            Expect::StreamError(1, PROTOCOL_ERROR),
        ),
        case(
            "8.2/1",
            "PUSH_PROMISE from a client",
            vec![open(1), frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])],
            Expect::ConnectionError(PROTOCOL_ERROR),
        ),
        case(
            "6.8/2",
            "a stream the client opens after its own GOAWAY is refused",
            vec![frame(GOAWAY, 0, 0, &[0; 8]), open(1), data_end(1)],
            Expect::StreamError(1, REFUSED_STREAM),
        ),
    ];
    // 3.5 is checked on its own (the preface is written by `run`).
    cases.remove(0);
    cases
}

/// Request header blocks that are malformed (RFC 9113 §8.1.1, §8.2, §8.3): each is a
/// PROTOCOL_ERROR stream error.
fn malformed_request_cases() -> Vec<Case> {
    let with = |extra: &[(&'static str, &'static str)], without: &[&str]| {
        let mut fields: Vec<(&str, &str)> = request_fields(SEGMENTS)
            .into_iter()
            .filter(|(name, _)| !without.contains(name))
            .collect();
        fields.extend_from_slice(extra);
        vec![frame(HEADERS, END_HEADERS, 1, &block(&fields))]
    };
    let malformed =
        |section, what, send| case(section, what, send, Expect::StreamError(1, PROTOCOL_ERROR));
    let mut pseudo_after = request_fields(SEGMENTS);
    pseudo_after.insert(0, ("x-first", "1"));
    let body = report_body();
    vec![
        malformed(
            "8.2/2",
            "an uppercase header name",
            with(&[("X-Upper", "1")], &[]),
        ),
        malformed(
            "8.3/1",
            "an unknown pseudo-header",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", SEGMENTS),
                    (":foo", "bar"),
                    ("content-type", "application/grpc"),
                ]),
            )],
        ),
        malformed(
            "8.3/2",
            "a response pseudo-header in a request",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", SEGMENTS),
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                ]),
            )],
        ),
        malformed(
            "8.3/3",
            "a pseudo-header after a regular header",
            vec![frame(HEADERS, END_HEADERS, 1, &block(&pseudo_after))],
        ),
        malformed(
            "8.3/4",
            "a pseudo-header in trailers",
            vec![
                frame(HEADERS, END_HEADERS, 1, &request(SEGMENTS)),
                frame(DATA, 0, 1, &body),
                frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &block(&[(":method", "POST")]),
                ),
            ],
        ),
        malformed(
            "8.2.2/1",
            "a connection-specific header",
            with(&[("connection", "keep-alive")], &[]),
        ),
        malformed(
            "8.2.2/2",
            "te other than trailers",
            with(&[("te", "gzip")], &["te"]),
        ),
        malformed(
            "8.3.1/1",
            "an empty :path",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", ""),
                    ("content-type", "application/grpc"),
                ]),
            )],
        ),
        malformed("8.3.1/2", "no :method", with(&[], &[":method"])),
        malformed("8.3.1/3", "no :scheme", with(&[], &[":scheme"])),
        malformed("8.3.1/4", "no :path", with(&[], &[":path"])),
        malformed(
            "8.3.1/5",
            "two :method",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", SEGMENTS),
                ]),
            )],
        ),
        malformed(
            "8.3.1/6",
            "two :scheme",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":scheme", "http"),
                    (":path", SEGMENTS),
                ]),
            )],
        ),
        malformed(
            "8.3.1/7",
            "two :path",
            vec![frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", SEGMENTS),
                    (":path", SEGMENTS),
                ]),
            )],
        ),
        malformed(
            "8.1.1/1",
            "content-length not matching one DATA frame",
            vec![
                frame(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &block(&[request_fields(SEGMENTS), vec![("content-length", "1")]].concat()),
                ),
                frame(DATA, END_STREAM, 1, &body),
            ],
        ),
        malformed(
            "8.1.1/2",
            "content-length not matching several DATA frames",
            vec![
                frame(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &block(
                        &[request_fields(SEGMENTS), vec![("content-length", "100000")]].concat(),
                    ),
                ),
                frame(DATA, 0, 1, &body),
                frame(DATA, END_STREAM, 1, &body),
            ],
        ),
    ]
}

/// gRPC's request rules (grpc-java's NettyServerHandler): answered with an HTTP status.
fn grpc_cases() -> Vec<Case> {
    let fields = |method: &'static str, content_type: Option<&'static str>| {
        let mut f = vec![
            (":method", method),
            (":scheme", "http"),
            (":path", SEGMENTS),
        ];
        if let Some(ct) = content_type {
            f.push(("content-type", ct));
        }
        vec![frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&f))]
    };
    vec![
        case(
            "grpc/1",
            "a method other than POST",
            fields("GET", Some("application/grpc")),
            Expect::Status(1, "405"),
        ),
        case(
            "grpc/2",
            "no content-type",
            fields("POST", None),
            Expect::Status(1, "415"),
        ),
        case(
            "grpc/3",
            "a content-type other than gRPC's",
            fields("POST", Some("text/plain")),
            Expect::Status(1, "415"),
        ),
        case(
            "grpc/4",
            "application/grpc+proto is gRPC",
            {
                let mut f = fields("POST", Some("application/grpc+proto"));
                f[0] = frame(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &block(&[
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", SEGMENTS),
                        ("content-type", "application/grpc+proto"),
                    ]),
                );
                f.push(frame(DATA, END_STREAM, 1, &report_body()));
                f
            },
            Expect::Status(1, "200"),
        ),
        case(
            "grpc/5",
            "no te is accepted, as grpc-java does",
            {
                vec![
                    frame(
                        HEADERS,
                        END_HEADERS,
                        1,
                        &block(&[
                            (":method", "POST"),
                            (":scheme", "http"),
                            (":path", SEGMENTS),
                            ("content-type", "application/grpc"),
                        ]),
                    ),
                    frame(DATA, END_STREAM, 1, &report_body()),
                ]
            },
            Expect::Status(1, "200"),
        ),
    ]
}

/// A header block that inserts a 4 KB field into the table and references it over and
/// over: 64 KB on the wire, hundreds of megabytes decoded.
fn hpack_bomb() -> Vec<Vec<u8>> {
    let mut fields = block(&request_fields(SEGMENTS));
    // Literal with incremental indexing, new name.
    fields.push(0x40);
    integer(5, 7, 0, &mut fields);
    fields.extend_from_slice(b"x-big");
    integer(4000, 7, 0, &mut fields);
    fields.extend(std::iter::repeat_n(b'v', 4000));
    // Index 62: the newest dynamic entry.
    while fields.len() < 16_384 * 4 - 16 {
        fields.push(0x80 | 62);
    }
    let mut frames = Vec::new();
    let mut chunks = fields.chunks(16_384).peekable();
    let first = chunks.next().unwrap();
    frames.push(frame(HEADERS, END_STREAM, 1, first));
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        frames.push(frame(CONTINUATION, flags, 1, chunk));
    }
    frames
}

fn abuse_cases() -> Vec<Case> {
    let req = request(SEGMENTS);
    let mut upper = request_fields(SEGMENTS);
    upper.push(("X-Upper", "1"));
    let malformed = block(&upper);
    let many = |n: u32, make: &dyn Fn(u32) -> Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        (0..n).flat_map(make).collect()
    };
    vec![
        case(
            "abuse/1",
            "an HPACK bomb is answered 431",
            hpack_bomb(),
            Expect::Status(1, "431"),
        ),
        case(
            "abuse/2",
            "HPACK bombs again and again",
            (0..6u32)
                .flat_map(|i| {
                    hpack_bomb().into_iter().map(move |mut f| {
                        f[5..9].copy_from_slice(&(2 * i + 1).to_be_bytes());
                        f
                    })
                })
                .collect(),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/3",
            "rapid reset: streams opened and reset at once",
            many(200, &|i| {
                vec![
                    frame(HEADERS, END_HEADERS, 2 * i + 1, &req),
                    rst(2 * i + 1, 8),
                ]
            }),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/4",
            "streams made to be reset by the server (malformed requests)",
            many(1100, &|i| {
                vec![frame(HEADERS, END_HEADERS, 2 * i + 1, &malformed)]
            }),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/5",
            "a SETTINGS flood",
            many(1100, &|_| vec![settings(&[])]),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/6",
            "a PING flood",
            many(1100, &|_| vec![frame(PING, 0, 0, b"flooding")]),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/7",
            "a flood of empty DATA frames",
            [
                vec![frame(HEADERS, END_HEADERS, 1, &req)],
                many(1100, &|_| vec![frame(DATA, 0, 1, &[])]),
            ]
            .concat(),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/8",
            "a CONTINUATION flood",
            [
                vec![frame(HEADERS, 0, 1, &req)],
                many(40, &|_| vec![frame(CONTINUATION, 0, 1, &[])]),
            ]
            .concat(),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/9",
            "a flood of WINDOW_UPDATEs no DATA earned",
            many(1100, &|_| vec![window_update(0, 1)]),
            Expect::ConnectionError(ENHANCE_YOUR_CALM),
        ),
        case(
            "abuse/10",
            "a few client resets are fine",
            many(20, &|i| {
                vec![
                    frame(HEADERS, END_HEADERS, 2 * i + 1, &req),
                    rst(2 * i + 1, 8),
                ]
            }),
            Expect::Alive,
        ),
    ]
}

#[tokio::test]
async fn the_client_facing_server_passes_the_conformance_suite() {
    let sink = Sink::start().await.unwrap();
    sink.set_delay(Duration::from_secs(4));
    let proxy = proxy(&[&sink], None).await;

    let mut cases = rfc9113_cases();
    cases.extend(malformed_request_cases());
    cases.extend(grpc_cases());
    cases.extend(abuse_cases());
    let mut failures = Vec::new();
    let total = cases.len();
    for case in &cases {
        if let Err(why) = run(proxy.address, case).await {
            failures.push(format!("{} {}: {why}", case.section, case.what));
        }
    }

    // 3.5: a client that does not start with the preface is closed.
    let mut conn = TcpStream::connect(proxy.address).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut rest)).await;
    if closed.is_err() {
        failures.push("3.5 an invalid connection preface: not closed".into());
    }

    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        total + 1,
        failures.join("\n")
    );
    let metrics = proxy.state.metrics.encode();
    for reason in [
        "rapid_reset",
        "local_resets",
        "settings_flood",
        "ping_flood",
        "window_update_flood",
        "empty_frame_flood",
        "continuation_flood",
        "header_list_too_large",
        "protocol_error",
    ] {
        assert!(
            metrics.contains(&format!(
                "skylift_proxy_connections_closed_total{{reason=\"{reason}\"}}"
            )),
            "closes for {reason} are counted:\n{metrics}"
        );
    }
}

/// The connection's budget (here `--max-message-bytes` 64 KiB + 5 + 64 KiB = 131 077
/// bytes): half-sent messages on several streams hold the client back once they add up
/// to it, the connection window is never given back for them, and a client that sends
/// past it breaks flow control.
#[tokio::test]
async fn half_sent_messages_hold_their_client_to_the_connections_budget() {
    let sink = Sink::start().await.unwrap();
    let proxy = proxy(&[&sink], None).await;
    let budget = 64 * 1024 + 5 + 64 * 1024;
    // Each stream: a message announced at 60 000 bytes, 40 000 of it sent.
    let partial = |stream: u32| {
        let mut message = vec![0u8];
        message.extend_from_slice(&60_000u32.to_be_bytes());
        message.resize(40_005, 0x2a);
        let mut frames = frame(HEADERS, END_HEADERS, stream, &request(SEGMENTS));
        for chunk in message.chunks(16_384) {
            frames.extend(frame(DATA, 0, stream, chunk));
        }
        frames
    };
    let mut conn = TcpStream::connect(proxy.address).await.unwrap();
    let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for stream in [1, 3, 5] {
        out.extend(partial(stream));
    }
    out.extend(frame(PING, 0, 0, b"h2spec!!"));
    conn.write_all(&out).await.unwrap();
    let mut buffer = Vec::new();
    let mut connection_updates = 0u64;
    let answered = read_until(&mut conn, &mut buffer, |f| {
        if f.kind == WINDOW_UPDATE && f.stream == 0 {
            connection_updates += u64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
        }
        f.kind == PING && f.flags & ACK != 0
    })
    .await;
    assert!(answered.is_ok(), "3 × 40 005 bytes held: within the budget");
    assert_eq!(
        connection_updates,
        (budget - 65_535) as u64,
        "only the initial raise: nothing given back for half-sent messages"
    );
    // 11 063 more bytes pass the budget.
    let mut more = frame(HEADERS, END_HEADERS, 7, &request(SEGMENTS));
    more.extend(frame(DATA, 0, 7, &vec![0; budget - 3 * 40_005 + 1]));
    conn.write_all(&more).await.unwrap();
    let goaway = read_until(&mut conn, &mut buffer, |f| f.kind == GOAWAY).await;
    assert_eq!(
        goaway.map(|f| code_of(&f)).ok(),
        Some(FLOW_CONTROL_ERROR),
        "past the budget: a flow-control error"
    );
    // Meanwhile others are served.
    let (status, _, _) = call(
        &client(),
        proxy.address,
        SEGMENTS,
        framed(&[segment("fine")]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
}

/// Partly sent messages on four streams that fill the budget between them: the client can
/// send nothing more and no message can finish. The proxy keeps the stream holding the
/// most and refuses the others (RESOURCE_EXHAUSTED) at once, so the kept one finishes and
/// is delivered, instead of every stream waiting for the client's deadline.
#[tokio::test]
async fn partial_messages_that_fill_the_budget_leave_one_stream_to_finish() {
    let sink = Sink::start().await.unwrap();
    let proxy = proxy(&[&sink], None).await;
    let budget = 64 * 1024 + 5 + 64 * 1024;
    let message = |id: &str| framed(&[large_segment(id, 60_000)]).to_vec();
    let send = |stream: u32, bytes: &[u8], end: bool| {
        let mut frames = Vec::new();
        let chunks: Vec<&[u8]> = bytes.chunks(16_384).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = end && i + 1 == chunks.len();
            frames.extend(frame(
                DATA,
                if last { END_STREAM } else { 0 },
                stream,
                chunk,
            ));
        }
        frames
    };
    let mut conn = TcpStream::connect(proxy.address).await.unwrap();
    let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let kept = message("kept");
    let mut sent = 0;
    for (stream, id) in [(1, "kept"), (3, "a"), (5, "b"), (7, "c")] {
        let whole = if stream == 1 {
            kept.clone()
        } else {
            message(id)
        };
        let part = (budget - sent).min(40_005);
        out.extend(frame(HEADERS, END_HEADERS, stream, &request(SEGMENTS)));
        out.extend(send(stream, &whole[..part], false));
        sent += part;
    }
    assert_eq!(sent, budget, "the client's whole window");
    conn.write_all(&out).await.unwrap();

    let mut buffer = Vec::new();
    let mut refused = std::collections::BTreeSet::new();
    let mut given_back = 0u64;
    let outcome = read_until(&mut conn, &mut buffer, |f| {
        if f.kind == HEADERS && f.payload.windows(13).any(|w| w == b"grpc-status\x018") {
            refused.insert(f.stream);
        }
        if f.kind == WINDOW_UPDATE && f.stream == 0 {
            given_back += u64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
        }
        // The initial raise to the budget, and room for the rest of the kept message.
        refused.len() == 3 && given_back >= (budget - 65_535 + kept.len() - 40_005) as u64
    })
    .await;
    assert!(
        outcome.is_ok(),
        "refused {refused:?}, {given_back} bytes of window given back"
    );
    assert_eq!(refused, [3, 5, 7].into());

    // The kept stream finishes its message and is answered OK; the segment is delivered.
    conn.write_all(&send(1, &kept[40_005..], true))
        .await
        .unwrap();
    let answered = read_until(&mut conn, &mut buffer, |f| {
        f.kind == HEADERS && f.stream == 1 && f.flags & END_STREAM != 0
    })
    .await
    .expect("stream 1 answered");
    assert!(
        answered
            .payload
            .windows(13)
            .any(|w| w == b"grpc-status\x010"),
        "{:02x?}",
        answered.payload
    );
    eventually("the kept message delivered", || {
        sink.messages(SEGMENTS).len() == 1
    })
    .await;
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_calls_refused_total{reason=\"connection_budget\"} 3"),
        "{metrics}"
    );
}

/// A proxy before `sink` with these limits (the timeouts' tests).
async fn proxy_timed(sink: &Sink, limits: skylift_proxy::listen::state::Limits) -> Proxy {
    proxy_with_limits(
        &[sink],
        queue_config(),
        skylift_proxy::upstream::client::UpstreamClient::new(4, 100),
        limits,
        None,
    )
    .await
}

/// A connection with no streams that stays silent is closed at `--idle-timeout`, with a
/// GOAWAY, and counted; one that keeps talking is not.
#[tokio::test]
async fn silent_connections_are_closed_at_the_idle_timeout() {
    let sink = Sink::start().await.unwrap();
    let limits = skylift_proxy::listen::state::Limits {
        keepalive: None,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_millis(600)),
        ..limits()
    };
    let proxy = proxy_timed(&sink, limits).await;
    let hello = || {
        let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    };
    let mut silent = TcpStream::connect(proxy.address).await.unwrap();
    silent.write_all(&hello()).await.unwrap();
    let mut talking = TcpStream::connect(proxy.address).await.unwrap();
    talking.write_all(&hello()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buffer = Vec::new();
    let talker = tokio::spawn(async move {
        let mut buffer = Vec::new();
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            talking
                .write_all(&frame(PING, 0, 0, b"stillhi!"))
                .await
                .unwrap();
            let pong = read_until(&mut talking, &mut buffer, |f| {
                f.kind == PING && f.flags & ACK != 0
            })
            .await;
            assert!(pong.is_ok(), "a talking connection stays open");
        }
    });
    let goaway = read_until(&mut silent, &mut buffer, |f| f.kind == GOAWAY).await;
    assert_eq!(goaway.map(|f| code_of(&f)).ok(), Some(0), "GOAWAY NO_ERROR");
    assert!(started.elapsed() >= Duration::from_millis(500));
    talker.await.unwrap();
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_connections_closed_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
}

/// A connection with nothing under way rests (its serving loop let go of, its session
/// parked), and a client cannot tell: calls made after a rest are answered and delivered,
/// the HPACK table it filled is still there, keep-alive pings still go out, and shutdown
/// still sends it a GOAWAY.
#[tokio::test]
async fn a_resting_connection_serves_pings_and_drains_as_before() {
    let sink = Sink::start().await.unwrap();
    let limits = skylift_proxy::listen::state::Limits {
        keepalive: Some(Duration::from_millis(1500)),
        idle_timeout: Some(Duration::from_secs(60)),
        ..limits()
    };
    let proxy = proxy_timed(&sink, limits).await;
    let resting = |count: u32| {
        let wanted = format!("skylift_proxy_connections_resting {count}\n");
        let state = proxy.state.clone();
        move || state.metrics.encode().contains(&wanted)
    };
    let mut conn = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffer = Vec::new();
    let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // Stream 1 puts `x-tag: kept` in the client's HPACK table (literal with incremental
    // indexing, new name).
    let mut first = request(SEGMENTS);
    first.extend([0x40, 5]);
    first.extend(b"x-tag");
    first.push(4);
    first.extend(b"kept");
    out.extend(frame(HEADERS, END_HEADERS, 1, &first));
    out.extend(frame(DATA, END_STREAM, 1, &report_body()));
    conn.write_all(&out).await.unwrap();
    let answered = |stream: u32| {
        move |f: &Frame| f.kind == HEADERS && f.stream == stream && f.flags & END_STREAM != 0
    };
    read_until(&mut conn, &mut buffer, answered(1))
        .await
        .expect("stream 1 answered");
    eventually("the connection rests", resting(1)).await;

    // Stream 3 names the table's entry (index 62): answered, so the table was kept.
    let mut third = request(SEGMENTS);
    third.push(0x80 | 62);
    let mut out = frame(HEADERS, END_HEADERS, 3, &third);
    out.extend(frame(DATA, END_STREAM, 3, &report_body()));
    conn.write_all(&out).await.unwrap();
    let answer = read_until(&mut conn, &mut buffer, answered(3))
        .await
        .expect("stream 3 answered");
    assert!(
        answer.payload.windows(13).any(|w| w == b"grpc-status\x010"),
        "{:02x?}",
        answer.payload
    );
    eventually("both reports delivered", || {
        sink.messages(SEGMENTS).len() == 2
    })
    .await;
    eventually("the connection rests again", resting(1)).await;

    // Silent for the keep-alive interval, the resting connection is pinged; answered, it
    // rests again.
    let ping = read_until(&mut conn, &mut buffer, |f| {
        f.kind == PING && f.flags & ACK == 0
    })
    .await
    .expect("a keep-alive ping");
    conn.write_all(&frame(PING, ACK, 0, &ping.payload))
        .await
        .unwrap();
    eventually("resting after the ping", resting(1)).await;

    // Shutdown reaches it: GOAWAY, then the connection closes.
    proxy._close.send(true).unwrap();
    read_until(&mut conn, &mut buffer, |f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY at shutdown");
    eventually("no connection rests", resting(0)).await;
}

/// A resting connection is still closed at `--idle-timeout` (its timer runs while it
/// rests), with a GOAWAY, and counted.
#[tokio::test]
async fn a_resting_connection_is_closed_at_the_idle_timeout() {
    let sink = Sink::start().await.unwrap();
    let limits = skylift_proxy::listen::state::Limits {
        keepalive: None,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_millis(2500)),
        ..limits()
    };
    let proxy = proxy_timed(&sink, limits).await;
    let mut conn = TcpStream::connect(proxy.address).await.unwrap();
    let mut hello = skylift_proxy::h2::frame::PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&hello).await.unwrap();
    let started = std::time::Instant::now();
    let state = proxy.state.clone();
    eventually("the connection rests", move || {
        state
            .metrics
            .encode()
            .contains("skylift_proxy_connections_resting 1\n")
    })
    .await;
    let mut buffer = Vec::new();
    let goaway = loop {
        match read_until(&mut conn, &mut buffer, |f| f.kind == GOAWAY).await {
            Ok(goaway) => break goaway,
            // Quiet for 3 s is read_until's limit; the timeout is 2.5 s from the preface.
            Err((_, false)) if started.elapsed() < Duration::from_secs(10) => continue,
            Err(other) => panic!("no GOAWAY: {other:?}"),
        }
    };
    assert_eq!(code_of(&goaway), 0, "GOAWAY NO_ERROR");
    assert!(started.elapsed() >= Duration::from_millis(2000));
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_connections_closed_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
}
