use super::abuse::MAX_OVERSIZED_HEADERS;
use super::stream::REMEMBERED_CLOSED;
use super::*;
use skylift_testkit::h2raw::grpc_request as request_block;

/// A client's side: frames written with the same writers (the layout is symmetric).
fn preface() -> BytesMut {
    let mut out = BytesMut::from(&frame::PREFACE[..]);
    frame::settings(&[], &mut out);
    out
}

fn open(stream: u32, out: &mut BytesMut) {
    frame::headers(stream, &request_block("/a/b"), false, 16_384, out);
}

/// Feeds `bytes` and collects the events, or the connection error.
fn feed(session: &mut Session, bytes: &[u8]) -> Result<Vec<Event>, ConnectionError> {
    session.input().extend_from_slice(bytes);
    let mut events = Vec::new();
    while let Some(event) = session.poll_event(Instant::now())? {
        events.push(event);
    }
    Ok(events)
}

/// The frames in the session's output, taken: (kind, stream, payload).
fn written(session: &mut Session) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let out = session.output().split();
    let mut rest = &out[..];
    while rest.len() >= frame::HEADER_LEN {
        let head = Head::parse(rest);
        frames.push((
            head.kind,
            head.stream,
            rest[frame::HEADER_LEN..frame::HEADER_LEN + head.len].to_vec(),
        ));
        rest = &rest[frame::HEADER_LEN + head.len..];
    }
    frames
}

