use super::*;
use crate::h2::frame::HEADER_LEN;
use crate::upstream::payload::Gathered;

/// The frames a session wrote, parsed back (after the preface).
fn frames_out(session: &mut ClientSession) -> Vec<(Head, Vec<u8>)> {
    let mut wire = Vec::new();
    while !session.out.is_empty() {
        let slices = session.out.slices(64);
        let n: usize = slices.iter().map(|s| s.len()).sum();
        for slice in &slices {
            wire.extend_from_slice(slice);
        }
        drop(slices);
        let mut marks = Vec::new();
        session.out.advance(n, |m| marks.push(m));
        for mark in marks {
            session.written(mark);
        }
    }
    let mut rest = &wire[..];
    if rest.starts_with(frame::PREFACE) {
        rest = &rest[frame::PREFACE.len()..];
    }
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let head = Head::parse(rest);
        frames.push((head, rest[HEADER_LEN..HEADER_LEN + head.len].to_vec()));
        rest = &rest[HEADER_LEN + head.len..];
    }
    frames
}

fn server_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> (Head, Bytes) {
    (
        Head {
            len: payload.len(),
            kind,
            flags,
            stream,
        },
        Bytes::copy_from_slice(payload),
    )
}

fn settings(session: &mut ClientSession, values: &[(u16, u32)]) {
    let mut payload = BytesMut::new();
    frame::settings(values, &mut payload);
    let (head, payload) = server_frame(kind::SETTINGS, 0, 0, &payload[HEADER_LEN..]);
    session.receive(head, payload).unwrap();
}

/// A call of `payload`, with its answer's receiver and progress.
fn call(
    id: u64,
    payload: Payload,
) -> (
    Submission,
    oneshot::Receiver<Result<Answer, Ended>>,
    Arc<Progress>,
) {
    let (answer, answered) = oneshot::channel();
    let progress = Arc::new(Progress::default());
    (
        Submission {
            id,
            path: Arc::from("/skywalking.v3.TraceSegmentReportService/collect"),
            fields: vec![("authentication", HeaderValue::from_static("token"))],
            payload,
            progress: Some(progress.clone()),
            answer,
        },
        answered,
        progress,
    )
}

fn encoded(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    loona_hpack::Encoder::new().encode(fields.iter().copied())
}

fn data_of(frames: &[(Head, Vec<u8>)], stream: u32) -> Vec<u8> {
    frames
        .iter()
        .filter(|(h, _)| h.kind == kind::DATA && h.stream == stream)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

#[test]
fn a_call_goes_out_as_headers_then_data_and_its_trailers_answer_it() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    let (submission, mut answered, progress) = call(
        7,
        Payload::Contiguous(Bytes::from_static(b"\0\0\0\0\x02hi")),
    );
    session.submit(submission);
    assert!(progress.sent());
    session.fill(WINDOW_RETURN as usize);
    let frames = frames_out(&mut session);
    // The preface's SETTINGS, the ack of the server's, then the call.
    let kinds: Vec<u8> = frames.iter().map(|(h, _)| h.kind).collect();
    assert_eq!(
        kinds,
        [kind::SETTINGS, kind::SETTINGS, kind::HEADERS, kind::DATA]
    );
    let (headers_head, block) = &frames[2];
    assert_eq!(headers_head.stream, 1);
    assert!(headers_head.has(flag::END_HEADERS) && !headers_head.has(flag::END_STREAM));
    let request = headers::decode_request(&mut headers::decoder(), block)
        .unwrap()
        .unwrap();
    let fields = loona_hpack::Decoder::new().decode(block).unwrap();
    assert!(fields.contains(&(b":authority".to_vec(), b"oap:11800".to_vec())));
    assert!(fields.contains(&(b":scheme".to_vec(), b"http".to_vec())));
    assert_eq!(request.headers()["authentication"], "token");
    assert_eq!(request.headers()["content-type"], "application/grpc");
    assert!(frames[3].0.has(flag::END_STREAM));
    assert_eq!(frames[3].1, b"\0\0\0\0\x02hi");
    assert!(progress.taken().is_some(), "the whole request was written");

    let (head, payload) = server_frame(
        kind::HEADERS,
        flag::END_HEADERS,
        1,
        &encoded(&[(b":status", b"200")]),
    );
    session.receive(head, payload).unwrap();
    let (head, payload) = server_frame(kind::DATA, 0, 1, b"\0\0\0\0\0");
    session.receive(head, payload).unwrap();
    assert!(
        answered.try_recv().is_err(),
        "no answer before the trailers"
    );
    let (head, payload) = server_frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &encoded(&[(b"grpc-status", b"0")]),
    );
    session.receive(head, payload).unwrap();
    let answer = answered.try_recv().unwrap().unwrap();
    assert_eq!(answer.code, 0);
    assert_eq!(&answer.body[..], b"\0\0\0\0\0");
    assert_eq!(session.calls(), 0);
}

