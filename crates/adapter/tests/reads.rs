//! skylift-adapter's reads end to end on loopback: an HPA-style request in, GraphQL to a
//! stand-in OAP, an ExternalMetricValueList or a Status out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skylift_adapter::metrics::Metrics;
use skylift_adapter::oaps::Directory;
use skylift_adapter::reader::{OapConfig, OapReader};
use skylift_adapter::server::{Adapter, router};
use skylift_testkit::oap::graphql::{GraphqlOap, OapData};

/// The one crypto provider, as the binaries install it at start.
fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// The adapter's routes (without TLS and authentication, which `secure.rs` covers) in
/// front of a stand-in OAP.
async fn start(data: OapData, oap_url: Option<String>) -> (SocketAddr, GraphqlOap) {
    crypto();
    let oap = GraphqlOap::start(data).await.unwrap();
    let reader = OapReader::new(OapConfig {
        url: oap_url.unwrap_or_else(|| oap.url()),
        timeout: Duration::from_secs(2),
        basic_auth: None,
    })
    .unwrap();
    let expressions =
        skylift_adapter::metric::parse_expressions("p95: latest(service_percentile{p='95'})")
            .unwrap();
    let adapter = Arc::new(Adapter::new(
        "skywalking.apache.org".into(),
        expressions,
        Arc::new(Directory::single(reader)),
        Duration::from_secs(10),
        Arc::new(Metrics::default()),
    ));
    (serve(router(adapter)).await, oap)
}

const CONNECTIONS: &str = "skywalking.apache.org%7Csatellite_service_grpc_connect_count";
const SWCK_SELECTOR: &str = "service.str.0%3Dsatellite%2Cservice.byte.1%3D3a%2Cservice.byte.2%3D3a%2Cservice.str.3%3Dsatellite%2Cservice.byte.4%3D2d%2Cservice.str.5%3Dservice";

async fn get(adapter: SocketAddr, metric: &str, selector: &str) -> (u16, Value) {
    let url = format!(
        "http://{adapter}/apis/external.metrics.k8s.io/v1beta1/namespaces/skywalking/{metric}?labelSelector={selector}"
    );
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn an_hpa_read_in_swck_form_is_answered_from_one_mqe_query() {
    let oap = OapData {
        timezone: "+0800".into(),
        expressions: HashMap::from([(
            "latest(satellite_service_grpc_connect_count)".to_string(),
            Some("11".to_string()),
        )]),
        ..OapData::default()
    };
    let (adapter, oap) = start(oap, None).await;
    let reads = (0..10).map(|_| get(adapter, CONNECTIONS, SWCK_SELECTOR));
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["kind"], "ExternalMetricValueList");
        let item = &body["items"][0];
        assert_eq!(
            item["metricName"],
            "skywalking.apache.org|satellite_service_grpc_connect_count"
        );
        assert_eq!(item["value"], "11");
        assert_eq!(item["metricLabels"]["service.byte.1"], "3a");
    }
    let asked = oap.asked();
    let mqe: Vec<&Value> = asked
        .iter()
        .filter(|b| b["query"].as_str().unwrap().contains("execExpression"))
        .collect();
    assert_eq!(mqe.len(), 1, "ten concurrent reads, one query");
    let vars = &mqe[0]["variables"];
    assert_eq!(
        vars["entity"]["serviceName"],
        "satellite::satellite-service"
    );
    assert_eq!(vars["entity"]["normal"], true);
    // The window is in the OAP's zone (+0800): its end is OAP's local minute.
    let local = (chrono::Utc::now() + chrono::Duration::hours(8))
        .format("%Y-%m-%d %H")
        .to_string();
    assert!(
        vars["duration"]["end"]
            .as_str()
            .unwrap()
            .starts_with(&local),
        "{vars}"
    );
}

#[tokio::test]
async fn an_oap_without_mqe_is_read_with_metrics_v2_and_expressions_say_why_not() {
    let oap = OapData {
        mqe: false,
        series: HashMap::from([(
            "service_cpm".to_string(),
            vec![(40, false), (42, false), (3, false)],
        )]),
        ..OapData::default()
    };
    let (adapter, _oap) = start(oap, None).await;
    let (status, body) = get(
        adapter,
        "skywalking.apache.org%7Cservice_cpm",
        "service%3Dcheckout",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "42", "the last complete minute");
    let (status, body) = get(
        adapter,
        "skywalking.apache.org%7Cmqe%7Cp95",
        "service%3Dcheckout",
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["message"].as_str().unwrap().contains("OAP 9.5"),
        "{body}"
    );
}

