//! HTTP beside gRPC on the proxy's port (`--upstream-http-port`): HTTP/1.1 told apart from
//! HTTP/2 by its first bytes (by ALPN over TLS), keep-alive, chunked bodies, `Expect:
//! 100-continue`, pipelining, 413 and 400, requests balanced per request to the
//! upstreams' HTTP port, OTLP/HTTP exports by affinity, and HTTP/2 requests that are not
//! gRPC. The upstreams are collector stand-ins on 127.0.0.2-4 sharing one HTTP port, as a
//! pool's pods share theirs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use skylift_proxy::listen::state::Limits;
use skylift_proxy::upstream::affinity::{LogsRouting, OtlpAffinity};
use skylift_proxy::upstream::client::UpstreamClient;
use skylift_proxy::upstream::delivery::Delivery;
use skylift_testkit::collector::{self, Collector};
use skylift_testkit::protobuf::Pb;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `count` collectors on 127.0.0.2, .3, …, all with their OTLP/HTTP listener on one port
/// (the proxy's HTTP upstreams share a port), and that port. A port found free on the first
/// address may be taken on another by a test running beside this one: then all of them
/// start again on another port.
async fn collectors(count: u8) -> (Vec<Collector>, u16) {
    for _ in 0..20 {
        let http_port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut started = Vec::new();
        for i in 0..count {
            let ip: IpAddr = format!("127.0.0.{}", i + 2).parse().unwrap();
            match Collector::start_at(ip, http_port).await {
                Ok(collector) => started.push(collector),
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => break,
                Err(err) => panic!("starting a collector on {ip}:{http_port}: {err}"),
            }
        }
        if started.len() == usize::from(count) {
            return (started, http_port);
        }
    }
    panic!(
        "no port free on 127.0.0.2 to 127.0.0.{} in 20 tries",
        count + 1
    );
}

async fn http_proxy(
    collectors: &[Collector],
    http_port: u16,
    affinity: bool,
    limits: Limits,
    tls: Option<Arc<skylift_proxy::listen::tls::Termination>>,
) -> Proxy {
    proxy_over(
        collectors.iter().map(Collector::address).collect(),
        queue_config(),
        UpstreamClient::new(4, 100),
        limits,
        tls,
        Delivery::default(),
        |state| {
            let state = state.with_http(http_port);
            if affinity {
                state.with_otlp_affinity(OtlpAffinity {
                    metrics_attribute: "service.name".into(),
                    logs: LogsRouting::RoundRobin,
                })
            } else {
                state
            }
        },
    )
    .await
}

fn trace_id(trace: u32) -> Vec<u8> {
    let mut id = vec![0xcd; 12];
    id.extend_from_slice(&trace.to_be_bytes());
    id
}

/// An `ExportTraceServiceRequest` of one span of each trace.
fn trace_export(traces: impl IntoIterator<Item = u32>, step: u32) -> Vec<u8> {
    let mut scope = Pb::new();
    for trace in traces {
        scope = scope.msg(
            2,
            Pb::new()
                .bytes(1, &trace_id(trace))
                .bytes(2, &[step as u8; 8])
                .str(5, &format!("t{trace}-{step}")),
        );
    }
    let attribute = Pb::new()
        .str(1, "service.name")
        .msg(2, Pb::new().str(1, "checkout"));
    Pb::new()
        .msg(
            1,
            Pb::new().msg(1, Pb::new().msg(1, attribute)).msg(2, scope),
        )
        .done()
}

