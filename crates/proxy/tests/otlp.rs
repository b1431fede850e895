//! OTLP exports through skylift-proxy with `--otlp-affinity`, in front of strict collector
//! stand-ins: every span of a trace at one collector, traces spread, a collector added
//! moving only its share, OTLP's partial success when some collector refuses its part, and
//! exports the proxy cannot take apart forwarded whole and counted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use bytes::Bytes;
use skylift_proxy::balance::route::Upstream;
use skylift_proxy::upstream::affinity::{LogsRouting, OtlpAffinity};
use skylift_proxy::upstream::client::UpstreamClient;
use skylift_proxy::upstream::delivery::Delivery;
use skylift_testkit::collector::{self, Collector};
use skylift_testkit::protobuf::{self as pb, Pb};
use skylift_testkit::sink::Status;
use support::*;

fn trace_id(trace: u32) -> Vec<u8> {
    let mut id = vec![0xab; 12];
    id.extend_from_slice(&trace.to_be_bytes());
    id
}

fn span(trace: u32, index: u32) -> Pb {
    Pb::new()
        .bytes(1, &trace_id(trace))
        .bytes(2, &[index as u8, 1, 2, 3, 4, 5, 6, 7])
        .str(5, &format!("t{trace}-s{index}"))
}

fn resource(service: &str) -> Pb {
    let attribute = Pb::new()
        .str(1, "service.name")
        .msg(2, Pb::new().str(1, service));
    Pb::new().msg(1, attribute)
}

/// An `ExportTraceServiceRequest`: for each service, one scope of its spans.
fn trace_export(services: &[(&str, Vec<Pb>)]) -> Vec<u8> {
    let mut request = Pb::new();
    for (service, spans) in services {
        let mut scope = Pb::new().msg(1, Pb::new().str(1, "io.opentelemetry.test"));
        for span in spans {
            scope = scope.msg(2, span.clone());
        }
        request = request.msg(1, Pb::new().msg(1, resource(service)).msg(2, scope));
    }
    request.done()
}

/// An `ExportMetricsServiceRequest`: each service one resource with a gauge of `points`.
fn metrics_export(services: &[(&str, u32)]) -> Vec<u8> {
    let mut request = Pb::new();
    for (service, points) in services {
        let mut gauge = Pb::new();
        for i in 0..*points {
            gauge = gauge.msg(1, Pb::new().varint(6, u64::from(i)));
        }
        let metric = Pb::new().str(1, "queue.depth").msg(5, gauge);
        let scope = Pb::new().msg(2, metric);
        request = request.msg(1, Pb::new().msg(1, resource(service)).msg(2, scope));
    }
    request.done()
}

/// An `ExportLogsServiceRequest` of records, each in a trace or not.
fn logs_export(traces: &[Option<u32>]) -> Vec<u8> {
    let mut scope = Pb::new();
    for (i, trace) in traces.iter().enumerate() {
        let mut record = Pb::new().msg(5, Pb::new().str(1, &format!("line {i}")));
        if let Some(trace) = trace {
            record = record.bytes(9, &trace_id(*trace));
        }
        scope = scope.msg(2, record);
    }
    Pb::new()
        .msg(1, Pb::new().msg(1, resource("checkout")).msg(2, scope))
        .done()
}

fn affinity(logs: LogsRouting) -> OtlpAffinity {
    OtlpAffinity {
        metrics_attribute: "service.name".into(),
        logs,
    }
}

async fn proxy_for(collectors: Vec<String>, logs: LogsRouting) -> Proxy {
    proxy_over(
        collectors,
        queue_config(),
        UpstreamClient::new(4, 100),
        limits(),
        None,
        Delivery::default(),
        |state| state.with_otlp_affinity(affinity(logs)),
    )
    .await
}

