//! skylift-proxy as a process: upstreams from a followed file, telemetry to OAP, admin
//! endpoints, and a SIGTERM that flushes what was acknowledged before exiting.

use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skylift_e2e::{Process, Scratch, binary, free_port, wait_for};
use skylift_testkit::http;
use skylift_testkit::sink::Sink;

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";

fn framed(messages: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    for m in messages {
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out.freeze()
}

async fn report(port: u16, messages: &[&[u8]]) -> Option<String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = hyper::Request::post(format!("http://127.0.0.1:{port}{SEGMENTS}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(framed(messages)))
        .unwrap();
    let response = client.request(request).await.ok()?;
    let collected = response.into_body().collect().await.ok()?;
    collected
        .trailers()?
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn the_proxy_follows_its_upstreams_reports_telemetry_and_drains_on_sigterm() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let scratch = Scratch::new("proxy");
    let file = scratch.path().join("endpoints.json");
    std::fs::write(&file, skylift_e2e::endpoints_json(&[a.address()])).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut command = Command::new(binary("skylift-proxy"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!("--upstreams-file={}", file.display()))
        .args(["--flush-interval", "10s", "--batch-size", "1000"])
        .args([
            "--telemetry-service",
            "e2e-pool",
            "--telemetry-instance",
            "proxy-0",
            "--telemetry-interval",
            "200ms",
        ])
        .args(["--log-format", "json"]);
    let mut proxy = Process::spawn("skylift-proxy", command, scratch.path());

    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;

    // The telemetry reaches OAP's gRPC port as native meter sets of the pool's service and
    // the proxy's instance, labelled as OAP's satellite.yaml sums them.
    let telemetry = wait_for(
        "telemetry at the upstream",
        Duration::from_secs(10),
        || async { a.meter_reports().into_iter().next() },
    )
    .await;
    assert_eq!(
        (telemetry.service.as_str(), telemetry.instance.as_str()),
        ("e2e-pool", "proxy-0")
    );
    let labels_of = |name: &str| -> Vec<Vec<String>> {
        telemetry
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.labels.iter().map(|(k, _)| k.clone()).collect())
            .collect()
    };
    assert_eq!(
        labels_of("sw_stl_grpc_server_connection_count"),
        [Vec::<String>::new()]
    );
    for gauge in [
        "sw_stl_pipeline_queue_partition_size",
        "sw_stl_pipeline_queue_total_capacity",
    ] {
        assert!(
            labels_of(gauge)
                .iter()
                .all(|l| l.contains(&"pipeline".to_string())),
            "{gauge}: {:?}",
            labels_of(gauge)
        );
    }
    for counter in [
        "sw_stl_gatherer_receive_count",
        "sw_stl_sender_output_count",
    ] {
        assert!(
            labels_of(counter)
                .iter()
                .all(|l| l.contains(&"pipe".to_string()) && l.contains(&"status".to_string())),
            "{counter}: {:?}",
            labels_of(counter)
        );
    }

    // A second upstream appears in the file: traffic reaches it within a second.
    std::fs::write(
        &file,
        skylift_e2e::endpoints_json(&[a.address(), b.address()]),
    )
    .unwrap();
    wait_for(
        "the new upstream on /metrics",
        Duration::from_secs(2),
        || async {
            let (_, body) = http::get(&format!("http://127.0.0.1:{admin}/metrics"))
                .await
                .ok()?;
            body.contains(&format!("upstream=\"{}\"", b.address()))
                .then_some(())
        },
    )
    .await;

    // Acknowledged but still queued (10 s flush interval) when SIGTERM arrives.
    for i in 0..20 {
        let message = skylift_testkit::reports::segment(&format!("segment {i}"), "svc", "svc-1");
        assert_eq!(report(port, &[&message]).await.as_deref(), Some("0"));
    }
    let (_, metrics) = http::get(&format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("skylift_proxy_received_total{protocol=\"segment\"} 20"),
        "{metrics}"
    );

    let pid = proxy.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(code) = proxy.exit_code() {
            break code;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 0, "a clean shutdown exits 0:\n{}", proxy.output());
    let delivered = a.messages(SEGMENTS).len() + b.messages(SEGMENTS).len();
    assert_eq!(
        delivered, 20,
        "nothing acknowledged is lost on a clean shutdown"
    );
}

/// With the disk queue, both paths keep what they acknowledged through a SIGKILL: the
/// local OAP and the federation OAP are both unreachable while reports are taken, the
/// proxy is killed, both come up, and a new proxy on the same journal delivers every
/// acknowledged report to each of them.
#[tokio::test]
async fn with_the_disk_queue_a_kill_9_loses_nothing_acknowledged_on_either_path() {
    let scratch = Scratch::new("proxy-federation-kill");
    let reserve = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (local_address, federation_address) = (reserve(), reserve());
    let (port, admin) = (free_port(), free_port());
    let journal = scratch.path().join("journal");
    let start = |name: &str| {
        let mut command = Command::new(binary("skylift-proxy"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &local_address.to_string()])
            .args(["--federation-upstream", &federation_address.to_string()])
            .args(["--federation-protocols", "segment,meter"])
            .args(["--queue", "disk"])
            .arg(format!("--queue-dir={}", journal.display()))
            .args(["--fsync", "always", "--queue-partitions", "2"])
            .args(["--log-format", "json"]);
        Process::spawn(name, command, scratch.path())
    };
    let mut proxy = start("proxy-1");
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;
    let mut acknowledged = Vec::new();
    for call in 0..40 {
        let messages: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                skylift_testkit::reports::segment(&format!("segment-{call}-{i}"), "svc", "svc-1")
            })
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        assert_eq!(
            report(port, &refs).await.as_deref(),
            Some("0"),
            "call {call}"
        );
        acknowledged.extend(messages);
    }
    assert!(
        journal.join("federation").is_dir(),
        "the federation queue has a journal of its own"
    );
    proxy.kill();

    let local = Sink::start_keeping(local_address).await.unwrap();
    let federation = Sink::start_keeping(federation_address).await.unwrap();
    let mut proxy = start("proxy-2");
    skylift_e2e::wait_ready("the restarted proxy", &format!("127.0.0.1:{admin}")).await;
    for (sink, path) in [(&local, "local"), (&federation, "federation")] {
        wait_for(
            &format!("every acknowledged segment on the {path} path"),
            Duration::from_secs(30),
            || async {
                let arrived = sink.messages(SEGMENTS);
                acknowledged
                    .iter()
                    .all(|m| arrived.iter().any(|a| a.as_ref() == m.as_slice()))
                    .then_some(())
            },
        )
        .await;
    }
    proxy.kill();
}