/// An HTTP/1.1 response read off a raw connection: status, headers (lower-case names)
/// and body (by Content-Length or chunked).
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn read_answer(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<Answer> {
    let head_end = loop {
        if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an answer in time");
        // Closed, or reset (closed with our request unread).
        let Ok(n @ 1..) = read else {
            return None;
        };
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffered[..head_end].to_vec()).unwrap();
    buffered.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status == 100 {
        return Some(Answer {
            status,
            headers,
            body: Vec::new(),
        });
    }
    let length: usize = match headers.get("content-length") {
        Some(length) => length.parse().unwrap(),
        None if headers.contains_key("transfer-encoding") => {
            // Chunked: read to the last chunk.
            let mut body = Vec::new();
            loop {
                while !buffered.windows(2).any(|w| w == b"\r\n") {
                    fill(stream, buffered).await;
                }
                let line_end = buffered.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = usize::from_str_radix(
                    std::str::from_utf8(&buffered[..line_end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                while buffered.len() < line_end + 2 + size + 2 {
                    fill(stream, buffered).await;
                }
                body.extend_from_slice(&buffered[line_end + 2..line_end + 2 + size]);
                buffered.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return Some(Answer {
                        status,
                        headers,
                        body,
                    });
                }
            }
        }
        None => 0,
    };
    while buffered.len() < length {
        fill(stream, buffered).await;
    }
    let body = buffered.drain(..length).collect();
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// The status of the next answer on `stream`.
async fn status_of(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> u16 {
    read_answer(stream, buffered)
        .await
        .expect("an answer, not a closed connection")
        .status
}

async fn fill(stream: &mut TcpStream, buffered: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.unwrap();
    assert!(n > 0, "the connection closed mid-answer");
    buffered.extend_from_slice(&chunk[..n]);
}

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: collectors\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// hyper's pooled HTTP/1.1 client.
fn http1_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn spans_taken(collectors: &[Collector]) -> usize {
    collectors.iter().map(|c| c.spans().len()).sum()
}

#[tokio::test]
async fn http1_keep_alive_pipelining_chunked_bodies_and_expect_continue() {
    let (collectors, port) = collectors(3).await;
    let proxy = http_proxy(&collectors, port, true, limits(), None).await;
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();

    // Two requests written at once (pipelined), answered in order on one connection.
    let mut both = post("/v1/traces", &trace_export(0..10, 0), "");
    both.extend(post("/v1/traces", &trace_export(10..20, 0), ""));
    stream.write_all(&both).await.unwrap();
    for _ in 0..2 {
        let answer = read_answer(&mut stream, &mut buffered).await.unwrap();
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.headers["content-type"], "application/x-protobuf");
    }
    assert_eq!(spans_taken(&collectors), 20);

    // A chunked body, on the same (kept-alive) connection.
    let body = trace_export(20..30, 0);
    let (first, rest) = body.split_at(body.len() / 2);
    let mut chunked = b"POST /v1/traces HTTP/1.1\r\nHost: collectors\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [first, rest] {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&chunked).await.unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 200);
    assert_eq!(spans_taken(&collectors), 30);

    // Expect: 100-continue: the proxy asks for the body, then answers.
    let body = trace_export(30..40, 0);
    let request = post("/v1/traces", &body, "Expect: 100-continue\r\n");
    let head_len = request.len() - body.len();
    stream.write_all(&request[..head_len]).await.unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 100);
    stream.write_all(&body).await.unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 200);
    assert_eq!(spans_taken(&collectors), 40);

    // Too large: 413 without asking for the body.
    let huge = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: c\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        limits().max_message_bytes + 1
    );
    stream.write_all(huge.as_bytes()).await.unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 413);

    // A chunked body that grows past the limit: 413 too.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();
    stream
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: c\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![0u8; 16 * 1024];
    for _ in 0..(limits().max_message_bytes / chunk.len() + 1) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    assert_eq!(status_of(&mut stream, &mut buffered).await, 413);
    assert_eq!(spans_taken(&collectors), 40, "nothing of it was sent");

    // A body that stops arriving: 408 after --header-timeout, nothing sent.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();
    let body = trace_export(40..50, 0);
    let request = post("/v1/traces", &body, "");
    let started = std::time::Instant::now();
    stream
        .write_all(&request[..request.len() - body.len() / 2])
        .await
        .unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 408);
    assert!(started.elapsed() >= limits().header_timeout - Duration::from_millis(50));
    assert_eq!(spans_taken(&collectors), 40);

    // Not HTTP: 400.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();
    stream.write_all(b"HELLO THERE\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 400);

    let metrics = proxy.state.metrics.encode();
    assert!(
        metrics.contains("skylift_proxy_http_requests_total{code=\"2xx\"} 4"),
        "{metrics}"
    );
    // The two 413s and the 408; hyper answers the 400 itself, and the connection counts as
    // closed for a protocol error.
    assert!(
        metrics.contains("skylift_proxy_http_requests_total{code=\"4xx\"} 3"),
        "{metrics}"
    );
    eventually("the malformed connection closed", || {
        proxy
            .state
            .metrics
            .encode()
            .contains("skylift_proxy_connections_closed_total{reason=\"protocol_error\"} 1")
    })
    .await;
}