#[test]
fn data_is_cut_to_the_frame_size_and_waits_for_both_windows() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    // A 1000-byte stream window; the connection's is the default 65 535.
    settings(&mut session, &[(setting::INITIAL_WINDOW_SIZE, 1000)]);
    let parts: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let (submission, _answered, progress) = call(1, Payload::Gathered(Gathered::new(parts)));
    session.submit(submission);
    session.fill(usize::MAX);
    let frames = frames_out(&mut session);
    assert_eq!(data_of(&frames, 1).len(), 1000, "the stream's window");
    assert!(progress.taken().is_none());
    // The stream window opens wide; the connection's is what is left of 65 535.
    let (head, payload) = server_frame(kind::WINDOW_UPDATE, 0, 1, &(1u32 << 20).to_be_bytes());
    session.receive(head, payload).unwrap();
    session.fill(usize::MAX);
    let frames = frames_out(&mut session);
    let sent: usize = data_of(&frames, 1).len();
    assert_eq!(sent, 65_535 - 1000);
    assert!(
        frames
            .iter()
            .all(|(h, _)| h.len <= frame::DEFAULT_MAX_FRAME)
    );
    // The connection's window opens: the rest goes, the last frame ends the stream.
    let (head, payload) = server_frame(kind::WINDOW_UPDATE, 0, 0, &(1u32 << 20).to_be_bytes());
    session.receive(head, payload).unwrap();
    session.fill(usize::MAX);
    let frames = frames_out(&mut session);
    assert_eq!(data_of(&frames, 1).len(), 100_000 - 65_535);
    assert!(frames.last().unwrap().0.has(flag::END_STREAM));
    assert!(progress.taken().is_some());
}

#[test]
fn every_byte_arrives_in_order_however_the_windows_and_frame_sizes_fall() {
    let parts: Vec<Bytes> = (0..300u32)
        .map(|i| Bytes::from(format!("message {i} ").repeat((i % 7 + 1) as usize)))
        .collect();
    let expected: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
    for window in [1u32, 17, 4096, 70_000] {
        let mut session = ClientSession::new(false, "oap:11800", 100);
        settings(&mut session, &[(setting::INITIAL_WINDOW_SIZE, window)]);
        let (a, _ra, _) = call(1, Payload::Gathered(Gathered::new(parts.clone())));
        let (b, _rb, _) = call(2, Payload::Gathered(Gathered::new(parts.clone())));
        session.submit(a);
        session.submit(b);
        let (mut got_1, mut got_3) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            session.fill(9000);
            let frames = frames_out(&mut session);
            got_1.extend(data_of(&frames, 1));
            got_3.extend(data_of(&frames, 3));
            if got_1.len() == expected.len() && got_3.len() == expected.len() {
                break;
            }
            // The connection's window and both streams' open by `window` again.
            for stream in [0, 1, 3] {
                let (head, payload) =
                    server_frame(kind::WINDOW_UPDATE, 0, stream, &window.to_be_bytes());
                session.receive(head, payload).unwrap();
            }
        }
        assert_eq!(got_1, expected, "window {window}");
        assert_eq!(got_3, expected, "window {window}");
    }
}