#[tokio::test]
async fn failures_are_statuses_that_say_what_to_fix_and_no_data_is_an_empty_list() {
    let oap = OapData {
        mqe: true,
        expressions: HashMap::from([("latest(service_cpm)".to_string(), None)]),
        ..OapData::default()
    };
    let (adapter, _oap) = start(oap, None).await;
    let (status, body) = get(
        adapter,
        "skywalking.apache.org%7Cservice_cpm",
        "service%3Dcheckout",
    )
    .await;
    assert_eq!(
        (status, body["items"].clone()),
        (200, json!([])),
        "no data: no items, never a made-up 0"
    );
    let cases = [
        ("skywalking.apache.org%7Cnope", "service%3Da", 404, "nope"),
        (
            "example.com%7Cservice_cpm",
            "service%3Da",
            404,
            "skywalking.apache.org|<oap metric>",
        ),
        (
            "skywalking.apache.org%7Cmqe%7Cunknown",
            "service%3Da",
            404,
            "--expressions",
        ),
        (
            "skywalking.apache.org%7Cservice_cpm",
            "service%3Da%2C",
            400,
            "label selector",
        ),
        (
            "skywalking.apache.org%7Cservice_cpm",
            "instance%3Di",
            400,
            "service=<name>",
        ),
    ];
    for (metric, selector, code, says) in cases {
        let (status, body) = get(adapter, metric, selector).await;
        assert_eq!(status, code, "{metric} {selector}: {body}");
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["code"], code);
        assert!(body["message"].as_str().unwrap().contains(says), "{body}");
    }

    // OAP unreachable: 503.
    let (adapter, _oap) = start(
        OapData::default(),
        Some("http://127.0.0.1:9/graphql".into()),
    )
    .await;
    let (status, body) = get(
        adapter,
        "skywalking.apache.org%7Cservice_cpm",
        "service%3Da",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable");
}