#[tokio::test]
async fn otlp_http_exports_are_split_by_trace_id_and_other_requests_go_round_robin() {
    let (collectors, port) = collectors(3).await;
    let proxy = http_proxy(&collectors, port, true, limits(), None).await;
    let client = http1_client();
    let send = |body: Vec<u8>, path: &str, headers: &[(&str, &str)]| {
        let mut request = http::Request::post(format!("http://{}{path}", proxy.address))
            .header("content-type", "application/x-protobuf");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        client.request(request.body(Full::new(Bytes::from(body))).unwrap())
    };
    // 50 exports of 20 spans; each trace's five spans in five different exports.
    for step in 0..5 {
        for batch in 0..10u32 {
            let traces = (0..20).map(|i| batch * 20 + i);
            let response = send(trace_export(traces, step), "/v1/traces", &[])
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let mut seen: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
    for (i, collector) in collectors.iter().enumerate() {
        for span in collector.spans() {
            seen.entry(span.trace_id).or_default().insert(i);
        }
    }
    assert_eq!(seen.len(), 200);
    assert!(
        seen.values().all(|at| at.len() == 1),
        "a trace at one collector"
    );
    assert_eq!(spans_taken(&collectors), 1000);

    // gzip, as the collector's otlphttp exporter sends by default.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&trace_export(200..220, 0)).unwrap();
    let response = send(
        gzip.finish().unwrap(),
        "/v1/traces",
        &[("content-encoding", "gzip")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(spans_taken(&collectors), 1020);

    // JSON is forwarded whole, round-robin, and counted.
    let before: u64 = collectors.iter().map(|c| c.http_exports().1).sum();
    let request = http::Request::post(format!("http://{}/v1/traces", proxy.address))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"resourceSpans":[]}"#)))
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 200);
    let after: u64 = collectors.iter().map(|c| c.http_exports().1).sum();
    assert_eq!(after, before + 1);
    assert!(
        proxy.state.metrics.encode().contains(
            "skylift_proxy_otlp_forwarded_whole_total{signal=\"traces\",reason=\"json\"} 1"
        )
    );

    // Without affinity, each request goes whole to the next upstream.
    let plain = http_proxy(&collectors, port, false, limits(), None).await;
    let before: Vec<u64> = collectors.iter().map(|c| c.http_exports().0).collect();
    for _ in 0..9 {
        let request = http::Request::post(format!("http://{}/v1/traces", plain.address))
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(trace_export(0..30, 9))))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    }
    let per: Vec<u64> = collectors
        .iter()
        .zip(&before)
        .map(|(c, b)| c.http_exports().0 - b)
        .collect();
    assert_eq!(per, [3, 3, 3], "round-robin, whole");

    // The upstream's own answers come back as they are (404 for a path it lacks).
    let request = http::Request::get(format!("http://{}/v3/segments", plain.address))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 404);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"404 page not found");
}

#[tokio::test]
async fn a_collector_that_cannot_be_reached_over_http_is_skipped_and_ejected() {
    let (collectors, port) = collectors(2).await;
    // A third pool member whose HTTP port has nothing listening.
    let mut addresses: Vec<String> = collectors.iter().map(Collector::address).collect();
    addresses.push("127.0.0.9:1".into());
    let proxy = proxy_over(
        addresses,
        queue_config(),
        UpstreamClient::new(4, 100),
        limits(),
        None,
        Delivery::default(),
        |state| state.with_http(port),
    )
    .await;
    let client = http1_client();
    for _ in 0..6 {
        let request = http::Request::post(format!("http://{}/v1/traces", proxy.address))
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(trace_export(0..5, 0))))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
    }
    assert_eq!(
        spans_taken(&collectors),
        30,
        "every request reached a live collector"
    );
    assert!(ejections_total(&proxy) >= 1);
}

