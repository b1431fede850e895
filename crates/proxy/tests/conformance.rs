//! The conformance matrix: for every method in the proxy's table, several clients with
//! their own services and instances report at once through one proxy to two strict OAP
//! doubles, and what OAP would attribute (per service/instance, task, node) is exactly
//! what each client sent, with no call refused upstream.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use skylift_proxy::queue::QueueConfig;
use skylift_testkit::protobuf::Pb;
use skylift_testkit::sink::Sink;
use support::*;

/// Who OAP files a report under (see `skylift_testkit::sink::receivers`).
type Who = (String, String);

/// One method's reports by one client: the calls (each its messages) and what OAP should
/// attribute from them.
struct Plan {
    calls: Vec<Vec<Vec<u8>>>,
    expected: Vec<(Who, u64)>,
}

fn who(a: &str, b: &str) -> Who {
    (a.to_string(), b.to_string())
}

/// What client `k` sends on `method` (`Service/method`), or `None` for a method without a
/// case (which fails the test).
fn plan(method: &str, k: usize) -> Option<Plan> {
    let (service, instance) = (format!("svc-{k}"), format!("svc-{k}-pod"));
    let (svc, inst) = (service.as_str(), instance.as_str());
    let named = |s: u64, i: u64| Pb::new().str(s, svc).str(i, inst);
    let segment = |n: usize| {
        Pb::new()
            .str(1, &format!("trace-{k}-{n}"))
            .str(2, &format!("segment-{k}-{n}"))
            .msg(3, Pb::new().varint(1, 0).str(6, "/checkout"))
            .str(4, svc)
            .str(5, inst)
    };
    let streams = |calls: usize, per_call: usize, message: &dyn Fn(usize, usize) -> Pb| {
        (0..calls)
            .map(|c| (0..per_call).map(|m| message(c, m).done()).collect())
            .collect::<Vec<_>>()
    };
    let unary = |calls: usize, message: &dyn Fn(usize) -> Pb| {
        (0..calls)
            .map(|c| vec![message(c).done()])
            .collect::<Vec<_>>()
    };
    let counted = |calls: Vec<Vec<Vec<u8>>>| {
        let n = calls.iter().map(Vec::len).sum::<usize>() as u64;
        Plan {
            calls,
            expected: vec![(who("", ""), n)],
        }
    };
    let each = |calls: Vec<Vec<Vec<u8>>>, to: Who| {
        let n = calls.iter().map(Vec::len).sum::<usize>() as u64;
        Plan {
            calls,
            expected: vec![(to, n)],
        }
    };
    let mine = who(svc, inst);
    Some(match method {
        "TraceSegmentReportService/collect" => each(streams(2, 5, &|_, m| segment(m)), mine),
        "TraceSegmentReportService/collectInSync" => Plan {
            calls: unary(2, &|c| {
                (0..3).fold(Pb::new(), |p, n| p.msg(1, segment(10 * c + n)))
            }),
            expected: vec![(mine, 6)],
        },
        "SpanAttachedEventReportService/collect" => each(
            streams(2, 4, &|_, m| {
                Pb::new().str(2, &format!("event {m}")).msg(
                    6,
                    Pb::new()
                        .str(2, &format!("trace-{k}"))
                        .str(3, &format!("seg-{k}")),
                )
            }),
            who(&format!("trace-{k}"), &format!("seg-{k}")),
        ),
        // As agents send them: the service on the first LogData only.
        "LogReportService/collect" => each(
            streams(2, 6, &|_, m| {
                let log = Pb::new().varint(1, 1_700_000_000_000 + m as u64);
                let log = if m == 0 { log.str(2, svc) } else { log };
                log.str(3, inst).str(5, &format!("log {m}"))
            }),
            mine,
        ),
        // One set per stream: service, instance and time on its first MeterData only.
        "MeterReportService/collect" => Plan {
            calls: streams(2, 5, &|_, m| {
                let data = Pb::new().msg(1, Pb::new().str(1, &format!("meter_{m}")).double(3, 1.0));
                if m == 0 {
                    data.str(3, svc).str(4, inst).varint(5, 1_700_000_000_000)
                } else {
                    data
                }
            }),
            expected: vec![(mine, 2)],
        },
        "MeterReportService/collectBatch" => each(
            streams(2, 3, &|_, _| {
                Pb::new()
                    .msg(
                        1,
                        Pb::new()
                            .msg(1, Pb::new().str(1, "meter_a").double(3, 1.0))
                            .str(3, svc)
                            .str(4, inst)
                            .varint(5, 1_700_000_000_000),
                    )
                    .msg(
                        1,
                        Pb::new().msg(1, Pb::new().str(1, "meter_b").double(3, 2.0)),
                    )
            }),
            mine,
        ),
        "JVMMetricReportService/collect" | "CLRMetricReportService/collect" => each(
            unary(3, &|_| named(2, 3).msg(1, Pb::new().varint(1, 1))),
            mine,
        ),
        "ManagementService/reportInstanceProperties" => each(
            unary(2, &|_| {
                named(1, 2).msg(3, Pb::new().str(1, "os").str(2, "linux"))
            }),
            mine,
        ),
        "ManagementService/keepAlive" => each(unary(3, &|_| named(1, 2)), mine),
        "ConfigurationDiscoveryService/fetchConfigurations" => each(
            unary(2, &|_| Pb::new().str(1, svc).str(2, "uuid")),
            who(svc, ""),
        ),
        "EventService/collect" => each(
            streams(2, 3, &|c, m| {
                Pb::new()
                    .str(1, &format!("uuid-{k}-{c}-{m}"))
                    .msg(2, Pb::new().str(1, svc).str(2, inst))
                    .str(3, "Reboot")
                    .str(9, "GENERAL")
            }),
            mine,
        ),
        "ProfileTask/getProfileTaskCommands" => each(unary(2, &|_| named(1, 2)), mine),
        "ProfileTask/reportTaskFinish" => each(
            unary(1, &|_| named(1, 2).str(3, &format!("task-{k}"))),
            mine,
        ),
        "ProfileTask/collectSnapshot" => each(
            streams(2, 4, &|_, m| {
                Pb::new().str(1, &format!("task-{k}")).varint(4, m as u64)
            }),
            who(&format!("task-{k}"), ""),
        ),
        // Chunked uploads: two profiles of three 100-byte chunks per stream.
        "ProfileTask/goProfileReport" => {
            let calls = streams(2, 6, &|c, m| {
                let chunk = Pb::new()
                    .str(1, &format!("task-{k}-{c}-{}", m / 3))
                    .bytes(2, &[b'p'; 100]);
                if m % 3 == 2 {
                    chunk.varint(3, 1)
                } else {
                    chunk
                }
            });
            Plan {
                calls,
                expected: (0..2)
                    .flat_map(|c| (0..2).map(move |p| (c, p)))
                    .map(|(c, p)| (who(&format!("task-{k}-{c}-{p}"), "300 bytes"), 1))
                    .collect(),
            }
        }
        "BrowserPerfService/collectPerfData"
        | "BrowserPerfService/collectWebVitalsPerfData"
        | "BrowserPerfService/collectResourcePerfData"
        | "BrowserPerfService/collectWebInteractionsPerfData" => {
            each(unary(2, &|_| named(1, 2).str(4, "/index.html")), mine)
        }
        "BrowserPerfService/collectErrorLogs" => each(
            streams(2, 3, &|c, m| {
                Pb::new()
                    .str(1, &format!("err-{c}-{m}"))
                    .str(2, svc)
                    .str(3, inst)
            }),
            mine,
        ),
        "EBPFProcessService/reportProcesses"
        | "EBPFProcessService/keepAlive"
        | "EBPFProfilingService/queryTasks"
        | "ContinuousProfilingService/queryPolicies"
        | "ContinuousProfilingService/reportProfilingTask"
        | "AsyncProfilerTask/getAsyncProfilerTaskCommands"
        | "PprofTask/getPprofTaskCommands" => counted(unary(2, &|_| Pb::new().str(1, svc))),
        "AsyncProfilerTask/collect" | "PprofTask/collect" => counted(streams(1, 2, &|_, m| {
            Pb::new()
                .str(1, &format!("task-{k}"))
                .bytes(2, &[m as u8; 10])
        })),
        // The task on the first message only; the rest inherit it.
        "EBPFProfilingService/collectProfilingData" => each(
            streams(2, 4, &|_, m| {
                let data = Pb::new().msg(2, Pb::new().varint(2, 7));
                if m == 0 {
                    Pb::new()
                        .msg(
                            1,
                            Pb::new()
                                .str(1, &format!("task-{k}"))
                                .str(2, &format!("proc-{k}")),
                        )
                        .msg(2, Pb::new().varint(2, 7))
                } else {
                    data
                }
            }),
            who(&format!("task-{k}"), &format!("proc-{k}")),
        ),
        // Node and connection on the first message; later ones carry kernel logs only.
        "EBPFAccessLogService/collect" => each(
            streams(2, 4, &|_, m| {
                let logs = Pb::new().msg(3, Pb::new().msg(4, Pb::new().varint(3, 1)));
                if m == 0 {
                    Pb::new()
                        .msg(1, Pb::new().str(1, &format!("node-{k}")))
                        .msg(
                            2,
                            Pb::new().msg(1, Pb::new().msg(1, Pb::new().str(1, svc).str(2, inst))),
                        )
                        .msg(3, Pb::new().msg(4, Pb::new().varint(3, 1)))
                } else {
                    logs
                }
            }),
            who(&format!("node-{k}"), svc),
        ),
        "ServiceMeshMetricService/collect" => each(
            streams(2, 3, &|_, _| {
                Pb::new()
                    .varint(1, 1)
                    .str(3, svc)
                    .str(4, inst)
                    .str(5, "dest")
            }),
            mine,
        ),
        // Envoy names itself on the first message of a stream only.
        "AccessLogService/StreamAccessLogs" | "MetricsService/StreamMetrics" => each(
            streams(2, 5, &|_, m| {
                let payload = Pb::new().msg(2, Pb::new().str(1, &format!("entry {m}")));
                if m == 0 {
                    Pb::new()
                        .msg(1, Pb::new().msg(1, Pb::new().str(1, &format!("envoy-{k}"))))
                        .msg(2, Pb::new().str(1, "entry 0"))
                } else {
                    payload
                }
            }),
            who(&format!("envoy-{k}"), ""),
        ),
        _ => return None,
    })
}

