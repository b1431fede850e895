//! The real SkyWalking Python agent reporting through the skylift-proxy binary to two OAP
//! stand-ins: every trace and log arrives, divided between them, and the meters of the one
//! instance all reach the same one.

use std::process::Command;
use std::time::Duration;

use skylift_e2e::{Process, Scratch, binary, free_port, wait_for};
use skylift_testkit::http;
use skylift_testkit::sink::Sink;

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";
const LOGS: &str = "/skywalking.v3.LogReportService/collect";
/// The agent reports meters with `collect` streams (one set each); the proxy forwards each
/// set as one `collectBatch` message.
const METER_STREAMS: &str = "/skywalking.v3.MeterReportService/collect";
const METER_SETS: &str = "/skywalking.v3.MeterReportService/collectBatch";
const ORDERS: usize = 40;

/// The Python with the agent installed (hack/test.sh makes it).
fn python() -> std::path::PathBuf {
    let path = std::env::var_os("SKYLIFT_PYTHON_AGENT")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/python-agent/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: hack/test.sh installs the SkyWalking Python agent (apache-skywalking==1.2.0) there",
        path.display()
    );
    path
}

fn containing(sink: &Sink, path: &str, needle: &[u8]) -> usize {
    sink.messages(path)
        .iter()
        .filter(|m| m.windows(needle.len()).any(|w| w == needle))
        .count()
}

#[tokio::test]
async fn a_python_agents_traces_logs_and_meters_are_balanced_and_meters_stay_together() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let scratch = Scratch::new("python-agent");
    let (port, admin) = (free_port(), free_port());
    let mut proxy = Command::new(binary("skylift-proxy"));
    proxy
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg(format!("--upstream={},{}", a.address(), b.address()))
        .args(["--batch-size", "4", "--flush-interval", "100ms"]);
    let _proxy = Process::spawn("skylift-proxy", proxy, scratch.path());
    wait_for("the proxy to be ready", Duration::from_secs(20), || async {
        let (code, _) = http::get(&format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .ok()?;
        (code == 200).then_some(())
    })
    .await;

    let mut app = Command::new(python());
    app.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/instrumented_app.py"
    ))
    .arg(ORDERS.to_string())
    .env(
        "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
        format!("127.0.0.1:{port}"),
    )
    .env("SW_AGENT_PROTOCOL", "grpc")
    .env("SW_AGENT_NAME", "checkout")
    .env("SW_AGENT_INSTANCE_NAME", "checkout-1")
    .env("SW_AGENT_METER_REPORTER_PERIOD", "1")
    .env("SW_AGENT_LOG_REPORTER_LEVEL", "WARNING");
    let mut app = Process::spawn("python-app", app, scratch.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.exit_code().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instrumented app did not finish:\n{}",
            app.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.exit_code(), Some(0), "{}", app.output());

    wait_for(
        "every trace segment and log upstream",
        Duration::from_secs(10),
        || async {
            let segments =
                containing(&a, SEGMENTS, b"/checkout/") + containing(&b, SEGMENTS, b"/checkout/");
            let logs = containing(&a, LOGS, b"placed") + containing(&b, LOGS, b"placed");
            (segments == ORDERS && logs == ORDERS).then_some(())
        },
    )
    .await;
    for sink in [&a, &b] {
        assert!(
            containing(sink, SEGMENTS, b"/checkout/") > 0,
            "both OAP stand-ins get traces"
        );
    }
    let meters = (a.messages(METER_SETS).len(), b.messages(METER_SETS).len());
    assert!(meters.0 + meters.1 > 0, "the agent's meters arrive");
    assert!(
        meters.0 == 0 || meters.1 == 0,
        "one instance's meters stay on one upstream: {meters:?}"
    );
    for sink in [&a, &b] {
        assert!(
            sink.messages(METER_STREAMS).is_empty(),
            "no set is sent split"
        );
        for set in sink.messages(METER_SETS) {
            assert!(
                set.windows(10).any(|w| w == b"checkout-1"),
                "each set names its instance"
            );
        }
    }
}