#[tokio::test]
async fn http1_connections_count_against_the_connection_limit_and_drain() {
    let (collectors, port) = collectors(1).await;
    let limits = Limits {
        max_connections: Some(1),
        ..limits()
    };
    let proxy = http_proxy(&collectors, port, false, limits, None).await;
    let mut first = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();
    first
        .write_all(&post("/v1/traces", &trace_export(0..3, 0), ""))
        .await
        .unwrap();
    assert_eq!(status_of(&mut first, &mut buffered).await, 200);
    // The second connection is over the limit: closed without an answer.
    let mut second = TcpStream::connect(proxy.address).await.unwrap();
    let _ = second
        .write_all(&post("/v1/traces", &trace_export(0..3, 0), ""))
        .await;
    let mut none = Vec::new();
    assert!(read_answer(&mut second, &mut none).await.is_none());
    assert_eq!(
        proxy
            .state
            .connections
            .load(std::sync::atomic::Ordering::Acquire),
        1
    );
    // Shutdown: the kept-alive connection is closed.
    proxy._close.send(true).unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
    eventually("the connection uncounted", || {
        proxy
            .state
            .connections
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
    })
    .await;
}

#[tokio::test]
async fn http2_requests_that_are_not_grpc_are_http_requests() {
    let (collectors, port) = collectors(2).await;
    let proxy = http_proxy(&collectors, port, true, limits(), None).await;
    // HTTP/2 prior knowledge, an OTLP/HTTP export (as Go's exporter sends over h2).
    let request = http::Request::post(format!("http://{}/v1/traces", proxy.address))
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(trace_export(0..40, 0))))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(spans_taken(&collectors), 40);
    // gRPC on the same connection pool still works.
    let (status, _, _) = call(
        &client(),
        proxy.address,
        collector::TRACES,
        framed(&[trace_export(40..50, 0)]),
        &[],
    )
    .await;
    assert_eq!(status, 0);
    assert_eq!(spans_taken(&collectors), 50);
}

#[tokio::test]
async fn over_tls_alpn_picks_http1_or_http2() {
    let (collectors, port) = collectors(2).await;
    let dir = std::env::temp_dir().join(format!("skylift-http-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = skylift_testkit::pki::TestCa::new("server ca");
    let (cert, key) = ca.server_identity(&["localhost"]);
    let files = skylift_proxy::listen::tls::TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
        http1: true,
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let tls = Arc::new(skylift_proxy::listen::tls::Termination::load(files).unwrap());
    let limits = Limits {
        header_timeout: Duration::from_secs(2),
        ..limits()
    };
    let proxy = http_proxy(&collectors, port, true, limits, Some(tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let connect = |alpn: &'static [u8]| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let address: SocketAddr = proxy.address;
        async move {
            let tcp = TcpStream::connect(address).await.unwrap();
            connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    // ALPN http/1.1: an HTTP/1.1 request.
    let stream = connect(b"http/1.1").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/v1/traces")
        .header("host", "localhost")
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(trace_export(0..10, 0))))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    assert_eq!(spans_taken(&collectors), 10);
    // ALPN h2: HTTP/2, a non-gRPC request and a gRPC call.
    let stream = connect(b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("https://localhost/v1/traces")
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(trace_export(10..20, 0))))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let request = http::Request::post(format!("https://localhost{}", collector::TRACES))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(framed(&[trace_export(20..30, 0)])))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let trailers = response.into_body().collect().await.unwrap();
    assert_eq!(trailers.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(spans_taken(&collectors), 30);
}

/// As haproxy's `timeout http-keep-alive` falls back to `timeout http-request`: a
/// kept-alive connection has `--header-timeout` to begin its next request.
#[tokio::test]
async fn an_idle_kept_alive_connection_closes_after_the_header_timeout() {
    let (collectors, port) = collectors(1).await;
    let proxy = http_proxy(&collectors, port, false, limits(), None).await;
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut buffered = Vec::new();
    stream
        .write_all(&post("/v1/traces", &trace_export(0..3, 0), ""))
        .await
        .unwrap();
    assert_eq!(status_of(&mut stream, &mut buffered).await, 200);
    let idle = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    let after = idle.elapsed();
    assert!(
        after >= limits().header_timeout - Duration::from_millis(50),
        "closed after {after:?}"
    );
    eventually("counted as stalled", || {
        proxy
            .state
            .metrics
            .encode()
            .contains("skylift_proxy_connections_closed_total{reason=\"stalled\"} 1")
    })
    .await;
}