fn short(method: &skylift_proxy::grpc::protocol::Method) -> String {
    let service = method.service().rsplit('.').next().unwrap_or_default();
    format!("{service}/{}", method.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_reaches_oap_as_each_client_sent_it() {
    let (a, b) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    // Small batches, so every upstream stream mixes the clients' reports.
    let proxy = proxy_with(
        &[&a, &b],
        None,
        QueueConfig {
            batch_size: 7,
            ..queue_config()
        },
    )
    .await;
    const CLIENTS: usize = 3;
    let methods = skylift_proxy::grpc::protocol::METHODS;
    let mut expected: BTreeMap<String, BTreeMap<Who, u64>> = BTreeMap::new();
    let mut calls = Vec::new();
    for k in 0..CLIENTS {
        // Each client on its own HTTP/2 connection, all of its calls at once.
        let connection = client();
        for method in methods {
            let name = short(method);
            let plan = plan(&name, k).unwrap_or_else(|| panic!("no conformance case for {name}"));
            // A collect stream is one meter set, which reaches OAP as one collectBatch
            // message: MeterServiceHandler processes both the same way.
            let filed_on = match name.as_str() {
                "MeterReportService/collect" => "MeterReportService/collectBatch".to_string(),
                _ => name.clone(),
            };
            for (who, n) in plan.expected {
                *expected
                    .entry(filed_on.clone())
                    .or_default()
                    .entry(who)
                    .or_default() += n;
            }
            let path = method.path.to_string();
            for messages in plan.calls {
                let (connection, address, path) = (connection.clone(), proxy.address, path.clone());
                calls.push(tokio::spawn(async move {
                    let (status, _, trailers) =
                        call(&connection, address, &path, framed(&messages), &[]).await;
                    (path, status, trailers)
                }));
            }
        }
    }
    for call in calls {
        let (path, status, trailers) = call.await.unwrap();
        assert_eq!(status, 0, "{path} was not answered OK: {trailers:?}");
    }
    let attributed = |method: &str| {
        let mut all = a.attributed(method);
        for (who, n) in b.attributed(method) {
            *all.entry(who).or_default() += n;
        }
        all
    };
    let total: u64 = expected.values().flat_map(|m| m.values()).sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let arrived: u64 = expected
            .keys()
            .map(|m| attributed(m).values().sum::<u64>())
            .sum();
        let refused = a.refusals().len() + b.refusals().len();
        if arrived >= total || refused > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut wrong = Vec::new();
    for (method, want) in &expected {
        let got = attributed(method);
        if &got != want {
            wrong.push(format!(
                "{method}:\n  OAP attributes {got:?}\n  clients sent   {want:?}"
            ));
        }
    }
    let refusals = [a.refusals(), b.refusals()].concat();
    assert!(
        wrong.is_empty() && refusals.is_empty(),
        "{} of {} methods misattributed:\n{}\nrefused upstream: {refusals:?}",
        wrong.len(),
        expected.len(),
        wrong.join("\n")
    );
    assert_eq!(a.discarded() + b.discarded(), 0, "nothing dropped by OAP");
    // Both upstreams took part.
    assert!(a.reports().len() > 50 && b.reports().len() > 50);
    let totals = proxy.state.queue.totals();
    assert!(totals.balances(), "{totals:?}");
    assert_eq!(totals.dropped_total(), 0, "{totals:?}");
}
