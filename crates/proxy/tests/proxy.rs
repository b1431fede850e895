//! skylift-proxy on loopback between a gRPC client and recording upstream sinks.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skylift_proxy::balance::route::Upstream;
use skylift_proxy::listen::state::{Limits, State};
use skylift_proxy::queue::{DropReason, Overflow, QueueConfig};
use skylift_proxy::upstream::client::UpstreamClient;
use skylift_testkit::h2raw::{self, frame as raw_frame, grpc_request as request_block};
use skylift_testkit::sink::{H2Limits, Sink};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A MeterData with service and instance (fields 3 and 4), as protobuf.
fn meter_data(service: &str, instance: &str) -> Vec<u8> {
    let mut out = vec![1 << 3 | 2, 3, 0x0a, 1, b'm'];
    for (field, value) in [(3u8, service), (4u8, instance)] {
        out.push(field << 3 | 2);
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

#[tokio::test]
async fn every_segment_is_acknowledged_delivered_once_and_spread_over_the_upstreams() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    let mut calls = Vec::new();
    for stream in 0..20 {
        let messages: Vec<Vec<u8>> = (0..10)
            .map(|i| segment(&format!("segment {stream}-{i}")))
            .collect();
        let (client, address) = (client.clone(), proxy.address);
        calls.push(tokio::spawn(async move {
            call(&client, address, SEGMENTS, framed(&messages), &[]).await
        }));
    }
    for c in calls {
        let (status, body, _) = c.await.unwrap();
        assert_eq!(status, 0);
        assert_eq!(
            body.as_ref(),
            &[0, 0, 0, 0, 0],
            "one empty Commands message"
        );
    }
    eventually("all 200 segments upstream", || {
        a.messages(SEGMENTS).len() + b.messages(SEGMENTS).len() == 200
    })
    .await;
    assert!(
        !a.messages(SEGMENTS).is_empty() && !b.messages(SEGMENTS).is_empty(),
        "both OAP nodes get traffic"
    );
    let mut all: Vec<Bytes> = a
        .messages(SEGMENTS)
        .into_iter()
        .chain(b.messages(SEGMENTS))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "no duplicates");
    // The sinks record a stream before the proxy reads their answer.
    eventually("the proxy counts all 200 as forwarded", || {
        proxy.state.queue.totals().forwarded == 200
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!(
        (
            totals.received,
            totals.forwarded,
            totals.pending,
            totals.dropped_total()
        ),
        (200, 200, 0, 0)
    );
}

#[tokio::test]
async fn one_instances_meters_always_reach_the_same_upstream() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    for round in 0..10 {
        // collectBatch: each message a MeterDataCollection whose first MeterData names the instance.
        let collection = |instance: &str| {
            let data = meter_data("checkout", instance);
            let mut out = vec![1 << 3 | 2, data.len() as u8];
            out.extend_from_slice(&data);
            out
        };
        let body = framed(&[
            collection("pod-1"),
            collection("pod-2"),
            collection("pod-3"),
        ]);
        let (status, _, _) = call(&client, proxy.address, METERS, body, &[]).await;
        assert_eq!(status, 0, "round {round}");
    }
    eventually("30 meter collections upstream", || {
        a.messages(METERS).len() + b.messages(METERS).len() == 30
    })
    .await;
    for instance in ["pod-1", "pod-2", "pod-3"] {
        let at = |s: &Sink| {
            s.messages(METERS)
                .iter()
                .filter(|m| m.windows(5).any(|w| w == instance.as_bytes()))
                .count()
        };
        let (on_a, on_b) = (at(&a), at(&b));
        assert!(
            on_a == 0 || on_b == 0,
            "{instance} split over both upstreams: {on_a} + {on_b}"
        );
        assert_eq!(on_a + on_b, 10);
    }
}

/// A length-delimited protobuf field (values here are short).
#[tokio::test]
async fn streams_whose_receiver_reads_the_first_message_stay_whole_when_batched() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    const METER_STREAM: &str = "/skywalking.v3.MeterReportService/collect";
    const ALS: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";
    // Three agents' meter streams and two Envoys' access-log streams, 120 messages each
    // (batches hold 50), all at once: batches mix them.
    let mut calls = Vec::new();
    for instance in ["pod-1", "pod-2", "pod-3"] {
        let value = |i: usize| {
            pb::Pb::new().msg(
                1,
                pb::Pb::new()
                    .str(1, &format!("{instance} value {i}"))
                    .double(3, i as f64),
            )
        };
        let mut messages = vec![
            value(0)
                .str(3, "checkout")
                .str(4, instance)
                .varint(5, 1_700_000_000_000)
                .done(),
        ];
        messages.extend((1..120).map(|i| value(i).done()));
        let (client, address) = (client.clone(), proxy.address);
        calls.push(tokio::spawn(async move {
            call(&client, address, METER_STREAM, framed(&messages), &[])
                .await
                .0
        }));
    }
    for node in ["envoy-a", "envoy-b"] {
        let log = |i: usize| pb::Pb::new().msg(2, pb::Pb::new().str(1, &format!("{node} log {i}")));
        let identifier = pb::Pb::new().msg(1, pb::Pb::new().str(1, node));
        let mut messages = vec![pb::Pb::new().msg(1, identifier).done()];
        messages[0].extend(log(0).done());
        messages.extend((1..120).map(|i| log(i).done()));
        let (client, address) = (client.clone(), proxy.address);
        calls.push(tokio::spawn(async move {
            call(&client, address, ALS, framed(&messages), &[]).await.0
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 0);
    }
    let attributed = |method: &str| {
        let mut all = a.attributed(method);
        for (who, n) in b.attributed(method) {
            *all.entry(who).or_default() += n;
        }
        all
    };
    let who = |x: &str, y: &str| (x.to_string(), y.to_string());
    eventually("every set and log upstream", || {
        attributed("MeterReportService/collectBatch")
            .values()
            .sum::<u64>()
            == 3
            && attributed("AccessLogService/StreamAccessLogs")
                .values()
                .sum::<u64>()
                == 240
    })
    .await;

    // Each meter stream became one collectBatch message: the whole set, in order, filed
    // under its instance.
    assert!(
        a.streams_on(METER_STREAM).is_empty() && b.streams_on(METER_STREAM).is_empty(),
        "no set is sent split"
    );
    assert_eq!(
        attributed("MeterReportService/collectBatch"),
        [
            (who("checkout", "pod-1"), 1),
            (who("checkout", "pod-2"), 1),
            (who("checkout", "pod-3"), 1)
        ]
        .into()
    );
    for collection in [a.messages(METERS), b.messages(METERS)].concat() {
        let datas = skylift_testkit::protobuf::messages(&collection, 1).unwrap();
        let instance = skylift_testkit::protobuf::string(datas[0], 4)
            .unwrap()
            .unwrap();
        let names: Vec<String> = datas
            .iter()
            .map(|data| {
                let single = skylift_testkit::protobuf::messages(data, 1).unwrap()[0];
                skylift_testkit::protobuf::string(single, 1)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let expected: Vec<String> = (0..120).map(|i| format!("{instance} value {i}")).collect();
        assert_eq!(names, expected, "the set whole and in order");
    }

    // OAP files every access log under the Envoy that sent it.
    assert_eq!(
        attributed("AccessLogService/StreamAccessLogs"),
        [(who("envoy-a", ""), 120), (who("envoy-b", ""), 120)].into()
    );
    assert!(a.refusals().is_empty() && b.refusals().is_empty());
    let totals = proxy.state.queue.totals();
    assert!(totals.balances());
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_before_http2_and_the_others_keep_working() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], Some(2)).await;
    let (first, second) = (client(), client());
    report(&first, proxy.address, &[segment("1")]).await;
    report(&second, proxy.address, &[segment("2")]).await;

    // The third is closed without a byte of HTTP/2 (as Satellite closes it): a gRPC client
    // takes it for a failed connection and tries again after its backoff.
    let mut third = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let _ = third.write_all(skylift_proxy::h2::frame::PREFACE).await;
    let _ = third.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut received))
        .await
        .expect("closed at once");
    assert!(
        received.is_empty(),
        "nothing sent before the close ({read:?}): {received:?}"
    );

    assert_eq!(
        call(
            &first,
            proxy.address,
            SEGMENTS,
            framed(&[segment("3")]),
            &[]
        )
        .await
        .0,
        0,
        "existing connections are untouched"
    );
    eventually("three segments upstream", || {
        a.messages(SEGMENTS).len() == 3
    })
    .await;
}

#[tokio::test]
async fn oversized_and_malformed_streams_get_a_status_and_disturb_nothing_else() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let client = client();
    let (status, _, _) = call(
        &client,
        proxy.address,
        SEGMENTS,
        framed(&[vec![0; 100 * 1024]]),
        &[],
    )
    .await;
    assert_eq!(status, 8, "RESOURCE_EXHAUSTED");
    let (status, _, _) = call(
        &client,
        proxy.address,
        SEGMENTS,
        Bytes::from_static(&[0, 0, 0, 0, 9, 1]),
        &[],
    )
    .await;
    assert_eq!(status, 13, "INTERNAL for a truncated message");
    let (status, _, _) = call(
        &client,
        proxy.address,
        METERS,
        framed(&[vec![3 << 3 | 2, 50, 1]]),
        &[],
    )
    .await;
    assert_eq!(
        status, 3,
        "INVALID_ARGUMENT for a meter message that is not protobuf"
    );
    report(&client, proxy.address, &[segment("fine")]).await;
    eventually("the good segment upstream", || {
        a.messages(SEGMENTS).len() == 1
    })
    .await;
}

