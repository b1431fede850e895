//! The closed loop on one machine, with real processes: clients connect to the proxy pool,
//! each proxy reports its connection count to OAP (the stand-in, running OAP's `satellite`
//! meter rules), skylift-adapter reads it over TLS for an aggregator-like client, and the
//! HPA's arithmetic turns the answer into a replica count. The pool is what the operator
//! builds for a Satellite: its proxies run with the operator's arguments and endpoint list,
//! and the metric, selector and target come from the operator's HPA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use serde_json::json;
use skylift_api::endpoints::{UpstreamEndpoint, UpstreamEndpoints};
use skylift_api::proxy_args::ProxyArgs;
use skylift_api::satellite::Satellite;
use skylift_e2e::agents::Agent;
use skylift_e2e::standin::OapStandin;
use skylift_e2e::{Process, Scratch, binary, free_port, wait_for};
use skylift_operator::build::pool::{PoolView, build};
use skylift_testkit::aggregation;
use skylift_testkit::aggregator::Aggregator;
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::hpa::{self, Target};
use skylift_testkit::http::{self, prometheus_sum};
use skylift_testkit::pki::TestCa;

const NAMESPACE: &str = "skywalking";

/// The Satellite of SWCK's walk-through: ten connections per replica, scaled on them.
fn satellite() -> Satellite {
    serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": "Satellite",
        "metadata": {"name": "satellite", "namespace": NAMESPACE, "uid": "5a7e1111-0000-4000-8000-000000000001"},
        "spec": {
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "connectionLimit": {"maxConnections": 10},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": 10},
            "telemetry": {"service": "satellite-service"},
        },
    }))
    .expect("a valid Satellite")
}

/// What the HPA reads: metric name, selector and `Value` target, from the operator's HPA.
struct Reading {
    metric: String,
    selector: BTreeMap<String, String>,
    target_milli: i64,
    min: u32,
    max: u32,
}

fn reading(hpa: &HorizontalPodAutoscaler) -> Reading {
    let spec = hpa.spec.as_ref().expect("an HPA spec");
    let external = spec.metrics.as_ref().expect("metrics")[0]
        .external
        .as_ref()
        .expect("an External metric");
    let target = external.target.value.as_ref().expect("a Value target");
    assert_eq!(external.target.type_, "Value");
    Reading {
        metric: external.metric.name.clone(),
        selector: external
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("a selector"),
        target_milli: hpa::milli_value(&target.0).expect("a quantity"),
        min: spec.min_replicas.unwrap_or(1) as u32,
        max: spec.max_replicas as u32,
    }
}

/// One proxy replica: the operator's container arguments, with loopback addresses, the
/// endpoint list in a file instead of the ConfigMap, and telemetry every second.
struct Replica {
    process: Process,
    grpc: SocketAddr,
    admin: SocketAddr,
}

fn start_replica(
    args: &[String],
    pod: &str,
    endpoints_file: &std::path::Path,
    dir: &std::path::Path,
) -> Replica {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The operator's arguments read with the proxy's own parser, then changed by field.
    let mut settings = ProxyArgs::try_parse_from(
        std::iter::once("skylift-proxy".to_string()).chain(args.to_vec()),
    )
    .expect("the operator renders arguments the proxy parses");
    settings.listen = grpc;
    settings.admin_listen = admin;
    assert!(settings.upstreams_configmap.is_some(), "{args:?}");
    settings.upstreams_configmap = None;
    settings.upstreams_file = Some(endpoints_file.to_path_buf());
    assert_eq!(settings.telemetry_instance.as_deref(), Some("$(POD_NAME)"));
    settings.telemetry_instance = Some(pod.into());
    settings.telemetry_interval = Duration::from_secs(1);
    let mut command = Command::new(binary("skylift-proxy"));
    command.args(settings.to_args());
    Replica {
        process: Process::spawn(pod, command, dir),
        grpc,
        admin,
    }
}

async fn ready(replica: &Replica) {
    skylift_e2e::wait_ready(&replica.process.name, &replica.admin.to_string()).await;
}