fn window_updates(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> u32 {
    frames
        .iter()
        .filter(|f| f.0 == kind::WINDOW_UPDATE && f.1 == stream)
        .map(|f| u32::from_be_bytes(f.2[..4].try_into().unwrap()))
        .sum()
}

fn small() -> Settings {
    Settings {
        max_concurrent_streams: 8,
        stream_window: 64 * 1024,
        connection_window: 100_000,
    }
}

fn started(settings: Settings) -> Session {
    let mut session = Session::new(settings);
    feed(&mut session, &preface()).unwrap();
    written(&mut session);
    session
}

#[test]
fn a_request_opens_delivers_data_and_is_answered() {
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    open(1, &mut out);
    frame::data(1, b"hello", true, &mut out);
    let events = feed(&mut session, &out).unwrap();
    assert!(
        matches!(&events[0], Event::Open { stream: 1, request, end_stream: false } if request.uri().path() == "/a/b")
    );
    assert!(
        matches!(&events[1], Event::Data { stream: 1, data, end_stream: true } if &data[..] == b"hello")
    );
    session.send(
        1,
        Outgoing::Headers {
            block: Bytes::from_static(&[0x88]),
            end: true,
        },
    );
    let frames = written(&mut session);
    assert_eq!(frames[0].0, kind::HEADERS);
    let events = feed(&mut session, &[]).unwrap();
    assert!(matches!(events[..], [Event::Closed { stream: 1 }]));
    assert!(!session.has_streams());
}

#[test]
fn the_connection_window_comes_back_only_as_data_is_consumed() {
    let mut session = started(small());
    let mut out = BytesMut::new();
    open(1, &mut out);
    open(3, &mut out);
    // 2 × 48 000 bytes held, not consumed: under the 100 000 budget.
    for stream in [1, 3] {
        for _ in 0..3 {
            frame::data(stream, &[7; 16_000], false, &mut out);
        }
    }
    feed(&mut session, &out).unwrap();
    let frames = written(&mut session);
    assert_eq!(window_updates(&frames, 0), 0, "nothing given back yet");
    // 4 001 more bytes pass the budget: a flow-control error.
    let mut over = BytesMut::new();
    frame::data(1, &[7; 4_001], false, &mut over);
    let mut replay = started(small());
    let mut both = out.clone();
    both.extend_from_slice(&over);
    let error = feed(&mut replay, &both).unwrap_err();
    assert_eq!(error.reason, Reason::FlowControl);

    // Consumed, the window comes back, and the stream's too (a request body).
    session.consumed(1, 48_000);
    let frames = written(&mut session);
    assert_eq!(window_updates(&frames, 0), 48_000);
    assert_eq!(window_updates(&frames, 1), 48_000);
    // A stream closed with data unconsumed frees it.
    session.reset(3, Reason::Cancel);
    let frames = written(&mut session);
    assert_eq!(window_updates(&frames, 0), 48_000);
}

#[test]
fn a_message_stream_gets_its_window_as_data_arrives_but_not_the_connection() {
    let mut session = started(small());
    let mut out = BytesMut::new();
    open(1, &mut out);
    feed(&mut session, &out).unwrap();
    session.set_flow(1, Flow::Messages);
    let mut out = BytesMut::new();
    for _ in 0..3 {
        frame::data(1, &[1; 16_000], false, &mut out);
    }
    feed(&mut session, &out).unwrap();
    let frames = written(&mut session);
    assert_eq!(
        window_updates(&frames, 1),
        48_000,
        "a message larger than the stream window can arrive"
    );
    assert_eq!(window_updates(&frames, 0), 0);
}

/// One 4 KB entry inserted, then referenced until the block is 64 KB.
fn bomb() -> Vec<u8> {
    let mut block = request_block("/a/b");
    block.extend_from_slice(&[0x40, 5]);
    block.extend_from_slice(b"x-big");
    // The value's length, 4000, as an HPACK integer: 127 + 33 + 30 × 128.
    block.extend_from_slice(&[0x7f, 0x80 | 33, 30]);
    block.extend(std::iter::repeat_n(b'v', 4000));
    while block.len() < headers::MAX_BLOCK - 8 {
        block.push(0x80 | 62);
    }
    block
}

#[test]
fn an_hpack_bomb_is_answered_431_and_the_table_stays_in_step() {
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    frame::headers(1, &bomb(), true, 16_384, &mut out);
    let events = feed(&mut session, &out).unwrap();
    assert!(events.is_empty(), "no stream opened");
    let frames = written(&mut session);
    assert_eq!(frames[0].0, kind::HEADERS);
    assert_eq!(
        frames[0].2,
        [0x08, 0x03, b'4', b'3', b'1'],
        ":status 431 as a literal"
    );
    // The table took the 4 KB entry: a next request may reference it (index 62).
    let mut block = request_block("/c/d");
    block.push(0x80 | 62);
    let mut out = BytesMut::new();
    frame::headers(3, &block, true, 16_384, &mut out);
    let events = feed(&mut session, &out).unwrap();
    assert!(
        matches!(&events[0], Event::Open { request, .. } if request.headers()["x-big"].len() == 4000)
    );
    // A client that keeps at it is sent away.
    let mut error = None;
    for stream in (5..).step_by(2).take(MAX_OVERSIZED_HEADERS as usize) {
        let mut out = BytesMut::new();
        frame::headers(stream, &bomb(), true, 16_384, &mut out);
        if let Err(e) = feed(&mut session, &out) {
            error = Some(e);
        }
    }
    let error = error.expect("closed");
    assert_eq!(error.reason, Reason::EnhanceYourCalm);
    assert_eq!(error.cause, "header_list_too_large");
}

#[test]
fn a_connection_stuck_on_a_partial_frame_keeps_only_that_frame() {
    let mut session = started(Settings::default());
    session.input().reserve(128 * 1024);
    // The first 5 bytes of a PING.
    session.input().extend_from_slice(&[0, 0, 8, kind::PING, 0]);
    assert!(feed(&mut session, &[]).unwrap().is_empty());
    assert!(session.incomplete());
    session.compact();
    assert!(
        session.input().capacity() < 64,
        "{}",
        session.input().capacity()
    );
    // From the smallest read buffer too (4 KiB: more than half of it is the frame's).
    let mut small = started(Settings::default());
    small.input().reserve(4 * 1024);
    small.input().extend_from_slice(&[0, 0, 8, kind::PING, 0]);
    assert!(feed(&mut small, &[]).unwrap().is_empty());
    small.compact();
    assert!(
        small.input().capacity() < 64,
        "{}",
        small.input().capacity()
    );
    let frames_before = session.frames();
    // The rest of the frame completes it.
    feed(&mut session, &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(session.frames(), frames_before + 1);
    assert!(!session.incomplete());
    assert_eq!(written(&mut session)[0].2, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn a_connection_whose_streams_are_done_keeps_no_room_for_them() {
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    for id in [1, 3, 5, 7] {
        open(id, &mut out);
        frame::data(id, b"hello", true, &mut out);
    }
    assert_eq!(feed(&mut session, &out).unwrap().len(), 8);
    // Streams open: their tables keep their room.
    session.compact();
    assert!(session.streams.capacity() >= 4 && session.events.capacity() > 0);
    for id in [1, 3, 5, 7] {
        let block = Bytes::from_static(&[0x88]);
        session.send(id, Outgoing::Headers { block, end: true });
    }
    written(&mut session);
    assert_eq!(feed(&mut session, &[]).unwrap().len(), 4);
    assert!(!session.has_streams());
    session.compact();
    assert_eq!(
        (session.streams.capacity(), session.events.capacity()),
        (0, 0)
    );
    assert_eq!(session.blocked.capacity(), 0);
    assert_eq!(
        (session.input().capacity(), session.output().capacity()),
        (0, 0)
    );
}

#[test]
fn a_read_that_fills_little_of_its_buffer_is_copied_out_and_a_full_one_is_not() {
    // Messages are cut from the read buffer as slices: what a small read leaves in a large
    // buffer must not go with them into the queue.
    let mut session = started(Settings::default());
    session.input().reserve(128 * 1024);
    session.input().extend_from_slice(&[0; 1000]);
    session.fit_input();
    assert!(
        session.input().capacity() <= 2 * 1000 + 4096,
        "{}",
        session.input().capacity()
    );
    assert_eq!(session.input().len(), 1000);
    let mut full = started(Settings::default());
    full.input().reserve(128 * 1024);
    full.input().extend_from_slice(&[0; 100_000]);
    let at = full.input().as_ptr();
    full.fit_input();
    assert_eq!(
        full.input().as_ptr(),
        at,
        "a well-filled buffer is not copied"
    );
}

#[test]
fn rapid_resets_past_the_limit_end_the_connection() {
    let mut session = started(Settings::default());
    let now = Instant::now();
    let mut result = Ok(None);
    for i in 0..=MAX_CLIENT_RESETS {
        let stream = 2 * i + 1;
        let mut out = BytesMut::new();
        open(stream, &mut out);
        out.extend_from_slice(&[0, 0, 4, kind::RST_STREAM, 0]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&8u32.to_be_bytes());
        session.input().extend_from_slice(&out);
        loop {
            result = session.poll_event(now);
            if !matches!(result, Ok(Some(_))) {
                break;
            }
        }
        if i < MAX_CLIENT_RESETS {
            assert!(result.is_ok(), "reset {i} allowed");
        }
    }
    let error = result.unwrap_err();
    assert_eq!(error.cause, "rapid_reset");
    // The same resets spread over time are allowed.
    let mut session = started(Settings::default());
    for i in 0..=MAX_CLIENT_RESETS * 2 {
        let stream = 2 * i + 1;
        let mut out = BytesMut::new();
        open(stream, &mut out);
        out.extend_from_slice(&[0, 0, 4, kind::RST_STREAM, 0]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&8u32.to_be_bytes());
        session.input().extend_from_slice(&out);
        let later = now + ABUSE_WINDOW * (i / MAX_CLIENT_RESETS + 1);
        while session.poll_event(later).unwrap().is_some() {}
    }
}

fn rst_codes(frames: &[(u8, u32, Vec<u8>)], stream: u32) -> Vec<u32> {
    frames
        .iter()
        .filter(|f| f.0 == kind::RST_STREAM && f.1 == stream)
        .map(|f| u32::from_be_bytes(f.2[..4].try_into().unwrap()))
        .collect()
}

#[test]
fn late_frames_on_a_forgotten_stream_refuse_that_stream_and_the_connection_goes_on() {
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    open(1, &mut out);
    feed(&mut session, &out).unwrap();
    // Answered early while the client still sends (an error status, say).
    session.send(
        1,
        Outgoing::Headers {
            block: Bytes::from_static(&[0x88]),
            end: true,
        },
    );
    // A busy connection: enough streams come and go after it that it is forgotten.
    let busy = 3;
    let mut out = BytesMut::new();
    open(busy, &mut out);
    feed(&mut session, &out).unwrap();
    for i in 0..=REMEMBERED_CLOSED as u32 {
        let stream = 5 + 2 * i;
        let mut out = BytesMut::new();
        open(stream, &mut out);
        feed(&mut session, &out).unwrap();
        session.reset(stream, Reason::Cancel);
    }
    feed(&mut session, &[]).unwrap();
    written(&mut session);

    // The client's frames on stream 1, sent before it saw the answer, arrive now.
    let mut late = BytesMut::new();
    frame::data(1, b"late", false, &mut late);
    frame::headers(1, &request_block("/a/b"), true, 16_384, &mut late);
    frame::data(busy, b"still here", true, &mut late);
    let events = feed(&mut session, &late).expect("the connection goes on");
    assert!(
        matches!(
            &events[..],
            [Event::Data {
                stream: 3,
                end_stream: true,
                ..
            }]
        ),
        "{events:?}"
    );
    let frames = written(&mut session);
    assert_eq!(
        rst_codes(&frames, 1),
        [Reason::StreamClosed as u32],
        "refused once, then remembered: {frames:?}"
    );
    assert!(!frames.iter().any(|f| f.0 == kind::GOAWAY));
}

/// A session whose client's connection window (65 535) is spent by answers, with
/// `streams` streams each waiting to send 1 000 bytes more.
fn waiting_for_the_connection_window(streams: u32) -> Session {
    let mut session = started(Settings {
        max_concurrent_streams: 1024,
        ..Settings::default()
    });
    let mut out = BytesMut::new();
    for i in 0..streams {
        open(1 + 2 * i, &mut out);
    }
    feed(&mut session, &out).unwrap();
    for i in 0..streams {
        session.send(
            1 + 2 * i,
            Outgoing::Data {
                data: Bytes::from(vec![0; 1_000]),
                end: false,
                credit: 0,
            },
        );
    }
    assert!(session.send_window <= 0);
    written(&mut session);
    session
}

#[test]
fn a_window_opened_byte_by_byte_costs_a_turn_per_update_not_a_walk_over_the_streams() {
    let streams = 500;
    let mut session = waiting_for_the_connection_window(streams);
    let before = session.retried;
    let mut out = BytesMut::new();
    for _ in 0..200 {
        frame::window_update(0, 1, &mut out);
    }
    feed(&mut session, &out).unwrap();
    let data: Vec<u32> = written(&mut session)
        .iter()
        .filter(|f| f.0 == kind::DATA)
        .map(|f| f.1)
        .collect();
    assert_eq!(data.len(), 200, "a byte each");
    assert!(
        session.retried - before <= 2 * 200,
        "{} streams looked at for 200 bytes of window",
        session.retried - before
    );
    // The waiting streams are served in turn, not the first one again and again.
    let distinct: std::collections::BTreeSet<u32> = data.iter().copied().collect();
    assert_eq!(distinct.len(), 200);
}

#[test]
fn window_updates_nothing_was_sent_for_are_a_flood_and_a_readers_are_not() {
    let now = Instant::now();
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    for _ in 0..=MAX_CONTROL_FRAMES {
        frame::window_update(0, 1, &mut out);
    }
    session.input().extend_from_slice(&out);
    let error = loop {
        match session.poll_event(now) {
            Err(error) => break error,
            Ok(None) => panic!("{} WINDOW_UPDATEs taken", MAX_CONTROL_FRAMES + 1),
            Ok(Some(_)) => {}
        }
    };
    assert_eq!(error.reason, Reason::EnhanceYourCalm);
    assert_eq!(error.cause, "window_update_flood");

    // A client reading a large answer acknowledges every DATA frame on its stream and
    // on the connection: far more than the flood limit, and all earned.
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    open(1, &mut out);
    feed(&mut session, &out).unwrap();
    let answer = 32 << 20;
    session.send(
        1,
        Outgoing::Data {
            data: Bytes::from(vec![0; answer]),
            end: true,
            credit: 0,
        },
    );
    let (mut received, mut updates) = (0, 0);
    while received < answer {
        let frames = written(&mut session);
        let mut acks = BytesMut::new();
        for (kind, stream, payload) in frames.iter().filter(|f| f.0 == kind::DATA) {
            assert_eq!((*kind, *stream), (kind::DATA, 1));
            received += payload.len();
            if payload.is_empty() {
                continue;
            }
            let len = u32::try_from(payload.len()).unwrap();
            frame::window_update(1, len, &mut acks);
            frame::window_update(0, len, &mut acks);
            updates += 2;
        }
        assert!(!acks.is_empty(), "stuck at {received} bytes");
        session.input().extend_from_slice(&acks);
        while session
            .poll_event(now)
            .expect("a reader is no flood")
            .is_some()
        {}
    }
    assert!(updates > 2 * MAX_CONTROL_FRAMES, "{updates}");
}

#[test]
fn answer_credit_comes_back_when_written_or_dropped() {
    let mut session = started(Settings::default());
    let mut out = BytesMut::new();
    open(1, &mut out);
    open(3, &mut out);
    feed(&mut session, &out).unwrap();
    let data = |n: usize| Outgoing::Data {
        data: Bytes::from(vec![0; n]),
        end: false,
        credit: n as u32,
    };
    session.send(
        1,
        Outgoing::Headers {
            block: Bytes::from_static(&[0x88]),
            end: false,
        },
    );
    session.send(1, data(1000));
    assert_eq!(session.take_returned_credit(), 1000, "written");
    // Beyond the client's 65 535-byte window the rest waits, then is dropped.
    session.send(1, data(70_000));
    assert_eq!(session.take_returned_credit(), 0);
    session.reset(1, Reason::Cancel);
    assert_eq!(
        session.take_returned_credit(),
        70_000,
        "dropped with its stream"
    );
}

#[test]
fn a_streams_state_follows_both_ends_as_rfc_9113_names_them() {
    use State::*;
    assert_eq!(State::opened(false), Open);
    assert_eq!(State::opened(true), HalfClosedRemote);
    // The client ends first, then the answer; or the other way round.
    assert_eq!(Open.end_received(), HalfClosedRemote);
    assert_eq!(HalfClosedRemote.end_queued(), Closing);
    assert_eq!(Open.end_queued(), HalfClosedLocal);
    assert_eq!(HalfClosedLocal.end_received(), Closing);
    for state in [Open, HalfClosedRemote, HalfClosedLocal, Closing] {
        assert_eq!(
            state.receiving(),
            matches!(state, Open | HalfClosedLocal),
            "{state:?}"
        );
        assert_eq!(
            state.answered(),
            matches!(state, HalfClosedLocal | Closing),
            "{state:?}"
        );
        // Ending a side twice changes nothing.
        assert_eq!(state.end_received().end_received(), state.end_received());
        assert_eq!(state.end_queued().end_queued(), state.end_queued());
    }
}

/// Parks and unparks a session, as a connection coming to rest and woken does.
fn rested(session: Session, settings: Settings) -> Session {
    assert!(session.can_park());
    Session::unpark(settings, session.park())
}

/// Answers stream `id` and takes what that writes and closes.
fn answer(session: &mut Session, id: u32) {
    session.send(
        id,
        Outgoing::Headers {
            block: Bytes::from_static(&[0x88]),
            end: true,
        },
    );
    written(session);
    assert!(matches!(
        feed(session, &[]).unwrap()[..],
        [Event::Closed { .. }]
    ));
}

#[test]
fn a_session_parked_between_streams_goes_on_as_it_was() {
    let mut session = started(Settings::default());
    // Stream 1 adds `x-tag: one` to the client's HPACK table (literal with incremental
    // indexing, new name).
    let mut block = request_block("/a/b");
    block.extend_from_slice(&[0x40, 5]);
    block.extend_from_slice(b"x-tag");
    block.push(3);
    block.extend_from_slice(b"one");
    let mut out = BytesMut::new();
    frame::headers(1, &block, true, 16_384, &mut out);
    assert_eq!(feed(&mut session, &out).unwrap().len(), 1);
    assert!(!session.can_park(), "a stream is open");
    answer(&mut session, 1);

    let mut session = rested(session, Settings::default());
    // Stream 3 names the table's entry by index 62: the table was kept.
    let mut block = request_block("/a/b");
    block.push(0x80 | 62);
    let mut out = BytesMut::new();
    frame::headers(3, &block, true, 16_384, &mut out);
    let events = feed(&mut session, &out).unwrap();
    assert!(
        matches!(&events[..], [Event::Open { stream: 3, request, .. }] if request.headers()["x-tag"] == "one"),
        "{events:?}"
    );
    answer(&mut session, 3);
    // Late frames on the closed stream are still told from new ones (ignored, not an error).
    let session = rested(session, Settings::default());
    let mut session = session;
    let mut late = BytesMut::new();
    frame::window_update(3, 1, &mut late);
    assert!(feed(&mut session, &late).unwrap().is_empty());
    assert!(
        written(&mut session).is_empty(),
        "no reset for a late frame"
    );

    // The stream ids went on: reopening 1 after a rest is the error it was (STREAM_CLOSED).
    let mut session = rested(session, Settings::default());
    let mut again = BytesMut::new();
    open(1, &mut again);
    let error = feed(&mut session, &again).unwrap_err();
    assert_eq!(error.reason, Reason::StreamClosed, "{error:?}");
}

#[test]
fn a_session_parks_only_with_nothing_under_way() {
    let mut session = Session::new(Settings::default());
    assert!(!session.can_park(), "the preface has not come");
    feed(&mut session, &preface()).unwrap();
    assert!(!session.can_park(), "its SETTINGS are not written");
    written(&mut session);
    assert!(session.can_park());
    // Half a frame read.
    session.input().extend_from_slice(&[0, 0, 8, kind::PING]);
    assert!(!session.can_park(), "a frame is partly read");
    feed(&mut session, &[0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert!(!session.can_park(), "the PING's answer is not written");
    written(&mut session);
    assert!(session.can_park());
    session.start_drain("test");
    assert!(!session.can_park(), "draining");
}

#[test]
fn abuse_counts_go_on_across_rests() {
    let mut session = started(Settings::default());
    let mut error = None;
    for sent in 0..=MAX_CONTROL_FRAMES {
        let mut ping = BytesMut::new();
        frame::ping(
            sent.to_be_bytes().repeat(2).try_into().unwrap(),
            false,
            &mut ping,
        );
        match feed(&mut session, &ping) {
            Ok(_) => {
                written(&mut session);
                // Every tenth PING comes after a rest: the count is kept through it.
                if sent % 10 == 9 {
                    session = rested(session, Settings::default());
                }
            }
            Err(err) => {
                error = Some(err);
                break;
            }
        }
    }
    assert_eq!(error.expect("a PING flood").cause, "ping_flood");
}

#[test]
fn windows_and_the_peers_settings_are_kept_through_a_rest() {
    let mut session = started(small());
    // The client raises its streams' window and frame size, and sends data on stream 1.
    let mut out = BytesMut::new();
    frame::settings(
        &[
            (setting::INITIAL_WINDOW_SIZE, 100),
            (setting::MAX_FRAME_SIZE, 20_000),
        ],
        &mut out,
    );
    open(1, &mut out);
    frame::data(1, &[7; 15_000], false, &mut out);
    frame::data(1, &[7; 15_000], true, &mut out);
    feed(&mut session, &out).unwrap();
    written(&mut session);
    answer(&mut session, 1);
    let mut session = rested(session, small());
    // An answer on stream 3 is cut at the client's stream window (100 bytes), as before.
    let mut out = BytesMut::new();
    open(3, &mut out);
    feed(&mut session, &out).unwrap();
    session.send(
        3,
        Outgoing::Headers {
            block: Bytes::from_static(&[0x88]),
            end: false,
        },
    );
    session.send(
        3,
        Outgoing::Data {
            data: Bytes::from(vec![1; 500]),
            end: true,
            credit: 0,
        },
    );
    let frames = written(&mut session);
    let data: usize = frames
        .iter()
        .filter(|f| f.0 == kind::DATA)
        .map(|f| f.2.len())
        .sum();
    assert_eq!(data, 100, "{frames:?}");
}