/// `count` collectors and a proxy with affinity in front of them (logs round-robin).
async fn pool_of_collectors(count: usize) -> (Vec<Collector>, Proxy) {
    let mut collectors = Vec::new();
    for _ in 0..count {
        collectors.push(Collector::start().await.unwrap());
    }
    let addresses = collectors.iter().map(Collector::address).collect();
    let proxy = proxy_for(addresses, LogsRouting::RoundRobin).await;
    (collectors, proxy)
}

/// What the answer's partial success says: (rejected, message).
fn partial_success(answer: &Bytes) -> (u64, String) {
    if answer.len() <= 5 {
        return (0, String::new());
    }
    let Some(partial) = pb::merged(&answer[5..], 1).unwrap() else {
        return (0, String::new());
    };
    (
        pb::varint_field(&partial, 1).unwrap(),
        pb::string(&partial, 2).unwrap().unwrap_or_default(),
    )
}

async fn export(proxy: &Proxy, path: &str, message: &[u8]) -> (u16, (u64, String), String) {
    let (status, answer, trailers) = call(
        &nodelay_client(),
        proxy.address,
        path,
        framed(&[message.to_vec()]),
        &[],
    )
    .await;
    let said = trailers
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, partial_success(&answer), said)
}

/// `message` exported gzip-compressed (flag 1, `grpc-encoding: gzip`).
async fn export_gzipped(proxy: &Proxy, message: &[u8]) -> (u16, Bytes, http::HeaderMap) {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(message).unwrap();
    let compressed = gzip.finish().unwrap();
    let mut body = vec![1];
    body.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    body.extend_from_slice(&compressed);
    call(
        &nodelay_client(),
        proxy.address,
        collector::TRACES,
        body.into(),
        &[("grpc-encoding", "gzip")],
    )
    .await
}

/// The collectors each trace's spans reached, by trace ID.
fn where_traces_went(collectors: &[&Collector]) -> BTreeMap<Vec<u8>, BTreeSet<usize>> {
    let mut seen: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
    for (i, collector) in collectors.iter().enumerate() {
        for span in collector.spans() {
            seen.entry(span.trace_id).or_default().insert(i);
        }
    }
    seen
}

fn metric(proxy: &Proxy, line: &str) -> u64 {
    proxy
        .state
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Exports of 20 spans (`traces` / 4 of them): traces of five spans each, spread over four exports and
/// interleaved with others, from two services.
fn interleaved_exports(traces: u32) -> Vec<Vec<u8>> {
    let spans: Vec<(u32, u32)> = (0..5)
        .flat_map(|index| (0..traces).map(move |trace| (trace, index)))
        .collect();
    spans
        .chunks(20)
        .map(|chunk| {
            let (a, b): (Vec<_>, Vec<_>) = chunk.iter().partition(|(trace, _)| trace % 2 == 0);
            trace_export(&[
                ("checkout", a.iter().map(|(t, i)| span(*t, *i)).collect()),
                ("payment", b.iter().map(|(t, i)| span(*t, *i)).collect()),
            ])
        })
        .collect()
}

#[tokio::test]
async fn every_span_of_a_trace_reaches_one_collector_and_traces_spread() {
    const TRACES: usize = 1200;
    let (collectors, proxy) = pool_of_collectors(3).await;
    let exports = interleaved_exports(TRACES as u32);
    for message in &exports {
        let (status, partial, said) = export(&proxy, collector::TRACES, message).await;
        assert_eq!((status, partial), (0, (0, String::new())), "{said}");
    }
    let all: Vec<&Collector> = collectors.iter().collect();
    let seen = where_traces_went(&all);
    assert_eq!(seen.len(), TRACES, "every trace arrived");
    let split: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        split.is_empty(),
        "traces split over collectors: {}",
        split.len()
    );
    let spans: usize = collectors.iter().map(|c| c.spans().len()).sum();
    assert_eq!(spans, 5 * TRACES, "every span once");
    // Resource and scope came along: a span's service is its trace's.
    for collector in &collectors {
        for span in collector.spans() {
            let trace = u32::from_be_bytes(span.trace_id[12..].try_into().unwrap());
            let service = if trace % 2 == 0 {
                "checkout"
            } else {
                "payment"
            };
            assert_eq!(span.service.as_deref(), Some(service));
        }
    }
    // Spread: each collector within ±20 % of a third of the traces. Rendezvous hashing
    // over collectors on random ports makes each collector's count binomial (1200, 1/3):
    // ±20 % is ±4.9 standard deviations (with 400 traces it was ±2.8, and CI once saw
    // 104 of 400).
    for (i, _) in collectors.iter().enumerate() {
        let traces = seen.values().filter(|at| at.contains(&i)).count() as f64;
        let share = traces / TRACES as f64 * 3.0;
        assert!(
            (0.8..=1.2).contains(&share),
            "collector {i}: {traces} traces"
        );
    }
    assert_eq!(
        metric(
            &proxy,
            "skylift_proxy_otlp_items_total{signal=\"traces\",outcome=\"forwarded\"}"
        ),
        5 * TRACES as u64
    );
}

