//! A real OTLP client (the OpenTelemetry Python SDK 1.45: BatchSpanProcessor, batches of
//! 16, the OTLP gRPC exporter) sending interleaved traces through the skylift-proxy binary
//! to three collector stand-ins. Balanced call by call, a trace's spans land on every
//! collector; with `--otlp-affinity` each trace is whole at one collector, traces spread
//! evenly, and a fourth collector added through the upstreams file takes about a quarter
//! of new traces.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use skylift_e2e::{Process, Scratch, binary, exited_ok, free_port, installed, repo_path};
use skylift_testkit::collector::Collector;

/// Enough traces that a fair spread is within ±20 % of a third (4σ of 1000 random IDs).
const TRACES: usize = 1000;
const SPANS_PER_TRACE: usize = 5;

struct ProxyUnderTest {
    _process: Process,
    port: u16,
    endpoints: std::path::PathBuf,
}

async fn proxy(collectors: &[&Collector], affinity: bool, scratch: &Scratch) -> ProxyUnderTest {
    proxy_with(collectors, affinity, None, scratch).await
}

async fn proxy_with(
    collectors: &[&Collector],
    affinity: bool,
    http_port: Option<u16>,
    scratch: &Scratch,
) -> ProxyUnderTest {
    let endpoints = scratch.path().join(format!("endpoints-{affinity}.json"));
    let addresses: Vec<String> = collectors.iter().map(|c| c.address()).collect();
    std::fs::write(&endpoints, skylift_e2e::endpoints_json(&addresses)).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut command = Command::new(binary("skylift-proxy"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!("--upstreams-file={}", endpoints.display()));
    if affinity {
        command.arg("--otlp-affinity");
    }
    if let Some(port) = http_port {
        command.arg(format!("--upstream-http-port={port}"));
    }
    let process = Process::spawn(
        &format!("skylift-proxy-{affinity}"),
        command,
        scratch.path(),
    );
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;
    ProxyUnderTest {
        _process: process,
        port,
        endpoints,
    }
}

/// Runs the SDK: `TRACES` traces of five spans from `service`, exported through `port`.
async fn send_traces(python: &std::path::Path, port: u16, service: &str, scratch: &Scratch) {
    send_traces_over(python, port, "grpc", service, scratch).await;
}

/// [`send_traces`] with the exporter of `protocol` (grpc or http).
async fn send_traces_over(
    python: &std::path::Path,
    port: u16,
    protocol: &str,
    service: &str,
    scratch: &Scratch,
) {
    let mut app = Command::new(python);
    app.arg(repo_path("tests/python/otel_traces.py")).args([
        &format!("127.0.0.1:{port}"),
        protocol,
        &TRACES.to_string(),
        service,
    ]);
    let mut app = Process::spawn(&format!("otel-{service}"), app, scratch.path());
    exited_ok(&mut app, Duration::from_secs(60)).await;
}

/// The collectors each trace of `service` reached, by trace ID, and its spans in all.
fn where_traces_went(
    collectors: &[&Collector],
    service: &str,
) -> (BTreeMap<Vec<u8>, BTreeSet<usize>>, usize) {
    let mut seen: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
    let mut spans = 0;
    for (i, collector) in collectors.iter().enumerate() {
        for span in collector.spans() {
            if span.service.as_deref() == Some(service) {
                seen.entry(span.trace_id).or_default().insert(i);
                spans += 1;
            }
        }
    }
    (seen, spans)
}

#[tokio::test]
async fn the_python_sdks_traces_are_whole_at_one_collector_with_otlp_affinity() {
    let python = installed(
        "SKYLIFT_PYTHON_OTEL",
        "target/python-otel/bin/python",
        "hack/python-otel.sh (opentelemetry-sdk 1.45)",
    );
    let scratch = Scratch::new("python-otel");
    let collectors = [
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
        Collector::start().await.unwrap(),
    ];
    let three: Vec<&Collector> = collectors[..3].iter().collect();
    let all: Vec<&Collector> = collectors.iter().collect();

    // Call by call (what a user gets today from any L7 balancer): traces are torn apart.
    let plain = proxy(&three, false, &scratch).await;
    send_traces(&python, plain.port, "round-robin", &scratch).await;
    let (seen, spans) = where_traces_went(&three, "round-robin");
    assert_eq!((seen.len(), spans), (TRACES, TRACES * SPANS_PER_TRACE));
    let torn = seen.values().filter(|at| at.len() > 1).count();
    assert!(
        torn > TRACES / 2,
        "only {torn} traces split without affinity"
    );
    eprintln!("call by call: {torn} of {TRACES} traces split over collectors");

    // With affinity: each trace at one collector, the traces spread within ±20 %.
    let affine = proxy(&three, true, &scratch).await;
    send_traces(&python, affine.port, "affinity", &scratch).await;
    let (seen, spans) = where_traces_went(&three, "affinity");
    assert_eq!((seen.len(), spans), (TRACES, TRACES * SPANS_PER_TRACE));
    let torn = seen.values().filter(|at| at.len() > 1).count();
    assert_eq!(torn, 0, "traces split over collectors");
    let shares: Vec<usize> = (0..3)
        .map(|i| seen.values().filter(|at| at.contains(&i)).count())
        .collect();
    eprintln!("with affinity: traces per collector {shares:?}, none split");
    for i in 0..3 {
        let share = seen.values().filter(|at| at.contains(&i)).count() as f64 / TRACES as f64;
        assert!(
            (0.8 / 3.0..=1.2 / 3.0).contains(&share),
            "collector {i} took {:.0} % of the traces",
            share * 100.0
        );
    }

    // A fourth collector through the upstreams file: it takes about a quarter of the new
    // traces (the rest stay where rendezvous hashing put them), still none split.
    std::fs::write(
        &affine.endpoints,
        skylift_e2e::endpoints_json(&all.iter().map(|c| c.address()).collect::<Vec<_>>()),
    )
    .unwrap();
    skylift_e2e::wait_for(
        "the fourth collector in use",
        Duration::from_secs(10),
        || async {
            let probe = tokio::process::Command::new(&python)
                .arg(repo_path("tests/python/otel_traces.py"))
                .args([&format!("127.0.0.1:{}", affine.port), "grpc", "20", "probe"])
                .output()
                .await
                .ok()?;
            assert!(probe.status.success(), "{probe:?}");
            (collectors[3]
                .spans()
                .iter()
                .any(|s| s.service.as_deref() == Some("probe")))
            .then_some(())
        },
    )
    .await;
    send_traces(&python, affine.port, "after", &scratch).await;
    let (seen, spans) = where_traces_went(&all, "after");
    assert_eq!((seen.len(), spans), (TRACES, TRACES * SPANS_PER_TRACE));
    assert!(seen.values().all(|at| at.len() == 1), "traces split");
    let moved = seen.values().filter(|at| at.contains(&3)).count() as f64 / TRACES as f64;
    eprintln!(
        "a fourth collector took {:.0} % of new traces",
        moved * 100.0
    );
    assert!(
        moved <= 0.30,
        "the new collector took {:.0} % of new traces",
        moved * 100.0
    );
    assert!(
        moved > 0.10,
        "the new collector took {:.0} %",
        moved * 100.0
    );
    for collector in &collectors {
        let refused: Vec<_> = collector
            .refusals()
            .into_iter()
            .filter(|(path, _)| !path.contains("grpc.health"))
            .collect();
        assert!(refused.is_empty(), "{refused:?}");
    }
}

/// Three collectors on 127.0.0.2–4 serving OTLP/HTTP on one port (the proxy's
/// `--upstream-http-port` is one for all upstreams). A port free on the first address may
/// be taken on another by the time it is bound there (the collectors' own gRPC listeners
/// take ports as they start, and so do other tests): then all three start again on another.
async fn collectors_sharing_an_http_port() -> (Vec<Collector>, u16) {
    for _ in 0..20 {
        let http_port = skylift_e2e::free_port_on("127.0.0.2");
        let mut collectors = Vec::new();
        for i in 2..5 {
            let ip = format!("127.0.0.{i}").parse().unwrap();
            match Collector::start_at(ip, http_port).await {
                Ok(collector) => collectors.push(collector),
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => break,
                Err(err) => panic!("a collector on {ip}: {err}"),
            }
        }
        if collectors.len() == 3 {
            return (collectors, http_port);
        }
    }
    panic!("no port free on 127.0.0.2, .3 and .4 in 20 tries");
}

/// The SDK's OTLP/HTTP exporter (HTTP/1.1, keep-alive, protobuf) through the proxy's HTTP
/// side (`--upstream-http-port`) to three collectors' OTLP/HTTP ports: each trace whole
/// at one collector.
#[tokio::test]
async fn the_python_sdks_http_exports_are_whole_at_one_collector_with_otlp_affinity() {
    let python = installed(
        "SKYLIFT_PYTHON_OTEL",
        "target/python-otel/bin/python",
        "hack/python-otel.sh (opentelemetry-sdk 1.45)",
    );
    let scratch = Scratch::new("python-otel-http");
    let (collectors, http_port) = collectors_sharing_an_http_port().await;
    let all: Vec<&Collector> = collectors.iter().collect();
    let proxy = proxy_with(&all, true, Some(http_port), &scratch).await;
    send_traces_over(&python, proxy.port, "http", "over-http", &scratch).await;
    let (seen, spans) = where_traces_went(&all, "over-http");
    assert_eq!((seen.len(), spans), (TRACES, TRACES * SPANS_PER_TRACE));
    assert!(seen.values().all(|at| at.len() == 1), "traces split");
    let shares: Vec<usize> = (0..3)
        .map(|i| seen.values().filter(|at| at.contains(&i)).count())
        .collect();
    eprintln!("OTLP/HTTP with affinity: traces per collector {shares:?}, none split");
    for share in shares {
        let share = share as f64 / TRACES as f64;
        assert!((0.8 / 3.0..=1.2 / 3.0).contains(&share), "{share}");
    }
    for collector in &collectors {
        assert!(collector.http_exports().0 > 0, "exports arrived over HTTP");
    }
}