/// The proxy's own HTTP/2 client (the driven connections) against servers that keep
/// their windows small, take two streams at a time and send every connection away
/// (GOAWAY) after three calls, as a restarting or rebalancing OAP does.
#[tokio::test]
async fn strict_upstreams_that_keep_sending_connections_away_get_every_report_once() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    for sink in [&a, &b] {
        sink.set_h2_limits(H2Limits {
            stream_window: Some(1024),
            max_streams: Some(2),
            goaway_after: Some(3),
        });
    }
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    // In waves, so the batches are many calls.
    for wave in 0..10 {
        let mut calls = Vec::new();
        for stream in 0..3 {
            // Larger than a window, so each batch waits for the server to open it.
            let messages: Vec<Vec<u8>> = (0..10)
                .map(|i| segment(&format!("segment {wave}-{stream}-{i} {}", "x".repeat(1500))))
                .collect();
            let (client, address) = (client.clone(), proxy.address);
            calls.push(tokio::spawn(async move {
                call(&client, address, SEGMENTS, framed(&messages), &[]).await
            }));
        }
        for c in calls {
            assert_eq!(c.await.unwrap().0, 0);
        }
        let acknowledged = 30 * (wave + 1);
        eventually("the wave forwarded", || {
            proxy.state.queue.totals().forwarded == acknowledged
        })
        .await;
    }
    let mut all: Vec<Bytes> = a
        .messages(SEGMENTS)
        .into_iter()
        .chain(b.messages(SEGMENTS))
        .collect();
    assert_eq!(all.len(), 300, "every segment upstream, none twice");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300);
    assert!(
        a.connections() + b.connections() > 6,
        "the servers sent connections away ({} connections)",
        a.connections() + b.connections()
    );
    assert_eq!(
        ejections_total(&proxy),
        0,
        "a server sending a connection away has not failed"
    );
    assert_eq!(proxy.state.queue.totals().dropped_total(), 0);
}