#[tokio::test]
async fn discovery_answers_as_the_aggregator_expects() {
    let (adapter, _oap) = start(OapData::default(), None).await;
    for (path, kind) in [
        ("/apis", "APIGroupList"),
        ("/apis/external.metrics.k8s.io", "APIGroup"),
        ("/apis/external.metrics.k8s.io/v1beta1", "APIResourceList"),
    ] {
        let body: Value = reqwest::get(format!("http://{adapter}{path}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["kind"], kind, "{path}");
    }
    let openapi = reqwest::get(format!("http://{adapter}/openapi/v2"))
        .await
        .unwrap();
    assert_eq!(openapi.status(), 404, "tolerated by the aggregator");
    let health = reqwest::get(format!("http://{adapter}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// An OAP stand-in whose `service_cpm` of every service is `value`.
async fn oap_answering(value: &str) -> GraphqlOap {
    GraphqlOap::start(OapData {
        expressions: HashMap::from([("latest(service_cpm)".to_string(), Some(value.to_string()))]),
        ..OapData::default()
    })
    .await
    .unwrap()
}

fn reader_of(url: String) -> OapReader {
    OapReader::new(OapConfig {
        url,
        timeout: Duration::from_secs(2),
        basic_auth: None,
    })
    .unwrap()
}

/// Three OAPs with different values for the same metric: the default (`--oap-url`), a
/// static one (`--oap central=...`) and the OAPServer of namespace team-a. An HPA in
/// team-a reads team-a's OAP, one elsewhere the default, one naming `oap=central` (or the
/// OAPServer, SWCK-escaped as the operator writes it) that one; each OAP is asked once per
/// metric and entity however many HPAs read. Before, every read went to the one OAP.
#[tokio::test]
async fn each_hpa_reads_the_oap_of_its_namespace_or_the_one_its_selector_names() {
    crypto();
    let (default, central, team_a) = (
        oap_answering("1").await,
        oap_answering("2").await,
        oap_answering("3").await,
    );
    let oaps = Arc::new(Directory::new(
        reader_of(default.url()),
        std::collections::BTreeMap::from([("central".to_string(), reader_of(central.url()))]),
        Default::default(),
        Duration::from_secs(2),
    ));
    // As the OAPServer's status gives it: http://host:port.
    let team_a_http = team_a.url().trim_end_matches("/graphql").to_string();
    oaps.set_server("team-a", "skywalking", Some(&team_a_http));
    let adapter = Arc::new(Adapter::new(
        "skywalking.apache.org".into(),
        HashMap::new(),
        oaps,
        Duration::from_secs(10),
        Arc::new(Metrics::default()),
    ));
    let adapter = serve(router(adapter)).await;
    let value = |namespace: &'static str, selector: String| async move {
        let url = format!(
            "http://{adapter}/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/skywalking.apache.org%7Cservice_cpm?labelSelector={selector}"
        );
        let response = reqwest::get(url).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body["items"][0]["value"].as_str().unwrap().to_string()
    };
    let escaped: Vec<String> = skylift_api::metric_selector::escape("oap", "team-a/skywalking")
        .into_iter()
        .map(|(k, v)| format!("{k}%3D{v}"))
        .collect();
    let by_server = format!("service%3Dcheckout%2C{}", escaped.join("%2C"));
    for _ in 0..3 {
        assert_eq!(value("team-a", "service%3Dcheckout".into()).await, "3");
        assert_eq!(value("apps", "service%3Dcheckout".into()).await, "1");
        assert_eq!(
            value("apps", "service%3Dcheckout%2Coap%3Dcentral".into()).await,
            "2"
        );
        assert_eq!(
            value("team-a", "service%3Dcheckout%2Coap%3Ddefault".into()).await,
            "1"
        );
        assert_eq!(value("apps", by_server.clone()).await, "3");
    }
    // One query per (OAP, metric, entity) per interval.
    assert_eq!(
        (
            default.metric_queries(),
            central.metric_queries(),
            team_a.metric_queries()
        ),
        (1, 1, 1)
    );
    // An OAP it does not know is a clear 404, not another OAP's value.
    let url = format!(
        "http://{adapter}/apis/external.metrics.k8s.io/v1beta1/namespaces/apps/skywalking.apache.org%7Cservice_cpm?labelSelector=service%3Dcheckout%2Coap%3Dnowhere"
    );
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("default, central"),
        "{body}"
    );
}

/// SWCK's `label` is a percentile index, as metrics v2 took it (`1` is p75). OAP 10 selects
/// labels by name, so index 1 is asked as `{p='75'}` there and stays `{label='1'}` on OAP
/// 9.7; where MQE refuses a labeled read, metrics v2 reads it as SWCK did. Before, OAP 10
/// was asked `{label='1'}`, selected nothing, and the HPA read no value.
#[tokio::test]
async fn a_percentile_label_is_read_in_the_form_of_the_oaps_version() {
    const PERCENTILE: &str = "skywalking.apache.org%7Cservice_percentile";
    for (version, expression) in [
        ("10.2.0", "latest(service_percentile{p='75'})"),
        ("9.7.0", "latest(service_percentile{label='1'})"),
    ] {
        let oap = OapData {
            version: version.into(),
            expressions: HashMap::from([(expression.to_string(), Some("180".to_string()))]),
            ..OapData::default()
        };
        let (adapter, _oap) = start(oap, None).await;
        let (status, body) = get(adapter, PERCENTILE, "service%3Dcheckout%2Clabel%3D1").await;
        assert_eq!(status, 200, "OAP {version}: {body}");
        assert_eq!(body["items"][0]["value"], "180", "OAP {version}: {body}");
        if version.starts_with("10") {
            // Neither an index nor <name>=<value>: what to write instead.
            let (status, body) = get(adapter, PERCENTILE, "service%3Dcheckout%2Clabel%3D7").await;
            assert_eq!(status, 404, "{body}");
            assert!(
                body["message"].as_str().unwrap().contains("0 to 4"),
                "{body}"
            );
        }
    }
    // MQE refuses the labeled read (the metric unknown to it): metrics v2 answers.
    let oap = OapData {
        version: "9.7.0".into(),
        series: HashMap::from([(
            "service_percentile".to_string(),
            vec![(170, false), (175, false), (3, false)],
        )]),
        ..OapData::default()
    };
    let (adapter, oap) = start(oap, None).await;
    let (status, body) = get(adapter, PERCENTILE, "service%3Dcheckout%2Clabel%3D1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "175", "the last complete minute");
    let labels: Vec<Value> = oap
        .asked()
        .into_iter()
        .filter(|body| {
            body["query"]
                .as_str()
                .is_some_and(|q| q.contains("readLabeledMetricsValues"))
        })
        .map(|body| body["variables"]["labels"].clone())
        .collect();
    assert_eq!(labels, [json!(["1"])]);
}

/// A stand-in whose `expressions` answer the given values.
async fn oap_with(values: &[(&str, &str)]) -> GraphqlOap {
    GraphqlOap::start(OapData {
        expressions: values
            .iter()
            .map(|(expression, value)| (expression.to_string(), Some(value.to_string())))
            .collect(),
        ..OapData::default()
    })
    .await
    .unwrap()
}

/// A service watched by one OAP per cloud: federated expressions read each OAP and combine
/// the values (sum, a weighted average, the max), so an HPA scales on the service's load
/// across clouds. With one OAP down, `unreachable: fail` answers 503 naming it, and
/// `partial` answers from the others and, within `staleness`, from what the missing OAP
/// said last.
#[tokio::test]
async fn a_federated_metric_combines_the_values_of_several_oaps() {
    crypto();
    let cpm = "latest(service_cpm)";
    let latency = "latest(service_resp_time)";
    let (default, eu, us) = (
        oap_with(&[(cpm, "100"), (latency, "40")]).await,
        oap_with(&[(cpm, "300"), (latency, "80")]).await,
        oap_with(&[(cpm, "600"), (latency, "20")]).await,
    );
    let expressions = skylift_adapter::metric::parse_expressions(
        "cpm-everywhere:\n  expression: latest(service_cpm)\n  oaps: [default, eu, us]\n  combine: sum\n\
         latency-everywhere:\n  expression: latest(service_resp_time)\n  oaps: [default, eu, us]\n  combine: average\n  weight: latest(service_cpm)\n\
         cpm-peak:\n  expression: latest(service_cpm)\n  oaps: [eu, us]\n  combine: max\n  unreachable: partial\n  staleness: 1h\n",
    )
    .unwrap();
    let oaps = Arc::new(Directory::new(
        reader_of(default.url()),
        std::collections::BTreeMap::from([
            ("eu".to_string(), reader_of(eu.url())),
            ("us".to_string(), reader_of(us.url())),
        ]),
        Default::default(),
        Duration::from_secs(2),
    ));
    let adapter = Arc::new(Adapter::new(
        "skywalking.apache.org".into(),
        expressions,
        oaps,
        // Every read goes to OAP: what an unreachable OAP does is seen at once.
        Duration::from_millis(1),
        Arc::new(Metrics::default()),
    ));
    let adapter = serve(router(adapter)).await;
    let read = |metric: &'static str| async move {
        let url = format!(
            "http://{adapter}/apis/external.metrics.k8s.io/v1beta1/namespaces/apps/skywalking.apache.org%7Cmqe%7C{metric}?labelSelector=service%3Dcheckout"
        );
        let response = reqwest::get(url).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body)
    };
    let value = |body: &Value| body["items"][0]["value"].as_str().unwrap().to_string();
    let (status, body) = read("cpm-everywhere").await;
    assert_eq!((status, value(&body)), (200, "1000".to_string()), "{body}");
    // (40*100 + 80*300 + 20*600) / 1000
    let (status, body) = read("latency-everywhere").await;
    assert_eq!((status, value(&body)), (200, "40".to_string()), "{body}");
    let (status, body) = read("cpm-peak").await;
    assert_eq!((status, value(&body)), (200, "600".to_string()), "{body}");

    // The us cloud's OAP goes away.
    let us_url = us.url();
    drop(us);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = read("cpm-everywhere").await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("us:"), "names the OAP: {message}");
    // Partial: us's last value (600) stands in within its staleness.
    let (status, body) = read("cpm-peak").await;
    assert_eq!((status, value(&body)), (200, "600".to_string()), "{body}");
    // A read that names an OAP is refused for a federated metric.
    let url = format!(
        "http://{adapter}/apis/external.metrics.k8s.io/v1beta1/namespaces/apps/skywalking.apache.org%7Cmqe%7Ccpm-peak?labelSelector=service%3Dcheckout%2Coap%3Deu"
    );
    assert_eq!(reqwest::get(url).await.unwrap().status().as_u16(), 400);
    assert!(!us_url.is_empty());
}
