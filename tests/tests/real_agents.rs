//! Real SkyWalking agents reporting through the skylift-proxy binary to two strict OAP
//! doubles: what OAP would attribute to each service and instance is what each agent sent.
//!
//! - the Python agent (apache-skywalking 1.2.0), two services at once: traces, logs,
//!   meters, heartbeats and instance properties (heartbeat period 2 s);
//! - the Node.js agent (skywalking-backend-js 0.9.0): traces, heartbeats and instance
//!   properties (its heartbeat period is a fixed 20 s; it has no log reporter).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use skylift_e2e::{Process, Scratch, binary, exited_ok, free_port, installed, repo_path, wait_for};
use skylift_testkit::sink::Sink;

const SEGMENTS: &str = "TraceSegmentReportService/collect";
const LOGS: &str = "LogReportService/collect";
const METER_SETS: &str = "MeterReportService/collectBatch";
const KEEP_ALIVE: &str = "ManagementService/keepAlive";
const PROPERTIES: &str = "ManagementService/reportInstanceProperties";

/// A proxy in front of two OAP doubles, small batches so clients mix in every stream.
async fn proxy_in_front_of(a: &Sink, b: &Sink, scratch: &Scratch) -> (Process, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut proxy = Command::new(binary("skylift-proxy"));
    proxy
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!("--upstream={},{}", a.address(), b.address()))
        .args(["--batch-size", "4", "--flush-interval", "100ms"]);
    let process = Process::spawn("skylift-proxy", proxy, scratch.path());
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;
    (process, port)
}

/// What OAP attributes on `method` across both doubles.
fn attributed(sinks: [&Sink; 2], method: &str) -> BTreeMap<(String, String), u64> {
    let mut all = sinks[0].attributed(method);
    for (who, n) in sinks[1].attributed(method) {
        *all.entry(who).or_default() += n;
    }
    all
}

fn who(service: &str, instance: &str) -> (String, String) {
    (service.to_string(), instance.to_string())
}

#[tokio::test]
async fn two_python_services_traces_logs_meters_and_heartbeats_are_filed_under_their_own_names() {
    const ORDERS: u64 = 40;
    let python = installed(
        "SKYLIFT_PYTHON_AGENT",
        "target/python-agent/bin/python",
        "hack/python-agent.sh (apache-skywalking==1.2.0)",
    );
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let scratch = Scratch::new("python-agent");
    let (_proxy, port) = proxy_in_front_of(&a, &b, &scratch).await;

    let services = [("checkout", "checkout-1"), ("payment", "payment-1")];
    let mut apps = Vec::new();
    for (service, instance) in services {
        let mut app = Command::new(&python);
        app.arg(repo_path("tests/python/instrumented_app.py"))
            .args([&ORDERS.to_string(), "0", "5"])
            .env(
                "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
                format!("127.0.0.1:{port}"),
            )
            .env("SW_AGENT_PROTOCOL", "grpc")
            .env("SW_AGENT_NAME", service)
            .env("SW_AGENT_INSTANCE_NAME", instance)
            .env("SW_AGENT_METER_REPORTER_PERIOD", "1")
            .env("SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD", "2")
            .env("SW_AGENT_LOG_REPORTER_LEVEL", "WARNING");
        apps.push(Process::spawn(
            &format!("python-{service}"),
            app,
            scratch.path(),
        ));
    }
    for app in &mut apps {
        exited_ok(app, Duration::from_secs(60)).await;
    }

    let sinks = [&a, &b];
    let each = |n: u64| {
        services
            .iter()
            .map(|(s, i)| (who(s, i), n))
            .collect::<BTreeMap<_, _>>()
    };
    wait_for(
        "every trace and log, filed",
        Duration::from_secs(10),
        || async {
            (attributed(sinks, SEGMENTS) == each(ORDERS) && attributed(sinks, LOGS) == each(ORDERS))
                .then_some(())
        },
    )
    .await;
    // Heartbeats every 2 s for the ~5 s each app ran, and its properties on the first.
    for method in [KEEP_ALIVE, PROPERTIES, METER_SETS] {
        let got = attributed(sinks, method);
        let names: Vec<_> = got.keys().cloned().collect();
        assert_eq!(
            names,
            each(0).into_keys().collect::<Vec<_>>(),
            "{method}: {got:?}"
        );
        let least = if method == KEEP_ALIVE { 2 } else { 1 };
        assert!(got.values().all(|n| *n >= least), "{method}: {got:?}");
    }
    // Traces are spread; one instance's meters stay on one upstream.
    for sink in sinks {
        assert!(
            !sink.attributed(SEGMENTS).is_empty(),
            "both OAP doubles get traces"
        );
    }
    for (service, instance) in services {
        let at = |sink: &Sink| {
            sink.attributed(METER_SETS)
                .contains_key(&who(service, instance))
        };
        assert!(at(&a) != at(&b), "{service}'s meters at one upstream only");
    }
    for sink in sinks {
        assert!(sink.refusals().is_empty(), "{:?}", sink.refusals());
        assert_eq!(sink.discarded(), 0, "OAP dropped nothing");
    }
}