/// An upstream that refuses a stream (REFUSED_STREAM), then sends the connection away
/// before the retry's stream (GOAWAY below it), has processed neither: the proxy makes
/// the call again, on a fresh connection after the GOAWAY, and gets its answer.
#[tokio::test]
async fn calls_an_upstream_refused_unprocessed_are_made_again_and_answered() {
    use skylift_proxy::upstream::driven::Call;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                socket.write_all(&raw_frame(0x4, 0, 0, &[])).await.unwrap();
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if buffer.starts_with(h2raw::PREFACE) {
                        buffer.drain(..h2raw::PREFACE.len());
                    }
                    while let Some(frame) = h2raw::take_frame(&mut buffer) {
                        if frame.kind != 0x1 {
                            continue;
                        }
                        let reply = match seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                            // RST_STREAM, REFUSED_STREAM.
                            0 => raw_frame(0x3, 0, frame.stream, &7u32.to_be_bytes()),
                            // GOAWAY below this stream: not processed.
                            1 => {
                                let mut payload = (frame.stream - 2).to_be_bytes().to_vec();
                                payload.extend_from_slice(&0u32.to_be_bytes());
                                raw_frame(0x7, 0, 0, &payload)
                            }
                            _ => raw_frame(
                                0x1,
                                0x5,
                                frame.stream,
                                &h2raw::block(&[
                                    (":status", "200"),
                                    ("content-type", "application/grpc"),
                                    ("grpc-status", "0"),
                                ]),
                            ),
                        };
                        socket.write_all(&reply).await.unwrap();
                    }
                }
            });
        }
    });
    let client = UpstreamClient::new(1, 100);
    let call = Call {
        upstream: &address,
        path: "/skywalking.v3.ManagementService/keepAlive",
        encoding: None,
        payload: Bytes::from_static(&[0, 0, 0, 0, 0]).into(),
    };
    let answer = client.call(call, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.code, 0);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn reports_oap_would_refuse_are_refused_to_their_client_and_never_queued() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let client = client();
    const KEEP_ALIVE: &str = "/skywalking.v3.ManagementService/keepAlive";
    let ping = |instance: &str| pb::Pb::new().str(1, "svc").str(2, instance).done();
    let refused = [
        // A unary call takes exactly one message (grpc-java's UnaryServerCallHandler).
        (
            KEEP_ALIVE,
            framed(&[ping("i-1"), ping("i-2")]),
            vec![],
            13,
            "Too many requests",
        ),
        (
            KEEP_ALIVE,
            Bytes::new(),
            vec![],
            13,
            "Half-closed without a request",
        ),
        // Compressed with no grpc-encoding to read it by.
        (
            SEGMENTS,
            compressed(&segment("x")),
            vec![],
            13,
            "without grpc-encoding",
        ),
        // An encoding OAP has no decompressor for.
        (
            SEGMENTS,
            framed(&[segment("x")]),
            vec![("grpc-encoding", "snappy")],
            12,
            "snappy",
        ),
        // An event without a layer: OAP would close the stream there.
        (
            "/skywalking.v3.EventService/collect",
            framed(&[pb::Pb::new()
                .str(1, "uuid")
                .msg(2, pb::Pb::new().str(1, "svc"))
                .done()]),
            vec![],
            3,
            "Layer field is required",
        ),
    ];
    for (path, body, headers, code, why) in refused {
        let (status, _, trailers) = call(&client, proxy.address, path, body, &headers).await;
        let message = trailers
            .get("grpc-message")
            .map(|m| m.to_str().unwrap().to_string());
        assert_eq!(status, code, "{path}: {message:?}");
        assert!(
            message.unwrap_or_default().contains(why),
            "{path}: {trailers:?}"
        );
    }
    let totals = proxy.state.queue.totals();
    assert_eq!(
        (totals.received, totals.pending),
        (0, 0),
        "nothing was queued"
    );

    // A well-formed heartbeat is one upstream call.
    let (status, _, _) = call(
        &client,
        proxy.address,
        KEEP_ALIVE,
        framed(&[ping("i-3")]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
    eventually("the heartbeat upstream", || {
        a.attributed("ManagementService/keepAlive")
            == [(("svc".to_string(), "i-3".to_string()), 1)].into()
    })
    .await;
    assert!(a.refusals().is_empty(), "{:?}", a.refusals());
}

/// `message` in one gRPC frame with the compressed flag set.
fn compressed(message: &[u8]) -> Bytes {
    let mut out = framed(&[message.to_vec()]).to_vec();
    out[0] = 1;
    Bytes::from(out)
}

/// `skylift_proxy_<name>{<labels>}` as exported, or 0.
fn metric(state: &State, line_start: &str) -> u64 {
    state
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0, |n| n.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test]
async fn a_report_every_upstream_refuses_is_dropped_and_counted_and_the_rest_of_its_batch_arrives()
{
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    // OAPs older than 10.1 take messages of at most 4 MiB; here, 2 KiB.
    for sink in [&a, &b] {
        sink.set_max_message_size(2048);
    }
    let proxy = proxy_with(
        &[&a, &b],
        None,
        QueueConfig {
            partitions: 1,
            flush_interval: Duration::from_millis(200),
            ..queue_config()
        },
    )
    .await;
    let client = client();
    // Twenty segments and one too large for these OAPs, from two clients, queued together:
    // one batch, refused at the large segment once OAP handled the ones before it.
    let good: Vec<Vec<u8>> = (0..20).map(|i| segment(&format!("good {i}"))).collect();
    let (first, second) = tokio::join!(
        call(&client, proxy.address, SEGMENTS, framed(&good), &[]),
        call(
            &client,
            proxy.address,
            SEGMENTS,
            framed(&[large_segment("large", 4000)]),
            &[]
        )
    );
    assert_eq!((first.0, second.0), (0, 0), "both acknowledged");
    // And events, each its own upstream stream: one names a layer this OAP does not have.
    const EVENTS: &str = "/skywalking.v3.EventService/collect";
    let event = |uuid: &str, layer: &str| {
        pb::Pb::new()
            .str(1, uuid)
            .msg(2, pb::Pb::new().str(1, "svc"))
            .str(9, layer)
            .done()
    };
    let events = [
        event("e1", "GENERAL"),
        event("e2", "A_LAYER_FROM_THE_FUTURE"),
        event("e3", "MESH"),
    ];
    let (status, _, _) = call(&client, proxy.address, EVENTS, framed(&events), &[]).await;
    assert_eq!(status, 0);
    eventually("everything settled", || {
        let totals = proxy.state.queue.totals();
        totals.received == 24 && totals.pending == 0
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!(
        (
            totals.forwarded,
            totals.dropped(DropReason::RefusedByUpstream)
        ),
        (22, 2),
        "{totals:?}"
    );
    assert!(totals.balances());
    let mut segments: Vec<Bytes> = [a.messages(SEGMENTS), b.messages(SEGMENTS)].concat();
    let arrived = segments.len();
    segments.sort();
    segments.dedup();
    assert_eq!(segments.len(), 20, "every good segment arrived");
    assert!(
        arrived <= 40,
        "those OAP handled before the refusal arrive at most twice: {arrived}"
    );
    let events_at = |sink: &Sink| {
        sink.attributed("EventService/collect")
            .values()
            .sum::<u64>()
    };
    assert_eq!(
        events_at(&a) + events_at(&b),
        2,
        "the known layers' events, once each"
    );
    let metrics = proxy.state.metrics.encode();
    assert!(
        !metrics.contains("skylift_proxy_upstream_ejections_total{"),
        "a refusal is not a failure: {metrics}"
    );
    for (protocol, n) in [("segment", 1), ("event", 1)] {
        assert!(
            metrics.contains(&format!(
                r#"skylift_proxy_dropped_total{{protocol="{protocol}",reason="refused_by_upstream"}} {n}"#
            )),
            "{metrics}"
        );
    }
    assert!(
        metric(
            &proxy.state,
            r#"skylift_proxy_upstream_refusals_total{protocol="segment",code="8"} "#
        ) >= 2
    );
    assert!(
        metric(
            &proxy.state,
            r#"skylift_proxy_upstream_refusals_total{protocol="event",code="3"} "#
        ) == 1
    );
    let now = std::time::Instant::now();
    assert!(!proxy.state.pool.balancer.is_ejected(&a.address(), now));
    assert!(!proxy.state.pool.balancer.is_ejected(&b.address(), now));
}

#[tokio::test]
async fn an_upstream_without_a_receiver_refuses_its_reports_without_being_ejected() {
    const ACCESS_LOGS: &str = "/skywalking.v3.EBPFAccessLogService/collect";
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    // OAP a runs without the eBPF receiver module.
    a.disable(ACCESS_LOGS);
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    let access_log = |n: u64| {
        pb::Pb::new()
            .msg(1, pb::Pb::new().str(1, "node-1"))
            .msg(
                2,
                pb::Pb::new().msg(1, pb::Pb::new().msg(1, pb::Pb::new().str(1, "svc"))),
            )
            .msg(3, pb::Pb::new().msg(4, pb::Pb::new().varint(3, n)))
            .done()
    };
    for round in 0..6 {
        let (status, _, _) = call(
            &client,
            proxy.address,
            ACCESS_LOGS,
            framed(&[access_log(round)]),
            &[],
        )
        .await;
        assert_eq!(status, 0);
        // Segments go on, to both.
        report(&client, proxy.address, &[segment(&format!("s{round}"))]).await;
    }
    eventually("every access log at b", || {
        b.attributed("EBPFAccessLogService/collect")
            .values()
            .sum::<u64>()
            == 6
    })
    .await;
    eventually("the segments delivered", || {
        a.messages(SEGMENTS).len() + b.messages(SEGMENTS).len() == 6
    })
    .await;
    assert!(
        !a.messages(SEGMENTS).is_empty(),
        "a still takes what it serves"
    );
    assert!(
        !proxy
            .state
            .pool
            .balancer
            .is_ejected(&a.address(), std::time::Instant::now())
    );

    // Now no upstream serves them: dropped and counted, not retried for ever.
    b.disable(ACCESS_LOGS);
    call(
        &client,
        proxy.address,
        ACCESS_LOGS,
        framed(&[access_log(9)]),
        &[],
    )
    .await;
    eventually("the refused report settled", || {
        dropped(&proxy, DropReason::RefusedByUpstream) == 1
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!(totals.pending, 0);
    assert!(totals.balances());
}

#[tokio::test]
async fn the_proxy_stays_ready_while_oap_is_down_and_queues_until_it_is_back() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", admin.local_addr().unwrap());
    let proxy_state = proxy.state.clone();
    let router = skylift_proxy::ops::admin::router(proxy_state.clone());
    tokio::spawn(async move { axum::serve(admin, router).await });
    // OAP goes down: the health checks eject it.
    a.set_failing(true);
    eventually("the upstream ejected", || {
        proxy_state
            .pool
            .balancer
            .is_ejected(&a.address(), std::time::Instant::now())
    })
    .await;
    let (code, body) = skylift_testkit::http::get(&readyz).await.unwrap();
    assert_eq!(
        code, 200,
        "agents keep a proxy that can queue for them: {body}"
    );
    assert!(body.contains("all 1 upstreams are failing"), "{body}");
    let (_, metrics) = skylift_testkit::http::get(&readyz.replace("/readyz", "/metrics"))
        .await
        .unwrap();
    let down = format!(
        "skylift_proxy_upstream_up{{upstream=\"{}\"}} 0",
        a.address()
    );
    assert!(metrics.contains(&down), "{metrics}");
    // Reports are taken meanwhile, and delivered once OAP is back.
    report(&client(), proxy.address, &[segment("during the outage")]).await;
    a.set_failing(false);
    eventually("the queued report delivered", || {
        a.messages(SEGMENTS).len() == 1
    })
    .await;
    let (code, body) = skylift_testkit::http::get(&readyz).await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ready: 1 of 1 upstreams up"));
    // A shutdown is what takes the proxy out of its Service.
    proxy_state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(skylift_testkit::http::get(&readyz).await.unwrap().0, 503);
}

#[tokio::test]
async fn unknown_services_pass_through_with_their_trailers_and_status() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let client = client();
    let (status, body, trailers) = call(
        &client,
        proxy.address,
        "/test.Echo/Say",
        framed(&[b"hello".to_vec()]),
        &[("x-echo-status", "7")],
    )
    .await;
    assert_eq!(status, 7, "the upstream's status comes back");
    assert_eq!(
        trailers.get("x-sink-echo").map(|v| v.to_str().unwrap()),
        Some("yes")
    );
    assert_eq!(body, framed(&[b"hello".to_vec()]));
}

#[tokio::test]
async fn a_failing_upstream_loses_nothing_while_another_is_up() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    a.set_failing(true);
    let proxy = proxy(&[&a, &b], None).await;
    report_streams(proxy.address, 10).await;
    eventually("all 100 segments at the healthy upstream", || {
        b.messages(SEGMENTS).len() == 100 && proxy.state.queue.totals().forwarded == 100
    })
    .await;
    assert!(a.messages(SEGMENTS).is_empty());
    let totals = proxy.state.queue.totals();
    assert!(totals.balances());
    assert_eq!((totals.forwarded, totals.dropped_total()), (100, 0));
}

/// Two OAPs that handle every call at once but answer after the proxy's deadline (a long
/// pause, a node under load): every call times out after OAP took its data. Each report
/// reaches OAP at most its delivery budget's number of times, is then dropped and counted
/// `retries_exhausted`, and is sent no more; nothing goes unaccounted. Before the budget
/// the same reports were sent again for as long as OAP stayed slow.
#[tokio::test]
async fn reports_oap_takes_but_answers_too_late_are_sent_at_most_their_budget() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    for sink in [&a, &b] {
        sink.set_answer_delay(Duration::from_millis(700));
    }
    let delivery = skylift_proxy::upstream::delivery::Delivery {
        attempts: 3,
        call_timeout: Duration::from_millis(200),
        answer_timeout: Duration::from_millis(200),
    };
    let proxy = proxy_delivering(&[&a, &b], delivery).await;
    report_streams(proxy.address, 4).await;
    eventually("every report given up on after its budget", || {
        dropped(&proxy, DropReason::RetriesExhausted) == 40
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert!(totals.balances(), "{totals:?}");
    assert_eq!(
        (totals.received, totals.pending, totals.forwarded),
        (40, 0, 0)
    );
    let copies = |sink: &Sink| sink.messages(SEGMENTS).len();
    let delivered = copies(&a) + copies(&b);
    assert!(
        (40..=3 * 40).contains(&delivered),
        "{delivered} copies of 40 reports reached OAP"
    );
    // Given up on means not sent again: OAP's count stays where it is, and the proxy says
    // why the reports went.
    report(&client(), proxy.address, &[segment("marker")]).await;
    eventually("the marker reached OAP", || {
        a.messages(SEGMENTS).len() + b.messages(SEGMENTS).len() > delivered
    })
    .await;
    eventually("the marker given up on too", || {
        dropped(&proxy, DropReason::RetriesExhausted) == 41
    })
    .await;
    let marker = |sink: &Sink| {
        sink.messages(SEGMENTS)
            .iter()
            .filter(|m| m.windows(6).any(|w| w == b"marker"))
            .count()
    };
    assert_eq!(
        delivered,
        copies(&a) + copies(&b) - marker(&a) - marker(&b),
        "no report given up on was sent again"
    );
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains(
            "skylift_proxy_dropped_total{protocol=\"segment\",reason=\"retries_exhausted\"} 41"
        ),
        "{metrics}"
    );
}

/// The case of a whole pool going slow, time scaled down tenfold: deadlines of 1 s and 3 s
/// stand for the defaults' 10 s and 30 s, and both OAPs handle every call at once but
/// answer it after 1.2 s (12 s) while segments stream in for 4 s (40 s), then for three
/// times as long. OAP takes each batch well within the call deadline and answers within
/// the answer deadline, so each report reaches it once, however long the slow period;
/// nobody is ejected for a slowness the whole pool shares. Before, a call timed out after
/// 1 s whatever OAP had done with it, and each batch was sent again until its budget ran
/// out (4.2 copies per report in the case as first seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pool_gets_each_report_once_however_long_it_stays_slow() {
    use skylift_proxy::upstream::delivery::Delivery;
    async fn run(slow_for: Duration) -> (usize, usize, u64) {
        let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
        for sink in [&a, &b] {
            sink.set_answer_delay(Duration::from_millis(1200));
        }
        let delivery = Delivery {
            call_timeout: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(3),
            ..Delivery::default()
        };
        let proxy = proxy_delivering(&[&a, &b], delivery).await;
        // Streams of 20 segments, one every 50 ms, for the slow period.
        let client = client();
        let started = std::time::Instant::now();
        let mut acknowledged = 0;
        while started.elapsed() < slow_for {
            let messages: Vec<Vec<u8>> = (0..20)
                .map(|i| segment(&format!("r{acknowledged}-{i}")))
                .collect();
            report(&client, proxy.address, &messages).await;
            acknowledged += messages.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for sink in [&a, &b] {
            sink.set_answer_delay(Duration::ZERO);
        }
        eventually_within("every report settled", Duration::from_secs(60), || {
            let totals = proxy.state.queue.totals();
            totals.forwarded + totals.dropped_total() == acknowledged as u64
        })
        .await;
        let totals = proxy.state.queue.totals();
        assert!(
            totals.balances() && totals.dropped_total() == 0,
            "{totals:?}"
        );
        let received: Vec<Bytes> = [&a, &b]
            .iter()
            .flat_map(|sink| sink.messages(SEGMENTS))
            .collect();
        let distinct: std::collections::HashSet<&Bytes> = received.iter().collect();
        assert_eq!(distinct.len(), acknowledged, "every report reached OAP");
        (acknowledged, received.len(), ejections_total(&proxy))
    }
    let (short, long) = (Duration::from_secs(4), Duration::from_secs(12));
    let (acknowledged, copies, ejections) = run(short).await;
    let factor = copies as f64 / acknowledged as f64;
    println!(
        "slow for {short:?}: {copies} copies of {acknowledged} reports ({factor:.2}x), {ejections} ejections"
    );
    let (acknowledged_long, copies_long, ejections_long) = run(long).await;
    let factor_long = copies_long as f64 / acknowledged_long as f64;
    println!(
        "slow for {long:?}: {copies_long} copies of {acknowledged_long} reports ({factor_long:.2}x), {ejections_long} ejections"
    );
    assert!(factor <= 1.5, "{factor:.2} copies per report");
    assert!(factor_long <= 1.5, "{factor_long:.2} copies per report");
    assert!(
        factor_long <= factor * 1.1,
        "the factor grew with the slow period: {factor:.2} then {factor_long:.2}"
    );
    assert!(
        ejections <= 1 && ejections_long <= 1,
        "at most one OAP ejected"
    );
}

/// An OAP that takes data in slowly but steadily (its windows open a little at a time) is
/// progressing, not stuck: a 3 MB batch, three times what its windows hold, takes it about
/// a second to read in, and the call is not timed out for that though its deadline is
/// 400 ms, because the data keeps moving. Before, the deadline counted from the start of
/// the call, and the batch was sent again while OAP was still reading it.
#[tokio::test]
async fn a_batch_taken_in_slowly_but_steadily_is_not_timed_out() {
    use skylift_proxy::upstream::delivery::Delivery;
    let sink = Sink::start().await.unwrap();
    sink.set_read_pace(Duration::from_millis(5));
    let delivery = Delivery {
        call_timeout: Duration::from_millis(400),
        answer_timeout: Duration::from_secs(2),
        ..Delivery::default()
    };
    let queue = QueueConfig {
        partitions: 1,
        ..queue_config()
    };
    let proxy = proxy_with_delivery(
        &[&sink],
        queue,
        UpstreamClient::new(1, 100),
        limits(),
        None,
        delivery,
    )
    .await;
    // 50 segments of 56 KB (the id is in them twice): one batch.
    let padding = "x".repeat(28_000);
    let messages: Vec<Vec<u8>> = (0..50)
        .map(|i| segment(&format!("{i}-{padding}")))
        .collect();
    report(&client(), proxy.address, &messages).await;
    eventually_within("the batch settled", Duration::from_secs(20), || {
        let totals = proxy.state.queue.totals();
        totals.forwarded + totals.dropped_total() == 50
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!((totals.forwarded, totals.dropped_total()), (50, 0));
    let received = sink.messages(SEGMENTS);
    assert_eq!(received.len(), 50, "each segment once");
    assert_eq!(ejections_total(&proxy), 0);
}

/// OAP took the reports and never answered in time: each is sent to the same OAP at most
/// twice, whatever budget is left, and dropped as `retries_exhausted`; with a second OAP,
/// that one is tried before the first is tried again. Before, a single OAP got every report
/// as many times as the budget allowed.
#[tokio::test]
async fn reports_an_oap_took_and_left_unanswered_go_to_it_at_most_twice() {
    use skylift_proxy::upstream::delivery::Delivery;
    let delivery = Delivery {
        call_timeout: Duration::from_millis(500),
        answer_timeout: Duration::from_millis(200),
        ..Delivery::default()
    };
    assert_eq!(delivery.attempts, 5);
    async fn copies_per_report(sinks: &[&Sink], delivery: Delivery) -> Vec<Vec<usize>> {
        for sink in sinks {
            sink.set_answer_delay(Duration::from_millis(800));
        }
        let proxy = proxy_delivering(sinks, delivery).await;
        report_streams(proxy.address, 2).await;
        eventually("every report given up on", || {
            dropped(&proxy, DropReason::RetriesExhausted) == 20
        })
        .await;
        // Copies of each report at each OAP.
        let mut copies: std::collections::BTreeMap<Bytes, Vec<usize>> = Default::default();
        for (i, sink) in sinks.iter().enumerate() {
            for message in sink.messages(SEGMENTS) {
                copies
                    .entry(message)
                    .or_insert_with(|| vec![0; sinks.len()])[i] += 1;
            }
        }
        assert_eq!(copies.len(), 20);
        copies.into_values().collect()
    }
    let only = Sink::start().await.unwrap();
    for copies in copies_per_report(&[&only], delivery).await {
        assert_eq!(copies, [2], "sent once and again once");
    }
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    for copies in copies_per_report(&[&a, &b], delivery).await {
        assert!(copies.iter().all(|&n| (1..=2).contains(&n)), "{copies:?}");
        assert_eq!(
            copies.iter().sum::<usize>(),
            3,
            "each, then one again: {copies:?}"
        );
    }
}

/// Calls that never reach OAP cost a report nothing of its budget: with a budget of one
/// call, reports sent while the only upstream refuses connections are kept through many
/// failed tries, and delivered once an upstream is there.
#[tokio::test]
async fn reports_are_kept_through_any_number_of_calls_that_never_connected() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let sink = Sink::start().await.unwrap();
    let proxy = proxy_delivering(
        &[&sink],
        skylift_proxy::upstream::delivery::Delivery {
            attempts: 1,
            call_timeout: Duration::from_millis(200),
            answer_timeout: Duration::from_millis(200),
        },
    )
    .await;
    proxy.state.pool.upstreams.replace(vec![Upstream {
        address: nobody.clone(),
        weight: 1,
    }]);
    report_streams(proxy.address, 2).await;
    let tries = |proxy: &Proxy| {
        let metrics = proxy.state.metrics.encode();
        let line = format!("skylift_proxy_upstream_send_seconds_count{{upstream=\"{nobody}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    eventually("many failed tries on the closed port", || {
        tries(&proxy) >= 5
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!(
        (totals.pending, totals.dropped_total()),
        (20, 0),
        "{totals:?}"
    );
    proxy.state.pool.upstreams.replace(vec![Upstream {
        address: sink.address(),
        weight: 1,
    }]);
    eventually("all 20 delivered once an upstream is there", || {
        proxy.state.queue.totals().forwarded == 20
    })
    .await;
    assert_eq!(sink.messages(SEGMENTS).len(), 20);
}

/// Ejection is relative: an OAP that answers after the deadline while its peer answers at
/// once is ejected for latency and the peer is not, with nothing lost; when both are slow
/// nobody stands out, and timeouts alone eject nobody (before, every timeout ejected the
/// upstream it happened on, so a slow pool was ejected in turn, node by node).
#[tokio::test]
async fn a_node_slower_than_its_peer_is_ejected_and_a_pool_slow_as_a_whole_is_not() {
    use skylift_proxy::upstream::delivery::Delivery;
    let delivery = Delivery {
        attempts: 5,
        call_timeout: Duration::from_millis(150),
        answer_timeout: Duration::from_millis(150),
    };
    // Report streams of two segments, one every 10 ms, until `until` holds (at most
    // `streams`).
    async fn send(proxy: &Proxy, prefix: &str, streams: usize, until: impl Fn() -> bool) -> usize {
        let client = client();
        let mut sent = 0;
        for stream in 0..streams {
            if until() {
                break;
            }
            let messages: Vec<Vec<u8>> = (0..2)
                .map(|i| segment(&format!("{prefix}{stream}-{i}")))
                .collect();
            report(&client, proxy.address, &messages).await;
            sent += 2;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    }

    async fn start(upstreams: [&Sink; 2], delivery: Delivery) -> Proxy {
        proxy_delivering(&upstreams, delivery).await
    }

    // One slow, one fine.
    let (slow, fine) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    slow.set_answer_delay(Duration::from_millis(500));
    let proxy = start([&slow, &fine], delivery).await;
    // Until the slow one has been judged (20 samples of each): reports keep coming.
    let sent = send(&proxy, "one-slow-", 300, || {
        ejections(&proxy, "latency") > 0
    })
    .await;
    eventually("every report acknowledged by the fine one", || {
        proxy.state.queue.totals().forwarded == sent as u64
    })
    .await;
    let now = std::time::Instant::now();
    let balancer = &proxy.state.pool.balancer;
    assert!(
        balancer.is_ejected(&slow.address(), now),
        "the slow one is out: {} calls reached it",
        slow.messages(SEGMENTS).len()
    );
    assert!(
        !balancer.is_ejected(&fine.address(), now),
        "the fine one is not"
    );
    assert_eq!(ejections(&proxy, "latency"), 1);
    assert_eq!(
        ejections(&proxy, "failure"),
        0,
        "a timeout is not a failure"
    );
    let totals = proxy.state.queue.totals();
    assert!(
        totals.balances() && totals.dropped_total() == 0,
        "{totals:?}"
    );

    // Both slow: the reports time out everywhere; nobody is ejected for it.
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    for sink in [&a, &b] {
        sink.set_answer_delay(Duration::from_millis(500));
    }
    let proxy = start([&a, &b], delivery).await;
    let sent = send(&proxy, "both-slow-", 40, || false).await as u64;
    eventually("every report given up on after its budget", || {
        dropped(&proxy, DropReason::RetriesExhausted) == sent
    })
    .await;
    let now = std::time::Instant::now();
    let ejected = [&a, &b]
        .iter()
        .filter(|s| proxy.state.pool.balancer.is_ejected(&s.address(), now))
        .count();
    assert_eq!(ejected, 0, "a pool slow as a whole keeps its nodes");
    assert_eq!(
        ejections(&proxy, "failure") + ejections(&proxy, "latency"),
        0
    );
    let copies = (a.messages(SEGMENTS).len() + b.messages(SEGMENTS).len()) as u64;
    assert!(
        copies <= 5 * sent,
        "{copies} copies of {sent}: within the budget"
    );
    println!(
        "both slow: {copies} copies of {sent} reports reached OAP ({:.2}x)",
        copies as f64 / sent as f64
    );
}

#[tokio::test]
async fn sync_and_pass_through_calls_honour_grpc_timeout() {
    // An upstream that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let sink = Sink::start().await.unwrap();
    let proxy = proxy(&[&sink], None).await;
    proxy.state.pool.upstreams.replace(vec![Upstream {
        address: silent_address.to_string(),
        weight: 1,
    }]);
    let client = client();
    for path in [
        "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations",
        "/test.Echo/Say",
    ] {
        let started = std::time::Instant::now();
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            call(
                &client,
                proxy.address,
                path,
                framed(&[segment("q")]),
                &[("grpc-timeout", "300m")],
            ),
        )
        .await;
        let (status, _, _) =
            answered.unwrap_or_else(|_| panic!("{path}: no answer at all within 5 s"));
        assert_eq!(status, 4, "{path}: DEADLINE_EXCEEDED");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path}: answered after {:?}",
            started.elapsed()
        );
    }
    held.abort();
}

/// `clients` clients reporting uniquely numbered segments, 20 per stream, until `stop` turns
/// true; returns the segments the proxy acknowledged.
async fn report_until(
    proxy: SocketAddr,
    clients: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Bytes> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut acknowledged = Vec::new();
            let mut call_number = 0;
            while !*stop.borrow() {
                let messages: Vec<Vec<u8>> = (0..20)
                    .map(|i| segment(&format!("client {c} call {call_number} segment {i}")))
                    .collect();
                call_number += 1;
                let (status, _, _) = call(&client, proxy, SEGMENTS, framed(&messages), &[]).await;
                if status == 0 {
                    acknowledged.extend(messages.into_iter().map(Bytes::from));
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged
}

/// Every acknowledged segment reached some sink (duplicates allowed, counted): returns the
/// number of duplicates.
fn every_acknowledged_segment_delivered(acknowledged: &[Bytes], sinks: &[&Sink]) -> usize {
    let delivered: Vec<Bytes> = sinks.iter().flat_map(|s| s.messages(SEGMENTS)).collect();
    let unique: std::collections::HashSet<&Bytes> = delivered.iter().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|m| !unique.contains(m))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged segments lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        lost.first()
    );
    delivered.len() - unique.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_loses_no_acknowledged_segment() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = proxy(&[&a, &b], None).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(report_until(proxy.address, 8, stopped));
    wait_until(Duration::from_secs(10), || {
        a.messages(SEGMENTS).len() >= 200 && b.messages(SEGMENTS).len() >= 200
    })
    .await;
    let before_kill = b.messages(SEGMENTS).len();
    a.kill();
    // The survivor takes a good share more after the cut, the load still running.
    wait_until(Duration::from_secs(10), || {
        b.messages(SEGMENTS).len() >= before_kill + 1000
    })
    .await;
    stop.send(true).unwrap();
    let acknowledged = load.await.unwrap();
    eventually("the queue to drain", || {
        proxy.state.queue.totals().pending == 0
    })
    .await;

    assert!(
        acknowledged.len() > 1000,
        "load ran: {}",
        acknowledged.len()
    );
    assert!(
        b.messages(SEGMENTS).len() > before_kill,
        "the survivor takes over"
    );
    let duplicates = every_acknowledged_segment_delivered(&acknowledged, &[&a, &b]);
    let totals = proxy.state.queue.totals();
    assert!(totals.balances(), "{totals:?}");
    assert_eq!(
        totals.dropped_total(),
        0,
        "nothing dropped while an upstream is up"
    );
    assert_eq!(totals.forwarded, acknowledged.len() as u64);
    eprintln!(
        "killed upstream: {} acknowledged, {duplicates} delivered twice (sent again after the cut)",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_added_and_removed_under_load_lose_nothing_and_removed_ones_get_no_more() {
    let (a, b, c) = (
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
    );
    let proxy = proxy(&[&a], None).await;
    let set = |sinks: &[&Sink]| {
        sinks
            .iter()
            .map(|s| Upstream {
                address: s.address(),
                weight: 1,
            })
            .collect::<Vec<_>>()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(report_until(proxy.address, 8, stopped));
    wait_until(Duration::from_secs(10), || {
        a.messages(SEGMENTS).len() >= 200
    })
    .await;
    proxy.state.pool.upstreams.replace(set(&[&a, &b]));
    wait_until(Duration::from_secs(10), || {
        b.messages(SEGMENTS).len() >= 200
    })
    .await;
    proxy.state.pool.upstreams.replace(set(&[&b, &c]));
    // Sends already under way to the removed upstream finish; then it gets nothing more.
    wait_until(Duration::from_secs(10), || {
        proxy
            .state
            .pool
            .client
            .calls_in_flight(&a.address())
            .iter()
            .all(|n| *n == 0)
    })
    .await;
    let removed_streams = a.streams();
    let (b_then, c_then) = (b.messages(SEGMENTS).len(), c.messages(SEGMENTS).len());
    wait_until(Duration::from_secs(10), || {
        b.messages(SEGMENTS).len() >= b_then + 200 && c.messages(SEGMENTS).len() >= c_then + 200
    })
    .await;
    stop.send(true).unwrap();
    let acknowledged = load.await.unwrap();
    eventually("the queue to drain", || {
        proxy.state.queue.totals().pending == 0
    })
    .await;

    assert_eq!(
        a.streams(),
        removed_streams,
        "a removed upstream gets no new streams"
    );
    for (name, sink) in [("added", &b), ("added later", &c)] {
        assert!(
            !sink.messages(SEGMENTS).is_empty(),
            "the {name} upstream gets traffic"
        );
    }
    let duplicates = every_acknowledged_segment_delivered(&acknowledged, &[&a, &b, &c]);
    assert_eq!(duplicates, 0, "healthy upstreams never get a batch twice");
    let totals = proxy.state.queue.totals();
    assert!(totals.balances(), "{totals:?}");
    assert_eq!(
        (totals.forwarded, totals.dropped_total()),
        (acknowledged.len() as u64, 0)
    );
}

#[tokio::test]
async fn a_full_queue_holds_clients_back_then_refuses_or_drops_and_counts_it() {
    use skylift_proxy::queue::DropReason;
    let down = Sink::start().await.unwrap();
    down.set_failing(true);
    for (overflow, status, reason) in [
        (Overflow::Reject, 8, DropReason::QueueFullRejected),
        (Overflow::Drop, 0, DropReason::QueueFull),
    ] {
        let proxy = proxy_with(
            &[&down],
            None,
            QueueConfig {
                partitions: 1,
                capacity: 30,
                overflow,
                overflow_wait: Duration::from_millis(300),
                ..queue_config()
            },
        )
        .await;
        let client = client();
        let messages: Vec<Vec<u8>> = (0..20).map(|i| segment(&format!("s{i}"))).collect();
        let (first, _, _) = call(&client, proxy.address, SEGMENTS, framed(&messages), &[]).await;
        assert_eq!(first, 0, "room for the first 20");
        // The upstream is down, so nothing leaves: 10 more fit, the rest wait, then overflow.
        let started = std::time::Instant::now();
        let (second, _, trailers) =
            call(&client, proxy.address, SEGMENTS, framed(&messages), &[]).await;
        assert_eq!(second, status, "{overflow:?}: {trailers:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{overflow:?}: the client was held back first"
        );
        if overflow == Overflow::Reject {
            assert_eq!(
                trailers.get("grpc-message").unwrap(),
                "skylift-proxy: queue full; retry later"
            );
        }
        let totals = proxy.state.queue.totals();
        assert!(totals.balances(), "{totals:?}");
        assert_eq!(totals.pending, 30);
        // Reject stops reading the stream at the first refused message; drop reads it all.
        let expected_drops = if overflow == Overflow::Reject { 1 } else { 10 };
        assert_eq!(totals.dropped(reason), expected_drops, "{overflow:?}");
    }
}

#[tokio::test]
async fn upstream_connections_open_before_data_and_unreachable_upstreams_are_ejected_first() {
    let sink = Sink::start().await.unwrap();
    // A port nothing listens on.
    let unreachable = address_nobody_listens_on().to_string();
    let proxy = proxy(&[&sink], None).await;
    proxy.state.pool.upstreams.replace(vec![
        Upstream {
            address: sink.address(),
            weight: 1,
        },
        Upstream {
            address: unreachable.clone(),
            weight: 1,
        },
    ]);
    eventually("a connection to the upstream before any data", || {
        sink.connections() == 1
    })
    .await;
    eventually("the unreachable upstream ejected before any data", || {
        proxy
            .state
            .pool
            .balancer
            .is_ejected(&unreachable, std::time::Instant::now())
    })
    .await;

    let client = client();
    for round in 0..5 {
        let messages = vec![segment(&format!("segment {round}"))];
        report(&client, proxy.address, &messages).await;
    }
    eventually("every segment at the reachable upstream", || {
        sink.messages(SEGMENTS).len() == 5
    })
    .await;
    assert_eq!(
        sink.connections(),
        1,
        "the data reuses the opened connection"
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_stops_counting_and_live_ones_stay() {
    use std::sync::atomic::Ordering;
    let sink = Sink::start().await.unwrap();
    let proxy = proxy(&[&sink], None).await; // keep-alive pings every 300 ms
    let live = client();
    report(&live, proxy.address, &[segment("one")]).await;

    // A client whose host went away: the HTTP/2 handshake, then silence.
    let mut silent = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    eventually("both clients counted", || {
        proxy.state.connections.load(Ordering::Relaxed) == 2
    })
    .await;
    eventually("the silent client no longer counted", || {
        proxy.state.connections.load(Ordering::Relaxed) == 1
    })
    .await;

    // The live client answered every ping: its connection is still the one in use.
    report(&live, proxy.address, &[segment("two")]).await;
    assert_eq!(proxy.state.connections.load(Ordering::Relaxed), 1);
    drop(silent);
}

/// A client whose windows are far smaller than the calls it makes: both directions of a
/// passed-through call must wait for window updates instead of overrunning or stalling.
#[tokio::test]
async fn large_calls_pass_through_under_tight_flow_control_beside_reports() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let tight: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(16 * 1024)
        .http2_initial_connection_window_size(32 * 1024)
        .build_http();
    let messages: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut m = vec![(i % 251) as u8; 10_000];
            m[..4].copy_from_slice(&i.to_be_bytes());
            m
        })
        .collect();
    let large = framed(&messages);
    let echoes = (0..3).map(|_| call(&tight, proxy.address, "/test.Echo/Say", large.clone(), &[]));
    let reports = (0..20).map(|i| {
        call(
            &tight,
            proxy.address,
            SEGMENTS,
            framed(&[segment(&format!("segment-{i}"))]),
            &[],
        )
    });
    let (echoed, reported) = tokio::join!(
        futures::future::join_all(echoes),
        futures::future::join_all(reports)
    );
    for (status, body, _) in echoed {
        assert_eq!(status, 0);
        assert_eq!(body.len(), large.len(), "3 MB echoed whole");
        assert!(body == large, "echoed in order, unchanged");
    }
    assert!(reported.iter().all(|(status, _, _)| *status == 0));
    eventually("the reports arrive", || a.messages(SEGMENTS).len() == 20).await;
}

/// Raw HTTP/2 on one connection: (frame type, flags, stream, payload) of each frame read
/// until the peer closes or `until` matches.
async fn read_frames(
    stream: &mut tokio::net::TcpStream,
    until: impl Fn(&(u8, u8, u32, Vec<u8>)) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut buffer = Vec::new();
    loop {
        while let Some(f) = h2raw::take_frame(&mut buffer) {
            let frame = (f.kind, f.flags, f.stream, f.payload);
            let done = until(&frame);
            frames.push(frame);
            if done {
                return frames;
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return frames,
        }
    }
}

#[tokio::test]
async fn pings_are_answered_and_protocol_errors_close_with_a_reason() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;

    let mut raw = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut hello = skylift_proxy::h2::frame::PREFACE.to_vec();
    hello.extend(raw_frame(0x4, 0, 0, &[]));
    hello.extend(raw_frame(0x6, 0, 0, b"12345678"));
    raw.write_all(&hello).await.unwrap();
    let frames = read_frames(&mut raw, |f| f.0 == 0x6).await;
    assert_eq!(frames[0].0, 0x4, "the server's SETTINGS come first");
    assert!(
        frames.iter().any(|f| f.0 == 0x4 && f.1 == 0x1),
        "SETTINGS acknowledged"
    );
    let pong = frames.last().unwrap();
    assert_eq!((pong.0, pong.1, &pong.3[..]), (0x6, 0x1, &b"12345678"[..]));

    // DATA on a stream never opened is a connection error: GOAWAY PROTOCOL_ERROR.
    raw.write_all(&raw_frame(0x0, 0, 7, b"hello"))
        .await
        .unwrap();
    let frames = read_frames(&mut raw, |f| f.0 == 0x7).await;
    let goaway = frames.last().expect("a GOAWAY");
    assert_eq!(goaway.0, 0x7);
    assert_eq!(&goaway.3[4..8], &1u32.to_be_bytes(), "PROTOCOL_ERROR");
    assert!(String::from_utf8_lossy(&goaway.3[8..]).contains("idle stream"));

    // An HTTP/1.1 client is closed, and the proxy goes on serving.
    let mut http1 = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), http1.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "closed");
    let (status, _, _) = call(
        &client(),
        proxy.address,
        SEGMENTS,
        framed(&[segment("s")]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
}

/// A proxy in front of one OAP double, a raw client connection to it, and what that
/// client writes first (the preface and empty SETTINGS).
async fn raw_client_of_one_oap() -> (Sink, Proxy, tokio::net::TcpStream, Vec<u8>) {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let client = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut out = skylift_proxy::h2::frame::PREFACE.to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    (a, proxy, client, out)
}

#[tokio::test]
async fn a_stream_the_client_resets_keeps_what_it_sent_and_the_connection_goes_on() {
    let (a, proxy, mut client, mut out) = raw_client_of_one_oap().await;
    let block = request_block(SEGMENTS);
    out.extend(raw_frame(0x1, 0x4, 1, &block));
    out.extend(raw_frame(0x0, 0, 1, &framed(&[segment("kept")])));
    out.extend(raw_frame(0x3, 0, 1, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    // The same connection then sends a whole report on stream 3.
    out.extend(raw_frame(0x1, 0x4, 3, &block));
    out.extend(raw_frame(0x0, 0x1, 3, &framed(&[segment("after")])));
    client.write_all(&out).await.unwrap();
    let frames = read_frames(&mut client, |f| f.2 == 3 && f.1 & 0x1 != 0).await;
    assert!(
        frames.iter().all(|f| f.2 != 1 || f.0 == 0x8),
        "nothing is answered on the reset stream"
    );
    let trailers = frames.last().unwrap();
    assert_eq!(
        (trailers.0, trailers.2),
        (0x1, 3),
        "stream 3 ends with trailers"
    );
    eventually("both messages are forwarded", || {
        a.messages(SEGMENTS).len() == 2
    })
    .await;
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("received") && l.contains("\"segment\"") && l.ends_with(" 2")),
        "a reset stream's message counts as received: {metrics}"
    );
}

/// Messages cut from one read are queued together (once per read, or every 64), not when
/// their stream ends: a stream left open still has every message it sent delivered, and a
/// stream ended in the same read is acknowledged only with its messages queued.
#[tokio::test]
async fn messages_of_a_read_reach_oap_while_their_stream_stays_open() {
    let (a, proxy, mut client, mut out) = raw_client_of_one_oap().await;
    let block = request_block(SEGMENTS);
    out.extend(raw_frame(0x1, 0x4, 1, &block));
    out.extend(raw_frame(0x1, 0x4, 3, &block));
    // As agents send them: a DATA frame per message, the two streams interleaved (more
    // messages than a connection stages before queueing), stream 3 ended halfway, stream
    // 1 going on after it and never ended.
    for i in 0..40 {
        out.extend(raw_frame(
            0x0,
            0,
            1,
            &framed(&[segment(&format!("open-{i}"))]),
        ));
        out.extend(raw_frame(
            0x0,
            0,
            3,
            &framed(&[segment(&format!("ended-{i}"))]),
        ));
    }
    out.extend(raw_frame(0x0, 0x1, 3, &[]));
    for i in 40..70 {
        out.extend(raw_frame(
            0x0,
            0,
            1,
            &framed(&[segment(&format!("open-{i}"))]),
        ));
    }
    client.write_all(&out).await.unwrap();
    let frames = read_frames(&mut client, |f| f.2 == 3 && f.1 & 0x1 != 0).await;
    assert_eq!(frames.last().map(|f| (f.0, f.2)), Some((0x1, 3)));
    assert!(
        proxy.state.queue.totals().received >= 80,
        "stream 3 was acknowledged with its messages queued"
    );
    // Nothing more is sent.
    eventually("every message reached OAP", || {
        a.messages(SEGMENTS).len() == 110
    })
    .await;
    let totals = proxy.state.queue.totals();
    assert_eq!((totals.received, totals.forwarded), (110, 110));
    assert!(totals.balances(), "{totals:?}");
    drop(client);
}

#[tokio::test]
async fn streams_beyond_a_connections_share_open_more_connections_to_the_upstream() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy_with_client(&[&a], None, queue_config(), UpstreamClient::new(3, 2)).await;
    eventually("the first connection is opened eagerly", || {
        a.connections() == 1
    })
    .await;
    // Five calls held open (their request bodies never end) keep five upstream streams busy.
    let client: Client<HttpConnector, http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let request = Request::post(format!("http://{}/test.Echo/Say", proxy.address))
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        tx.send(Ok(hyper::body::Frame::data(framed(&[segment("held")]))))
            .await
            .unwrap();
        senders.push(tx);
        calls.push(tokio::spawn(client.request(request)));
    }
    eventually("two streams per connection: three connections", || {
        proxy.state.pool.client.in_flight(&a.address()) == [2, 2, 1]
    })
    .await;
    assert_eq!(
        a.connections(),
        4,
        "three connections for the forwarded streams, besides the one the proxy's own calls use"
    );
    // Ending the calls frees the streams; the connections stay for later streams.
    drop(senders);
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    eventually("no stream counted any more", || {
        proxy.state.pool.client.in_flight(&a.address()).is_empty()
    })
    .await;
}

/// A stream of a channel's items.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A client connection of its own (not pooled), whose end can be watched.
async fn raw_connection(
    proxy: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::StreamBody<ChunkStream>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    )
}

type ChunkStream = futures::stream::BoxStream<
    'static,
    Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
>;

/// A report stream whose body is sent chunk by chunk through the returned channel.
fn open_stream(
    proxy: SocketAddr,
) -> (
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    Request<http_body_util::StreamBody<ChunkStream>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let chunks: ChunkStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(hyper::body::Frame::data(chunk)), rx))
    }));
    let request = Request::post(format!("http://{proxy}{SEGMENTS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    (tx, request)
}

async fn grpc_status_of(response: hyper::Response<hyper::body::Incoming>) -> Option<String> {
    let collected = response.into_body().collect().await.ok()?;
    Some(
        collected
            .trailers()?
            .get("grpc-status")?
            .to_str()
            .ok()?
            .to_string(),
    )
}

/// A report stream left open on a connection of its own while the proxy sends GOAWAY.
struct OpenReport {
    proxy: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<http_body_util::StreamBody<ChunkStream>>,
    chunks: tokio::sync::mpsc::UnboundedSender<Bytes>,
    response: tokio::task::JoinHandle<hyper::Result<hyper::Response<hyper::body::Incoming>>>,
    connection: tokio::task::JoinHandle<()>,
}

impl OpenReport {
    async fn start(proxy: SocketAddr, first: &str) -> OpenReport {
        let (mut sender, connection) = raw_connection(proxy).await;
        let (chunks, request) = open_stream(proxy);
        sender.ready().await.unwrap();
        let response = tokio::spawn(sender.send_request(request));
        chunks.send(framed(&[segment(first)])).unwrap();
        OpenReport {
            proxy,
            sender,
            chunks,
            response,
            connection,
        }
    }

    /// After the GOAWAY: no new stream is taken, the open one still is and is answered
    /// OK, and the connection then ends.
    async fn finish_after_goaway(mut self, last: &str) {
        let (_, late) = open_stream(self.proxy);
        assert!(
            self.sender.send_request(late).await.is_err(),
            "no new streams after the GOAWAY"
        );
        self.chunks.send(framed(&[segment(last)])).unwrap();
        drop(self.chunks);
        let response = self.response.await.unwrap().unwrap();
        assert_eq!(grpc_status_of(response).await.as_deref(), Some("0"));
        tokio::time::timeout(Duration::from_secs(2), self.connection)
            .await
            .expect("the connection ends once its last stream is answered")
            .unwrap();
    }
}

#[tokio::test]
async fn an_aged_connection_is_asked_to_reconnect_and_its_open_stream_is_still_answered() {
    let a = Sink::start().await.unwrap();
    let limits = Limits {
        keepalive: None,
        max_connection_age: Some(Duration::from_millis(400)),
        ..limits()
    };
    let proxy = proxy_with_limits(
        &[&a],
        queue_config(),
        UpstreamClient::new(4, 100),
        limits,
        None,
    )
    .await;
    let report = OpenReport::start(proxy.address, "before the goaway").await;

    // The connection ages out while the stream is open: GOAWAY, not a cut.
    wait_until(Duration::from_secs(5), || {
        proxy
            .state
            .metrics
            .encode()
            .contains("skylift_proxy_connections_aged_out_total 1")
    })
    .await;
    report.finish_after_goaway("after the goaway").await;
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 2).await;
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_connections_aged_out_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_shutdown_sends_goaway_and_answers_the_streams_already_open() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let report = OpenReport::start(proxy.address, "first").await;
    wait_until(Duration::from_secs(5), || {
        proxy.state.queue.totals().received == 1
    })
    .await;

    proxy._close.send(true).unwrap();
    // The listener closes: no new connections are accepted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(proxy.address).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still accepted after the shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.finish_after_goaway("second").await;
    assert_eq!(proxy.state.queue.totals().received, 2);
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_upstream_that_stops_serving_is_ejected_by_health_checks_before_data_fails_on_it() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = proxy(&[&a, &b], None).await;
    let address_a = a.address();
    let ejected = |state: &State| {
        state
            .pool
            .balancer
            .is_ejected(&address_a, std::time::Instant::now())
    };
    // The routine checks (every 200 ms here) have found it serving twice: not ejected.
    let checked = a.streams();
    wait_until(Duration::from_secs(5), || a.streams() >= checked + 2).await;
    assert!(!ejected(&proxy.state));

    // No traffic at all: the routine checks (every 200 ms here, two failures in a row)
    // find it.
    a.set_failing(true);
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(3), || ejected(&proxy.state)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "one failed check is not enough"
    );
    let sends_to_a = |state: &State| {
        let metrics = state.metrics.encode();
        let line =
            format!("skylift_proxy_upstream_send_seconds_count{{upstream=\"{address_a}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let before = sends_to_a(&proxy.state);
    let client = client();
    for i in 0..10u8 {
        let (status, _, _) = call(
            &client,
            proxy.address,
            SEGMENTS,
            framed(&[segment(&format!("checked {i}"))]),
            &[],
        )
        .await;
        assert_eq!(status, 0);
    }
    wait_until(Duration::from_secs(5), || b.messages(SEGMENTS).len() == 10).await;
    assert_eq!(
        sends_to_a(&proxy.state),
        before,
        "no batch was tried on the ejected upstream"
    );

    // Serving again: probed back when its ejection runs out.
    a.set_failing(false);
    wait_until(Duration::from_secs(5), || !ejected(&proxy.state)).await;
}

/// Reads until the proxy closes the connection; how long that took, or `None` if it did
/// not within 5 s.
async fn closed_after(stream: &mut tokio::net::TcpStream) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<(u32, String)> {
    let goaway = frames.iter().find(|f| f.0 == 0x7)?;
    let code = u32::from_be_bytes(goaway.3[4..8].try_into().unwrap());
    Some((code, String::from_utf8_lossy(&goaway.3[8..]).into_owned()))
}

#[tokio::test]
async fn slow_flooding_and_oversized_clients_are_cut_off_and_the_others_keep_working() {
    let a = Sink::start().await.unwrap();
    let proxy = proxy(&[&a], None).await;
    let preface = skylift_proxy::h2::frame::PREFACE;

    // A socket that never speaks, and one that stops halfway through the preface: closed
    // after the header timeout (500 ms here), without a GOAWAY it would not understand.
    for sent in [&[][..], &preface[..10]] {
        let mut slow = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
        slow.write_all(sent).await.unwrap();
        let took = closed_after(&mut slow).await.expect("closed");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
    }

    // A header block begun and never finished (no END_HEADERS, no CONTINUATION).
    let mut slow = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut out = preface.to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    out.extend(raw_frame(0x1, 0, 1, &request_block(SEGMENTS)[..10]));
    slow.write_all(&out).await.unwrap();
    let frames = read_frames(&mut slow, |f| f.0 == 0x7).await;
    let (code, message) = goaway_code(&frames).expect("a GOAWAY");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(message.contains("header block"), "{message}");

    // A stream flood: beyond the 256 concurrent streams the proxy advertises, streams are
    // refused (REFUSED_STREAM, which clients may retry) and the connection stays.
    let mut flood = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut out = preface.to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    let block = request_block(SEGMENTS);
    for i in 0..300u32 {
        out.extend(raw_frame(0x1, 0x4, 2 * i + 1, &block));
    }
    out.extend(raw_frame(0x6, 0, 0, b"stillok!"));
    flood.write_all(&out).await.unwrap();
    let frames = read_frames(&mut flood, |f| f.0 == 0x6 && f.1 == 0x1).await;
    let refused = frames
        .iter()
        .filter(|f| f.0 == 0x3 && f.3 == 7u32.to_be_bytes())
        .count();
    assert_eq!(refused, 300 - 256);
    assert!(goaway_code(&frames).is_none(), "the connection stays");
    assert_eq!(frames.last().unwrap().3, b"stillok!", "and answers pings");

    // A frame above the 16 KiB the proxy accepts: FRAME_SIZE_ERROR.
    let mut big = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    let mut out = preface.to_vec();
    out.extend(raw_frame(0x4, 0, 0, &[]));
    out.extend(raw_frame(0x1, 0x4, 1, &block));
    out.extend(raw_frame(0x0, 0, 1, &vec![0; 20_000]));
    big.write_all(&out).await.unwrap();
    let frames = read_frames(&mut big, |f| f.0 == 0x7).await;
    assert_eq!(
        goaway_code(&frames).expect("a GOAWAY").0,
        0x6,
        "FRAME_SIZE_ERROR"
    );

    // Meanwhile a well-behaved client is served as usual.
    let (status, _, _) = call(
        &client(),
        proxy.address,
        SEGMENTS,
        framed(&[segment("fine")]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_connections_closed_total{reason=\"stalled\"} 3"),
        "{metrics}"
    );
}

/// A report over TLS, presenting `identity` (key and certificate PEM) if given and
/// trusting only `ca_pem`: the grpc-status, or why the call failed.
async fn report_over_tls(
    proxy: SocketAddr,
    ca_pem: &str,
    identity: Option<&str>,
) -> Result<String, String> {
    let messages = vec![segment("over tls"); 3];
    call_over_tls(proxy, ca_pem, identity, SEGMENTS, &messages)
        .await
        .map(|(status, _)| status)
}

/// A call over TLS: its grpc-status and response body, or why it failed.
async fn call_over_tls(
    proxy: SocketAddr,
    ca_pem: &str,
    identity: Option<&str>,
    path: &str,
    messages: &[Vec<u8>],
) -> Result<(String, Bytes), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("http2: {e}"))?;
    tokio::spawn(connection);
    let request = Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(framed(messages)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((status, collected.to_bytes()))
}

#[tokio::test]
async fn clients_are_served_over_mutual_tls_and_renewed_certificates_are_picked_up() {
    let a = Sink::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("skylift-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_ca, client_ca) = (
        skylift_testkit::pki::TestCa::new("server ca"),
        skylift_testkit::pki::TestCa::new("client ca"),
    );
    let (cert, key) = server_ca.server_identity(&["localhost"]);
    let files = skylift_proxy::listen::tls::TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: Some(dir.join("ca.crt")),
        http1: false,
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(files.client_ca.as_ref().unwrap(), &client_ca.cert_pem).unwrap();
    let tls = Arc::new(skylift_proxy::listen::tls::Termination::load(files.clone()).unwrap());
    tokio::spawn(tls.clone().follow(Duration::from_millis(100)));
    let limits = Limits {
        keepalive: None,
        header_timeout: Duration::from_secs(2),
        ..limits()
    };
    let proxy = proxy_with_limits(
        &[&a],
        queue_config(),
        UpstreamClient::new(4, 100),
        limits,
        Some(tls),
    )
    .await;
    let identity = client_ca.client_identity_pem("agent");

    // With a client certificate from the client CA: served, and the data arrives.
    let status = report_over_tls(proxy.address, &server_ca.cert_pem, Some(&identity)).await;
    assert_eq!(status.as_deref(), Ok("0"));
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 3).await;

    // Large both ways: a report of 300 KB, and a pass-through call whose 2 MB come back
    // (TLS records split and joined across reads, and writes held back by a full socket).
    let big: Vec<Vec<u8>> = (0..300u32)
        .map(|i| large_segment(&format!("big {i}"), 1000))
        .collect();
    let (status, _) = call_over_tls(
        proxy.address,
        &server_ca.cert_pem,
        Some(&identity),
        SEGMENTS,
        &big,
    )
    .await
    .unwrap();
    assert_eq!(status, "0");
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 303).await;
    let echo: Vec<Vec<u8>> = (0..64u32)
        .map(|i| vec![(i % 251) as u8; 32 * 1024])
        .collect();
    let (status, body) = call_over_tls(
        proxy.address,
        &server_ca.cert_pem,
        Some(&identity),
        "/test.Echo/Call",
        &echo,
    )
    .await
    .unwrap();
    assert_eq!(status, "0");
    assert_eq!(body, framed(&echo), "every byte came back, in order");

    // Without one, or with one from another CA: not served.
    assert!(
        report_over_tls(proxy.address, &server_ca.cert_pem, None)
            .await
            .is_err()
    );
    let stranger = skylift_testkit::pki::TestCa::new("elsewhere").client_identity_pem("x");
    assert!(
        report_over_tls(proxy.address, &server_ca.cert_pem, Some(&stranger))
            .await
            .is_err()
    );

    // The certificate is renewed (by a new CA here, so the change shows): new
    // connections get the new one.
    let renewed_ca = skylift_testkit::pki::TestCa::new("renewed ca");
    let (cert, key) = renewed_ca.server_identity(&["localhost"]);
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    let mut served = Err(String::new());
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = report_over_tls(proxy.address, &renewed_ca.cert_pem, Some(&identity)).await;
        if served.is_ok() {
            break;
        }
    }
    assert_eq!(served.as_deref(), Ok("0"));
    assert!(
        report_over_tls(proxy.address, &server_ca.cert_pem, Some(&identity))
            .await
            .is_err()
    );
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 306).await;
    let metrics = proxy.state.metrics.encode();
    assert!(
        !metrics.contains("skylift_proxy_tls_handshake_failures_total 0"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_authentication_token_from_a_file_goes_with_every_call_and_follows_the_file() {
    let a = Sink::start().await.unwrap();
    a.require_authentication(Some("first-token"));
    let dir = std::env::temp_dir().join(format!("skylift-proxy-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let authentication = Arc::new(
        skylift_proxy::upstream::authentication::Authentication::load(file.clone()).unwrap(),
    );
    tokio::spawn(authentication.clone().follow(Duration::from_millis(100)));
    let proxy = proxy_with_client(
        &[&a],
        None,
        queue_config(),
        UpstreamClient::new(4, 100).with_authentication(authentication.clone()),
    )
    .await;
    let client = client();

    // Batched reports (no client token could go with them) and a forwarded call whose
    // client sent another token: both carry the proxy's.
    report(&client, proxy.address, &[segment("one")]).await;
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 1).await;
    let (status, _, _) = call(
        &client,
        proxy.address,
        "/test.Echo/Call",
        framed(&[b"echo".to_vec()]),
        &[("authentication", "what-the-agent-had")],
    )
    .await;
    assert_eq!(status, 0);

    assert_eq!(
        a.unauthenticated(),
        0,
        "every call so far (health checks too) carried the token"
    );
    // The Secret is rotated: the proxy follows its file, and OAP then wants the new token.
    std::fs::write(&file, "second-token").unwrap();
    wait_until(Duration::from_secs(3), || {
        authentication.current() == "second-token"
    })
    .await;
    a.require_authentication(Some("second-token"));
    report(&client, proxy.address, &[segment("two")]).await;
    // (A call made between the two switches is refused and, for a batch, sent again.)
    wait_until(Duration::from_secs(5), || a.messages(SEGMENTS).len() == 2).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn upstreams_are_reached_over_mutual_tls_verified_by_the_configured_name() {
    use skylift_proxy::upstream::tls::{Origination, UpstreamTlsFiles};
    let dir = std::env::temp_dir().join(format!("skylift-upstream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_ca, client_ca) = (
        skylift_testkit::pki::TestCa::new("oap ca"),
        skylift_testkit::pki::TestCa::new("proxy client ca"),
    );
    // OAP's certificate names its Service, not the pod IP the proxy connects to.
    let oap = mutual_tls_sink(&server_ca, &["oap.obs.svc"], &client_ca).await;
    std::fs::write(dir.join("ca.crt"), &server_ca.cert_pem).unwrap();
    let identity = client_ca.client_identity_pem("skylift-proxy");
    std::fs::write(dir.join("tls.crt"), &identity).unwrap();
    std::fs::write(dir.join("tls.key"), &identity).unwrap();
    let files = |server_name: Option<&str>, with_client_cert: bool| UpstreamTlsFiles {
        ca: dir.join("ca.crt"),
        client_cert: with_client_cert.then(|| (dir.join("tls.crt"), dir.join("tls.key"))),
        server_name: server_name.map(str::to_string),
    };
    let over_tls = |files: UpstreamTlsFiles| {
        let origination = Arc::new(Origination::load(files).unwrap());
        UpstreamClient::with_tls(2, 100, Some(origination))
    };

    // Verified as the Service name, with the proxy's client certificate: reports are
    // batched upstream and a pass-through call comes back, both over mutual TLS.
    let proxy = proxy_with_client(
        &[&oap],
        None,
        queue_config(),
        over_tls(files(Some("oap.obs.svc"), true)),
    )
    .await;
    let (status, _, _) = call(
        &client(),
        proxy.address,
        SEGMENTS,
        framed(&[segment("one"), segment("two")]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
    wait_until(Duration::from_secs(5), || oap.messages(SEGMENTS).len() == 2).await;
    let (status, body, trailers) = call(
        &client(),
        proxy.address,
        "/test.Echo/Call",
        framed(&[b"echo".to_vec()]),
        &[],
    )
    .await;
    assert_eq!((status, body), (0, framed(&[b"echo".to_vec()])));
    assert_eq!(trailers.get("x-sink-echo").unwrap(), "yes");
    assert_eq!(oap.tls_failures(), 0);

    // Verified as its IP (the certificate has no IP SAN), or without a client
    // certificate: no connection is made, and the data is kept rather than sent in the
    // clear or to an unverified server.
    for wrong in [files(None, true), files(Some("oap.obs.svc"), false)] {
        let refused_before = oap.tls_failures();
        let delivered_before = oap.messages(SEGMENTS).len();
        let proxy = proxy_with_client(&[&oap], None, queue_config(), over_tls(wrong)).await;
        let (status, _, _) = call(
            &client(),
            proxy.address,
            SEGMENTS,
            framed(&[segment("kept")]),
            &[],
        )
        .await;
        assert_eq!(status, 0, "acknowledged: it is queued");
        // Refused, retried and refused again: the event is still not delivered.
        wait_until(Duration::from_secs(5), || {
            oap.tls_failures() > refused_before + 1
        })
        .await;
        assert_eq!(oap.messages(SEGMENTS).len(), delivered_before);
        let totals = proxy.state.queue.totals();
        assert_eq!((totals.pending, totals.forwarded), (1, 0), "still queued");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_upstream_much_slower_than_the_others_is_ejected_and_the_rest_take_its_share() {
    let sinks = [
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
    ];
    let slow = &sinks[3];
    slow.set_delay(Duration::from_millis(150));
    let refs: Vec<&Sink> = sinks.iter().collect();
    let proxy = proxy(&refs, None).await;
    let client = client();
    let report = |i: u32| {
        let client = client.clone();
        async move {
            report(&client, proxy.address, &[segment(&format!("segment {i}"))]).await;
        }
    };
    // Enough batches for every upstream to be judged (20 each), a few at a time.
    let mut i = 0;
    let ejected = |proxy: &Proxy| {
        proxy
            .state
            .metrics
            .encode()
            .contains(r#"skylift_proxy_upstream_ejections_total{reason="latency"} 1"#)
    };
    let started = std::time::Instant::now();
    while !ejected(&proxy) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow upstream was never ejected"
        );
        futures::future::join_all((0..8).map(|_| {
            i += 1;
            report(i)
        }))
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From now on the three fast ones share everything; the slow one's batches in flight
    // when it was ejected still complete.
    wait_until(Duration::from_secs(5), || {
        proxy
            .state
            .pool
            .client
            .calls_in_flight(&slow.address())
            .iter()
            .all(|n| *n == 0)
    })
    .await;
    let slow_before = slow.messages(SEGMENTS).len();
    let fast_before: Vec<usize> = sinks[..3]
        .iter()
        .map(|s| s.messages(SEGMENTS).len())
        .collect();
    for _ in 0..30 {
        i += 1;
        report(i).await;
    }
    wait_until(Duration::from_secs(5), || {
        proxy.state.queue.totals().forwarded == u64::from(i)
    })
    .await;
    assert_eq!(slow.messages(SEGMENTS).len(), slow_before);
    for (sink, before) in sinks[..3].iter().zip(fast_before) {
        assert!(sink.messages(SEGMENTS).len() >= before + 5, "an even share");
    }
    let totals = proxy.state.queue.totals();
    assert_eq!(totals.pending, 0);
    assert_eq!(totals.dropped_total(), 0);
}

#[tokio::test]
async fn a_draining_upstream_finishes_its_work_in_flight_and_gets_nothing_new() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    // Slow, yet within the health checks' 500 ms.
    b.set_delay(Duration::from_millis(400));
    let proxy = proxy(&[&a, &b], None).await;
    let client = client();
    let mut sent = 0u64;
    for i in 0..4 {
        let message = segment(&format!("before {i}"));
        report(&client, proxy.address, &[message]).await;
        sent += 1;
    }
    // A batch is on its way to b when the operator marks b draining.
    wait_until(Duration::from_secs(5), || {
        proxy
            .state
            .pool
            .client
            .calls_in_flight(&b.address())
            .iter()
            .sum::<usize>()
            > 0
    })
    .await;
    let document = skylift_api::UpstreamEndpoints::from_json(&format!(
        r#"{{"endpoints":[{{"address":"{}","weight":1}},{{"address":"{}","weight":1,"draining":true}}]}}"#,
        a.address(),
        b.address()
    ))
    .unwrap();
    let change = proxy.state.pool.upstreams.publish(&document);
    assert_eq!(change.draining, [b.address()]);
    for i in 0..10 {
        let message = segment(&format!("after {i}"));
        report(&client, proxy.address, &[message]).await;
        sent += 1;
    }
    wait_until(Duration::from_secs(5), || {
        proxy.state.queue.totals().forwarded == sent
    })
    .await;
    let (at_a, at_b) = (a.messages(SEGMENTS), b.messages(SEGMENTS));
    assert!(!at_b.is_empty(), "the batch in flight to b was delivered");
    assert_eq!(at_a.len() + at_b.len(), sent as usize, "each exactly once");
    assert!(
        at_b.iter().all(|m| m.windows(6).any(|w| w == b"before")),
        "nothing new went to b"
    );
    let metrics = proxy.state.metrics.encode();
    assert!(
        !metrics.contains("skylift_proxy_upstream_ejections_total{"),
        "draining is not a failure: {metrics}"
    );
}