#[tokio::test]
async fn a_fourth_collector_takes_about_a_quarter_of_the_traces_and_no_other_moves() {
    let collectors = [
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
    ];
    let proxy = proxy_for(
        collectors[..3].iter().map(Collector::address).collect(),
        LogsRouting::RoundRobin,
    )
    .await;
    let before_exports = interleaved_exports(1000);
    for message in &before_exports {
        assert_eq!(export(&proxy, collector::TRACES, message).await.0, 0);
    }
    let all: Vec<&Collector> = collectors.iter().collect();
    let before = where_traces_went(&all);
    let baseline: Vec<usize> = collectors.iter().map(|c| c.spans().len()).collect();
    proxy.state.pool.upstreams.replace(
        collectors
            .iter()
            .map(|c| Upstream {
                address: c.address(),
                weight: 1,
            })
            .collect(),
    );
    // The same traces again (new spans of them).
    for message in &before_exports {
        assert_eq!(export(&proxy, collector::TRACES, message).await.0, 0);
    }
    let mut after: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (i, collector) in collectors.iter().enumerate() {
        for span in &collector.spans()[baseline[i]..] {
            let previous = after.insert(span.trace_id.clone(), i);
            assert!(
                previous.is_none_or(|p| p == i),
                "a trace split after the change"
            );
        }
    }
    let moved: Vec<_> = after
        .iter()
        .filter(|(trace, at)| !before[*trace].contains(at))
        .collect();
    assert!(
        moved.iter().all(|(_, at)| **at == 3),
        "traces moved only to the new collector"
    );
    // Binomial (1000, 1/4): one standard deviation is 1.4 %, so a quarter ± 10 % is
    // ± 7 of them (0.30 was 3.6, close enough to flake once in thousands of runs).
    let share = moved.len() as f64 / 1000.0;
    assert!(
        (0.15..=0.35).contains(&share),
        "{:.1} % of traces moved (about 1/4 expected)",
        share * 100.0
    );
}