#[tokio::test]
async fn a_node_services_traces_and_heartbeats_arrive_as_sent() {
    const ORDERS: u64 = 10;
    let modules = installed(
        "SKYLIFT_NODE_AGENT",
        "target/node-agent/node_modules",
        "hack/node-agent.sh (skywalking-backend-js 0.9.0)",
    );
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let scratch = Scratch::new("node-agent");
    let (_proxy, port) = proxy_in_front_of(&a, &b, &scratch).await;

    let mut app = Command::new("node");
    app.arg(repo_path("tests/node/instrumented_app.js"))
        // The agent's heartbeat goes out 20 s after it starts.
        .args([&ORDERS.to_string(), "22"])
        .env("NODE_PATH", &modules)
        .env(
            "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
            format!("127.0.0.1:{port}"),
        )
        .env("SW_AGENT_NAME", "storefront")
        .env("SW_AGENT_INSTANCE", "storefront-1");
    let mut app = Process::spawn("node-storefront", app, scratch.path());
    exited_ok(&mut app, Duration::from_secs(60)).await;

    let sinks = [&a, &b];
    let storefront = who("storefront", "storefront-1");
    // Every order's server segment names its endpoint; client and server segments alike
    // are filed under the service.
    wait_for("every order's traces", Duration::from_secs(10), || async {
        let served = (0..ORDERS).all(|n| {
            let endpoint = format!("/checkout/{n}");
            sinks.iter().any(|sink| {
                sink.messages(&format!("/skywalking.v3.{SEGMENTS}"))
                    .iter()
                    .any(|m| m.windows(endpoint.len()).any(|w| w == endpoint.as_bytes()))
            })
        });
        served.then_some(())
    })
    .await;
    let segments = attributed(sinks, SEGMENTS);
    assert_eq!(
        segments.keys().collect::<Vec<_>>(),
        [&storefront],
        "{segments:?}"
    );
    assert!(segments[&storefront] >= ORDERS);
    for method in [KEEP_ALIVE, PROPERTIES] {
        let got = attributed(sinks, method);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [&storefront],
            "{method}: {got:?}"
        );
    }
    for sink in sinks {
        assert!(sink.refusals().is_empty(), "{:?}", sink.refusals());
    }
}

/// The resident memory of process `pid`, in kB.
fn resident_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn python_agents_over_the_connection_limit_back_off_and_keep_their_memory() {
    let python = installed(
        "SKYLIFT_PYTHON_AGENT",
        "target/python-agent/bin/python",
        "hack/python-agent.sh (apache-skywalking==1.2.0)",
    );
    let sink = Sink::start().await.unwrap();
    let scratch = Scratch::new("python-over-limit");
    let (port, admin) = (free_port(), free_port());
    let mut proxy = Command::new(binary("skylift-proxy"));
    proxy
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!("--upstream={}", sink.address()))
        .arg("--max-connections=1");
    let _proxy = Process::spawn("skylift-proxy", proxy, scratch.path());
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;

    // Three agents, one connection for them: two are turned away for the whole run.
    let mut apps = Vec::new();
    for i in 0..3 {
        let mut app = Command::new(&python);
        app.arg(repo_path("tests/python/instrumented_app.py"))
            .args(["0", "0.05"])
            .env(
                "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
                format!("127.0.0.1:{port}"),
            )
            .env("SW_AGENT_PROTOCOL", "grpc")
            .env("SW_AGENT_NAME", "checkout")
            .env("SW_AGENT_INSTANCE_NAME", format!("checkout-{i}"))
            .env("SW_AGENT_LOG_REPORTER_LEVEL", "WARNING");
        apps.push(Process::spawn(&format!("python-{i}"), app, scratch.path()));
    }
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let refused = async || {
        let (_, text) = skylift_testkit::http::get(&metrics).await.unwrap();
        skylift_testkit::http::prometheus_sum(&text, "skylift_proxy_connections_refused_total")
    };
    let mut largest = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for app in &mut apps {
            assert!(app.is_running(), "{}", app.tail(20));
            largest = largest.max(resident_kb(app.id()));
        }
        // With a GOAWAY the turned-away agents reconnected at once and grew by about
        // half a gigabyte a second.
        assert!(largest < 300_000, "an agent holds {largest} kB");
    }
    let refusals = refused().await;
    assert!(
        refusals >= 2.0,
        "the agents over the limit were turned away: {refusals}"
    );
    // Two agents turned away for 20 s, retrying after their backoff (1 s, then longer).
    assert!(
        refusals < 60.0,
        "{refusals} refusals: the agents did not back off"
    );
    assert!(
        sink.attributed(SEGMENTS).values().sum::<u64>() > 0,
        "the agent with the connection reports"
    );
}