#[test]
fn calls_past_the_servers_stream_limit_wait_and_open_as_streams_end() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[(setting::MAX_CONCURRENT_STREAMS, 1)]);
    let (a, mut ra, _) = call(1, Payload::Contiguous(Bytes::from_static(b"a")));
    let (b, _rb, progress_b) = call(2, Payload::Contiguous(Bytes::from_static(b"b")));
    session.submit(a);
    session.submit(b);
    assert!(!progress_b.sent(), "waiting, not opened");
    assert_eq!(session.calls(), 2);
    let (head, payload) = server_frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &encoded(&[
            (b":status", b"200"),
            (b"grpc-status", b"3"),
            (b"grpc-message", b"bad%20data"),
        ]),
    );
    session.receive(head, payload).unwrap();
    let answer = ra.try_recv().unwrap().unwrap();
    assert_eq!((answer.code, answer.message.as_str()), (3, "bad data"));
    assert!(progress_b.sent(), "opened once the first ended");
    session.fill(usize::MAX);
    let frames = frames_out(&mut session);
    assert!(
        frames
            .iter()
            .any(|(h, _)| h.kind == kind::HEADERS && h.stream == 3)
    );
}

#[test]
fn refusals_and_goaways_say_the_call_was_not_processed_and_resets_say_it_may_have_been() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    let (a, mut ra, _) = call(1, Payload::Contiguous(Bytes::from_static(b"a")));
    let (b, mut rb, _) = call(2, Payload::Contiguous(Bytes::from_static(b"b")));
    let (c, mut rc, _) = call(3, Payload::Contiguous(Bytes::from_static(b"c")));
    session.submit(a);
    session.submit(b);
    session.submit(c);
    let (head, payload) = server_frame(
        kind::RST_STREAM,
        0,
        1,
        &(Reason::RefusedStream as u32).to_be_bytes(),
    );
    session.receive(head, payload).unwrap();
    assert!(matches!(ra.try_recv().unwrap(), Err(Ended::Refused(_))));
    let (head, payload) = server_frame(
        kind::RST_STREAM,
        0,
        3,
        &(Reason::Internal as u32).to_be_bytes(),
    );
    session.receive(head, payload).unwrap();
    assert!(matches!(rb.try_recv().unwrap(), Err(Ended::Broken(_))));
    // GOAWAY with last stream 3: stream 5 was not processed, and nothing new opens.
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    let (head, payload) = server_frame(kind::GOAWAY, 0, 0, &goaway);
    session.receive(head, payload).unwrap();
    assert!(matches!(rc.try_recv().unwrap(), Err(Ended::Refused(_))));
    assert!(session.draining());
    let (d, mut rd, progress) = call(4, Payload::Contiguous(Bytes::from_static(b"d")));
    session.submit(d);
    assert!(matches!(rd.try_recv().unwrap(), Err(Ended::Unopened)));
    assert!(!progress.sent());
}

#[test]
fn a_cancelled_call_is_reset_after_the_frames_already_queued_for_it() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    let (a, _ra, _) = call(9, Payload::Contiguous(Bytes::from(vec![1u8; 100_000])));
    session.submit(a);
    session.fill(20_000);
    session.cancel(9);
    session.fill(usize::MAX);
    let frames = frames_out(&mut session);
    let last = frames.last().unwrap();
    assert_eq!(last.0.kind, kind::RST_STREAM);
    assert_eq!(last.1, (Reason::Cancel as u32).to_be_bytes());
    let data = data_of(&frames, 1).len();
    assert!((16_384..=20_000 + 16_384).contains(&data), "{data}");
    assert_eq!(session.calls(), 0);
}