#[tokio::test]
async fn a_collector_refusing_its_part_is_a_partial_success_and_the_rest_is_kept() {
    let (collectors, proxy) = pool_of_collectors(3).await;
    collectors[1].refuse_with(Some(Status::new(
        14,
        "data refused due to high memory usage",
    )));
    let spans: Vec<Pb> = (0..60).map(|trace| span(trace, 0)).collect();
    let (status, (rejected, message), _) = export(
        &proxy,
        collector::TRACES,
        &trace_export(&[("checkout", spans)]),
    )
    .await;
    assert_eq!(status, 0, "some parts were taken: the call succeeds");
    let taken: usize = collectors.iter().map(|c| c.spans().len()).sum();
    assert!(taken > 0 && taken < 60);
    assert_eq!(rejected as usize, 60 - taken, "{message}");
    assert!(
        message.contains("high memory usage"),
        "the collector's reason is passed on: {message}"
    );
    let refused_exports = |c: &Collector| {
        c.refusals()
            .iter()
            .filter(|(path, _)| path == collector::TRACES)
            .count()
    };
    assert_eq!(refused_exports(&collectors[1]), 1, "one part, refused once");
    assert_eq!(ejections_total(&proxy), 0, "a refusal is not a failure");
    assert_eq!(
        metric(
            &proxy,
            "skylift_proxy_otlp_items_total{signal=\"traces\",outcome=\"refused\"}"
        ),
        rejected
    );
    // A collector's own partial success is added in.
    collectors[1].refuse_with(None);
    collectors[0].reject_partially(Some((1, "one span too old")));
    let spans: Vec<Pb> = (0..60).map(|trace| span(trace, 1)).collect();
    let (status, (rejected, message), _) = export(
        &proxy,
        collector::TRACES,
        &trace_export(&[("checkout", spans)]),
    )
    .await;
    assert_eq!((status, rejected), (0, 1), "{message}");
    assert!(message.contains("one span too old"), "{message}");
    // Every collector refusing: their status, so the client retries what nothing took.
    collectors[0].reject_partially(None);
    for collector in &collectors {
        collector.refuse_with(Some(Status::new(14, "memory limiter")));
    }
    let spans: Vec<Pb> = (0..60).map(|trace| span(trace, 2)).collect();
    let (status, _, said) = export(
        &proxy,
        collector::TRACES,
        &trace_export(&[("checkout", spans)]),
    )
    .await;
    assert_eq!(status, 14, "{said}");
    assert!(said.contains("memory limiter"), "{said}");
}

#[tokio::test]
async fn traces_of_a_collector_that_cannot_be_reached_go_to_their_next_choice() {
    let collectors = [
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
    ];
    // A third address with nothing listening.
    let gone = address_nobody_listens_on().to_string();
    let mut addresses: Vec<String> = collectors.iter().map(Collector::address).collect();
    addresses.push(gone);
    let proxy = proxy_for(addresses, LogsRouting::RoundRobin).await;
    for message in &interleaved_exports(100) {
        let (status, partial, said) = export(&proxy, collector::TRACES, message).await;
        assert_eq!((status, partial), (0, (0, String::new())), "{said}");
    }
    let all: Vec<&Collector> = collectors.iter().collect();
    let seen = where_traces_went(&all);
    assert_eq!(seen.len(), 100);
    assert!(seen.values().all(|at| at.len() == 1), "no trace split");
    assert!(
        ejections_total(&proxy) >= 1,
        "the dead collector was ejected"
    );
}