/// The Python agent reporting over HTTP (`SW_AGENT_PROTOCOL=http`: OAP's REST receivers,
/// one request per segment, heartbeat and log batch) and a browser agent's requests,
/// through the proxy's HTTP side (`--upstream-http-port`) to two OAP nodes' HTTP ports:
/// every report arrives, balanced per request over both nodes.
#[tokio::test]
async fn python_reports_over_http_and_browser_data_are_balanced_per_request() {
    use skylift_testkit::oap_http::OapHttp;
    const ORDERS: u64 = 30;
    let python = installed(
        "SKYLIFT_PYTHON_AGENT",
        "target/python-agent/bin/python",
        "hack/python-agent.sh (apache-skywalking==1.2.0)",
    );
    let scratch = Scratch::new("python-agent-http");
    // Two OAP nodes on their own loopback addresses: gRPC (health checks) and HTTP on the
    // one REST port they share, as OAP pods do.
    // A port free on the first address may be taken on the second by the time it is bound
    // there (the nodes' gRPC listeners take ports as they start): then both start again.
    let mut started = None;
    for _ in 0..20 {
        let rest_port = skylift_e2e::free_port_on("127.0.0.2");
        let mut nodes = Vec::new();
        for ip in ["127.0.0.2", "127.0.0.3"] {
            let grpc = Sink::start_keeping(format!("{ip}:0").parse().unwrap())
                .await
                .unwrap();
            match OapHttp::start_on(format!("{ip}:{rest_port}").parse().unwrap()).await {
                Ok(http) => nodes.push((grpc, http)),
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => break,
                Err(err) => panic!("OAP's REST port on {ip}: {err}"),
            }
        }
        if nodes.len() == 2 {
            started = Some((rest_port, nodes));
            break;
        }
    }
    let (rest_port, nodes) = started.expect("a port free on 127.0.0.2 and .3 in 20 tries");
    let (port, admin) = (free_port(), free_port());
    let mut proxy = Command::new(binary("skylift-proxy"));
    proxy
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!(
            "--upstream={},{}",
            nodes[0].0.address(),
            nodes[1].0.address()
        ))
        .arg(format!("--upstream-http-port={rest_port}"));
    let _proxy = Process::spawn("skylift-proxy", proxy, scratch.path());
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;

    let mut app = Command::new(&python);
    app.arg(repo_path("tests/python/instrumented_app.py"))
        .args([&ORDERS.to_string(), "0", "3"])
        .env(
            "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
            format!("127.0.0.1:{port}"),
        )
        .env("SW_AGENT_PROTOCOL", "http")
        .env("SW_AGENT_NAME", "storefront")
        .env("SW_AGENT_INSTANCE_NAME", "storefront-1")
        .env("SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD", "1")
        .env("SW_AGENT_METER_REPORTER_ACTIVE", "False")
        .env("SW_AGENT_LOG_REPORTER_LEVEL", "WARNING");
    let mut app = Process::spawn("python-http", app, scratch.path());
    exited_ok(&mut app, Duration::from_secs(60)).await;

    // A browser's reports (skywalking-client-js posts these as JSON).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for i in 0..10 {
        let perf = serde_json::json!({"service": "web", "serviceVersion": "v1",
            "pagePath": format!("/page/{i}"), "fmpTime": 120});
        let errors = serde_json::json!([{"service": "web", "serviceVersion": "v1",
            "pagePath": "/", "category": "js", "message": "boom"}]);
        for (path, body) in [("/browser/perfData", perf), ("/browser/errorLogs", errors)] {
            let response = client
                .post(format!("http://127.0.0.1:{port}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }

    let total = |path: &str, service: &str| -> (u64, Vec<u64>) {
        let per: Vec<u64> = nodes
            .iter()
            .map(|(_, http)| http.reports(path).get(service).copied().unwrap_or(0))
            .collect();
        (per.iter().sum(), per)
    };
    let segments = wait_for(
        "every segment over HTTP",
        Duration::from_secs(10),
        || async {
            let (sum, per) = total("/v3/segment", "storefront");
            (sum == ORDERS).then_some(per)
        },
    )
    .await;
    assert!(
        segments.iter().all(|n| *n >= ORDERS / 4),
        "segments balanced per request: {segments:?}"
    );
    let (logs, _) = total("/v3/logs", "storefront");
    assert!(logs >= 1, "log batches arrived");
    let (pings, _) = total("/v3/management/keepAlive", "storefront");
    assert!(pings >= 2, "heartbeats arrived: {pings}");
    let (perf, perf_per) = total("/browser/perfData", "web");
    let (errors, errors_per) = total("/browser/errorLogs", "web");
    assert_eq!((perf, errors), (10, 10));
    // Taken in turns, the browser's twenty requests went ten to each node.
    let per: Vec<u64> = perf_per
        .iter()
        .zip(&errors_per)
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(per, [10, 10], "round-robin per request");
    for (_, http) in &nodes {
        assert!(http.refused().is_empty(), "{:?}", http.refused());
    }
}