#[test]
fn an_answer_before_the_whole_request_stops_the_request() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[(setting::INITIAL_WINDOW_SIZE, 10)]);
    let (a, mut ra, _) = call(1, Payload::Contiguous(Bytes::from(vec![1u8; 1000])));
    session.submit(a);
    session.fill(usize::MAX);
    frames_out(&mut session);
    let (head, payload) = server_frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &encoded(&[(b":status", b"200"), (b"grpc-status", b"12")]),
    );
    session.receive(head, payload).unwrap();
    assert_eq!(ra.try_recv().unwrap().unwrap().code, 12);
    let frames = frames_out(&mut session);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.kind, kind::RST_STREAM);
}

#[test]
fn header_blocks_continue_and_the_table_follows_blocks_for_finished_streams() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    let (a, mut ra, _) = call(1, Payload::Contiguous(Bytes::from_static(b"a")));
    session.submit(a);
    // One encoder, as the server keeps one per connection: a block for a stream already
    // gone adds to the table the next block refers to.
    let mut encoder = loona_hpack::Encoder::new();
    let gone = encoder.encode([
        (&b":status"[..], &b"200"[..]),
        (b"x-large", &[b'v'; 100][..]),
    ]);
    let (head, payload) = server_frame(kind::HEADERS, flag::END_HEADERS, 99, &gone);
    session.receive(head, payload).unwrap();
    let block = encoder.encode([
        (&b":status"[..], &b"200"[..]),
        (b"x-large", &[b'v'; 100][..]),
        (b"grpc-status", b"0"),
    ]);
    let (first, rest) = block.split_at(block.len() / 2);
    let (head, payload) = server_frame(kind::HEADERS, flag::END_STREAM, 1, first);
    session.receive(head, payload).unwrap();
    // Anything but the CONTINUATION breaks the connection.
    let (head, payload) = server_frame(kind::PING, 0, 0, &[0; 8]);
    assert!(session.receive(head, payload).is_err());
    let (head, payload) = server_frame(kind::CONTINUATION, flag::END_HEADERS, 1, rest);
    session.receive(head, payload).unwrap();
    assert_eq!(ra.try_recv().unwrap().unwrap().code, 0);
}

#[test]
fn the_server_must_speak_settings_first_and_pings_are_answered() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    let (head, payload) = server_frame(kind::PING, 0, 0, b"12345678");
    assert!(session.receive(head, payload).is_err());
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    frames_out(&mut session);
    let (head, payload) = server_frame(kind::PING, 0, 0, b"12345678");
    session.receive(head, payload).unwrap();
    let frames = frames_out(&mut session);
    assert_eq!(frames[0].0.kind, kind::PING);
    assert!(frames[0].0.has(flag::ACK));
    assert_eq!(frames[0].1, b"12345678");
}

#[test]
fn answer_bytes_are_given_back_to_the_servers_windows() {
    let mut session = ClientSession::new(false, "oap:11800", 100);
    settings(&mut session, &[]);
    let (a, _ra, _) = call(1, Payload::Contiguous(Bytes::from_static(b"a")));
    session.submit(a);
    session.fill(usize::MAX);
    frames_out(&mut session);
    let (head, payload) = server_frame(
        kind::HEADERS,
        flag::END_HEADERS,
        1,
        &encoded(&[(b":status", b"200")]),
    );
    session.receive(head, payload).unwrap();
    for _ in 0..4 {
        let (head, payload) = server_frame(kind::DATA, 0, 1, &[0; 16_384]);
        session.receive(head, payload).unwrap();
    }
    let frames = frames_out(&mut session);
    let returned = |stream| -> u32 {
        frames
            .iter()
            .filter(|(h, _)| h.kind == kind::WINDOW_UPDATE && h.stream == stream)
            .map(|(_, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
            .sum()
    };
    assert_eq!(returned(0), 65_536);
    assert_eq!(returned(1), 65_536);
}