#[tokio::test]
async fn a_services_metrics_reach_one_collector_and_logs_follow_their_routing() {
    let collectors = [
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
    ];
    let addresses: Vec<String> = collectors.iter().map(Collector::address).collect();
    let proxy = proxy_for(addresses.clone(), LogsRouting::RoundRobin).await;
    let services: Vec<String> = (0..30).map(|i| format!("service-{i}")).collect();
    for round in 0..5 {
        let batch: Vec<(&str, u32)> = services
            .iter()
            .skip(round)
            .step_by(2)
            .map(|s| (s.as_str(), 3))
            .collect();
        let (status, partial, said) =
            export(&proxy, collector::METRICS, &metrics_export(&batch)).await;
        assert_eq!((status, partial), (0, (0, String::new())), "{said}");
    }
    let mut at: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut points = 0;
    for (i, collector) in collectors.iter().enumerate() {
        for (service, n) in collector.metric_resources() {
            at.entry(service.unwrap()).or_default().insert(i);
            points += n;
        }
    }
    assert_eq!(at.len(), 30);
    assert!(
        at.values().all(|c| c.len() == 1),
        "a service at one collector"
    );
    assert!(at.values().flatten().collect::<BTreeSet<_>>().len() > 1);
    assert_eq!(
        metric(
            &proxy,
            "skylift_proxy_otlp_items_total{signal=\"metrics\",outcome=\"forwarded\"}"
        ),
        points
    );
    // Logs round-robin: each export whole, to the next collector.
    for _ in 0..3 {
        let logs = logs_export(&[Some(1), Some(2), None, Some(3)]);
        assert_eq!(export(&proxy, collector::LOGS, &logs).await.0, 0);
    }
    let per_collector: Vec<usize> = collectors.iter().map(|c| c.log_records().len()).collect();
    assert_eq!(per_collector, [4, 4, 4], "whole exports, round-robin");
    // Logs by trace ID: a trace's records at one collector, with its spans.
    let by_trace = proxy_for(addresses, LogsRouting::TraceId).await;
    let traces: Vec<Option<u32>> = (0..40).map(Some).chain([None, None]).collect();
    assert_eq!(
        export(&by_trace, collector::LOGS, &logs_export(&traces))
            .await
            .0,
        0
    );
    assert_eq!(
        export(
            &by_trace,
            collector::TRACES,
            &trace_export(&[("checkout", (0..40).map(|t| span(t, 0)).collect())])
        )
        .await
        .0,
        0
    );
    for collector in &collectors {
        let records: BTreeSet<Vec<u8>> = collector.log_records()[4..]
            .iter()
            .filter(|id| !id.is_empty())
            .cloned()
            .collect();
        let spans: BTreeSet<Vec<u8>> = collector.spans().into_iter().map(|s| s.trace_id).collect();
        assert_eq!(records, spans, "a trace's logs where its spans are");
    }
    let untraced: usize = collectors
        .iter()
        .map(|c| {
            c.log_records()[4..]
                .iter()
                .filter(|id| id.is_empty())
                .count()
        })
        .sum();
    assert_eq!(untraced, 2);
}

#[tokio::test]
async fn exports_that_cannot_be_taken_apart_go_whole_and_are_counted() {
    let (collectors, proxy) = pool_of_collectors(2).await;
    // Not protobuf: the collector says so, the proxy counts it.
    let (status, _, said) = export(&proxy, collector::TRACES, &[0x0a, 0x7f, 1, 2]).await;
    assert_eq!(status, 13, "{said}");
    assert!(said.contains("unmarshalling"), "{said}");
    assert_eq!(
        metric(
            &proxy,
            "skylift_proxy_otlp_forwarded_whole_total{signal=\"traces\",reason=\"malformed\"}"
        ),
        1
    );
    // gzip is read (and each part sent plain).
    let message = trace_export(&[("checkout", (0..20).map(|t| span(t, 0)).collect())]);
    let (status, _, trailers) = export_gzipped(&proxy, &message).await;
    assert_eq!(status, 0, "{trailers:?}");
    let spans: usize = collectors.iter().map(|c| c.spans().len()).sum();
    assert_eq!(spans, 20);
    let exports_before: u64 = collectors.iter().map(Collector::exports).sum();
    // A gzip bomb: over the limit once inflated, refused before anything is sent.
    let bomb = vec![0u8; limits().max_message_bytes + 1];
    let (status, _, _) = export_gzipped(&proxy, &bomb).await;
    assert_eq!(status, 8, "RESOURCE_EXHAUSTED");
    let exports: u64 = collectors.iter().map(Collector::exports).sum();
    assert_eq!(exports, exports_before, "the bomb reached no collector");
    // Two messages in a unary call: forwarded whole, and the collector answers for it.
    let two = framed(&[message.clone(), message]);
    call(
        &nodelay_client(),
        proxy.address,
        collector::TRACES,
        two,
        &[],
    )
    .await;
    assert_eq!(
        metric(
            &proxy,
            "skylift_proxy_otlp_forwarded_whole_total{signal=\"traces\",reason=\"framing\"}"
        ),
        1
    );
}