async fn counters(replica: &Replica) -> (f64, f64, f64) {
    let (_, text) = http::get(&format!("http://{}/metrics", replica.admin))
        .await
        .expect("the proxy's /metrics");
    (
        prometheus_sum(&text, "skylift_proxy_received_total"),
        prometheus_sum(&text, "skylift_proxy_forwarded_total"),
        prometheus_sum(&text, "skylift_proxy_dropped_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_proxies_oap_adapter_and_hpa_close_the_loop() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scratch = Scratch::new("loop");

    // OAP: two nodes, sharing their storage as a cluster does.
    let oap = OapStandin::start(2, scratch.path()).await;

    // The cluster the adapter runs in: the API-server double with what kube-apiserver
    // publishes for extension API servers, and the adapter as a process on a kubeconfig.
    let api = ApiServer::start(&[]).await.unwrap();
    let front_proxy_ca = TestCa::new("front-proxy-ca");
    aggregation::install(api.state(), &front_proxy_ca.cert_pem);
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let adapter_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut adapter = Command::new(binary("skylift-adapter"));
    adapter
        .env("KUBECONFIG", &kubeconfig)
        .args(aggregation::adapter_args(
            adapter_address,
            &oap.graphql(0),
            "1s",
        ))
        // The operator's HPA names the Satellite's OAPServer; the double serves no
        // OAPServers, so the adapter is told where it answers.
        .arg(format!("--oap={NAMESPACE}/skywalking={}", oap.graphql(0)));
    let _adapter = Process::spawn("skylift-adapter", adapter, scratch.path());
    let aggregator = Aggregator::new(api.client(), &front_proxy_ca, adapter_address).await;

    // The pool the operator builds for the Satellite, fed the OAP nodes as its endpoints.
    let sat = satellite();
    let pool = PoolView::from(&sat);
    let endpoints = UpstreamEndpoints {
        endpoints: oap
            .nodes
            .iter()
            .map(|n| UpstreamEndpoint {
                address: n.grpc.to_string(),
                weight: 1,
                pod: Some(format!("skywalking-oap-{}", n.node)),
                zone: None,
                draining: false,
            })
            .collect(),
    };
    let objects = build(&sat, &pool, &endpoints);
    let endpoints_file = scratch.path().join("endpoints.json");
    std::fs::write(
        &endpoints_file,
        &objects.config_map.data.as_ref().unwrap()["endpoints.json"],
    )
    .unwrap();
    let args = objects.proxy_container_args().to_vec();
    let hpa_reading = reading(objects.hpa.as_ref().expect("the Satellite autoscales"));
    let read_value = async || -> Option<i64> {
        let values = aggregator
            .read(NAMESPACE, &hpa_reading.metric, &hpa_reading.selector)
            .await
            .ok()?;
        Some(values.iter().filter_map(|v| hpa::milli_value(v)).sum())
    };

    // Step 1: one replica, 11 clients. Ten get a connection, the eleventh is turned away
    // and keeps retrying; the replica reports both, and the HPA would scale to 2.
    let a = start_replica(&args, "satellite-a", &endpoints_file, scratch.path());
    ready(&a).await;
    let mut on_a: Vec<Agent> = (0..11)
        .map(|i| {
            Agent::start(
                a.grpc,
                "shop",
                &format!("shop-{i}"),
                20,
                Duration::from_millis(200),
            )
        })
        .collect();
    wait_for(
        "ten clients connected to A",
        Duration::from_secs(20),
        || async { (on_a.iter().filter(|agent| agent.connected()).count() == 10).then_some(()) },
    )
    .await;
    let value = wait_for(
        "the adapter to read 11 connections",
        Duration::from_secs(90),
        || async { read_value().await.filter(|v| *v == 11_000) },
    )
    .await;
    let first = hpa::proposal(value, Target::Value(hpa_reading.target_milli), 1, 1);
    assert_eq!(
        first, 2,
        "11 connections against a target of 10 on one replica"
    );
    let replicas = hpa::stabilized(&[first], 1, hpa_reading.min, hpa_reading.max);
    assert_eq!(replicas, 2);
    eprintln!("step 1: {value}m connections on one replica → HPA proposes {first}");

    // Step 2: the HPA's second replica starts; clients spread over A and B (the refused
    // one and five others reconnect to B). Each replica now holds 5 or 6.
    let b = start_replica(&args, "satellite-b", &endpoints_file, scratch.path());
    ready(&b).await;
    let mut movers = Vec::new();
    for _ in 0..6 {
        let position = on_a
            .iter()
            .position(|agent| !agent.connected())
            .unwrap_or(0);
        movers.push(on_a.remove(position));
    }
    let mut on_b = Vec::new();
    for agent in movers {
        let instance = agent.instance.clone();
        let counts = agent.stop().await;
        on_b.push((instance.clone(), counts));
    }
    let mut agents_b: Vec<Agent> = on_b
        .iter()
        .map(|(instance, _)| {
            Agent::start(
                b.grpc,
                "shop",
                &format!("{instance}-b"),
                20,
                Duration::from_millis(200),
            )
        })
        .collect();
    wait_for(
        "every client connected",
        Duration::from_secs(20),
        || async { (on_a.iter().chain(&agents_b).all(|agent| agent.connected())).then_some(()) },
    )
    .await;
    // OAP keeps one value per minute: the spread shows once a minute that began after it
    // is read, so this may take up to a minute and a bit.
    let value = wait_for(
        "the adapter to read the spread connections",
        Duration::from_secs(90),
        || async { read_value().await.filter(|v| (5_000..=6_000).contains(v)) },
    )
    .await;
    let second = hpa::proposal(value, Target::Value(hpa_reading.target_milli), replicas, 2);
    assert_eq!(second, 2, "{value}m on two replicas proposes {second}");
    assert_eq!(
        hpa::stabilized(&[first, second], replicas, hpa_reading.min, hpa_reading.max),
        2,
        "{value}m connections per replica keeps two replicas"
    );
    eprintln!("step 2: {value}m connections per replica on two → proposes {second}, keeps 2");

    // Step 3: an OAP node dies under load. Nothing acknowledged to a client is lost.
    let before = oap.states().await;
    assert!(
        before
            .iter()
            .all(|n| n.stats.on("TraceSegmentReportService/collect") > 0),
        "both OAP nodes received segments before the stop: {before:?}"
    );
    oap.stop(1).await;
    // The clients go on being served by the node left.
    let served = |agents: &[Agent]| {
        agents
            .iter()
            .map(|a| {
                a.counts
                    .acknowledged
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
    };
    let at_stop = served(&on_a) + served(&agents_b);
    wait_for(
        "calls served after the stop",
        Duration::from_secs(30),
        || async { (served(&on_a) + served(&agents_b) >= at_stop + 200).then_some(()) },
    )
    .await;
    let mut acknowledged = on_b
        .iter()
        .map(|(_, counts)| {
            counts
                .acknowledged
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum::<u64>();
    for agent in on_a.drain(..).chain(agents_b.drain(..)) {
        let counts = agent.stop().await;
        acknowledged += counts
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counts.refused.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    let replicas = [&a, &b];
    let dropped = wait_for(
        "both replicas to send what they queued",
        Duration::from_secs(30),
        || async {
            let mut dropped = 0.0;
            for replica in replicas {
                let (received, forwarded, dropped_here) = counters(replica).await;
                if received != forwarded + dropped_here {
                    return None;
                }
                dropped += dropped_here;
            }
            Some(dropped as u64)
        },
    )
    .await;
    let delivered: u64 = oap
        .states()
        .await
        .iter()
        .map(|n| n.stats.on("TraceSegmentReportService/collect"))
        .sum();
    eprintln!("step 3: acknowledged {acknowledged}, delivered {delivered}, dropped {dropped}");
    assert!(
        acknowledged > 1000,
        "the clients reported under load: {acknowledged}"
    );
    assert_eq!(dropped, 0, "with one OAP node up nothing is dropped");
    assert!(
        delivered >= acknowledged,
        "every acknowledged segment reached OAP: {delivered} delivered of {acknowledged}"
    );
    // A batch the dead node took but never answered is sent again: at most a few batches.
    assert!(
        delivered - acknowledged <= 4 * 200,
        "duplicates stay within a few batches: {}",
        delivered - acknowledged
    );
}
