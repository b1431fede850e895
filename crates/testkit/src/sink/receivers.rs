//! OAP's gRPC receivers as the double serves them: every method OAP registers, with its
//! gRPC kind, and what its handler reads from which message of a call. Each rule names the
//! handler it follows (apache/skywalking, `oap-server/server-receiver-plugin/**/handler/**`).
//!
//! A call's messages become [`Report`]s: what OAP attributes, to whom. Who a report is
//! about depends on the method (the `who` column of [`METHODS`]): (service, instance) for
//! agents' reports, (task, process) for profiling data, (node, local service) for eBPF
//! access logs, (Envoy node id, "") for Envoy's streams. A test asks "what would OAP file
//! under service X" and gets what OAP's own reading of these bytes would give, including
//! the consequences of how messages were grouped into streams.

use bytes::Bytes;

use super::grpc::{self, Kind, Status};
use crate::protobuf::{self as pb, Malformed, Value};

/// What a handler does with a call's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// Each message stands alone, naming (service, instance) in these string fields
    /// (0: none).
    Named(u64, u64),
    /// `SegmentCollection`: each segment (field 1) names its service (4) and instance (5).
    SegmentCollection,
    /// `SpanAttachedEvent`: about the trace (traceContext 6 → traceId 2, segmentId 3).
    SpanAttachedEvents,
    /// `LogReportServiceGrpcHandler`: the first non-empty service of the stream is written
    /// into every later `LogData`; the instance (3) is each message's own.
    Logs,
    /// `MeterServiceHandler.collect`: the whole stream is one set.
    MeterSet,
    /// `MeterServiceHandler.collectBatch`: each `MeterDataCollection` is one set.
    MeterBatch,
    /// `EventGrpcServiceHandler`: the layer is required; source (2) → service, instance.
    Events,
    /// `ProfileTaskServiceHandler.goProfileReport`: chunks of one profile per task.
    GoProfile,
    /// `EBPFProfilingServiceHandler.collectProfilingData`: the task of the first message,
    /// or of any later one that carries a task.
    EbpfProfiling,
    /// `AccessLogServiceHandler`: node from the first message or an update, connection
    /// from the last message that carried one.
    EbpfAccessLog,
    /// Envoy's ALS and metrics handlers: the identifier of the first message only.
    EnvoyIdentified,
    /// Answered, nothing attributed (queries, task commands, bidirectional uploads).
    Counted,
    /// `grpc.health.v1.Health/Check`: SERVING.
    Health,
    /// A test service standing for a non-OAP upstream behind a generic `Proxy`: the
    /// messages are echoed back, with the status named in `x-echo-status`.
    Echo,
}

/// One method as OAP registers it.
#[derive(Debug)]
pub struct Method {
    /// `/package.Service/method`.
    pub path: &'static str,
    /// Registered also without the package (OAP's `*Compat` handlers), for old agents.
    compat: bool,
    pub kind: Kind,
    reader: Reader,
    /// The OAP handler whose reading this follows.
    pub handler: &'static str,
}

impl Method {
    /// `Service/method`, without the package: how reports name their method.
    pub fn short(&self) -> &'static str {
        let service = self.path[1..].split_once('/').expect("table paths").0;
        // Past the leading '/' and the package's last dot.
        let start = service.rfind('.').map_or(1, |dot| dot + 2);
        &self.path[start..]
    }

    pub fn echoes(&self) -> bool {
        self.reader == Reader::Echo
    }

    pub fn is_health_check(&self) -> bool {
        self.reader == Reader::Health
    }
}

const fn method(
    path: &'static str,
    compat: bool,
    kind: Kind,
    reader: Reader,
    handler: &'static str,
) -> Method {
    Method {
        path,
        compat,
        kind,
        reader,
        handler,
    }
}

use Kind::{Bidi, ClientStreaming, Unary};
use Reader::*;

/// Every method the double serves. The `compat` flag follows the `*Compat` handlers OAP
/// registers (trace, JVM, CLR, meter, management, profile, browser, mesh); every other
/// package-less path is UNIMPLEMENTED, as on OAP.
pub static METHODS: &[Method] = &[
    method(
        "/skywalking.v3.TraceSegmentReportService/collect",
        true,
        ClientStreaming,
        Named(4, 5),
        "TraceSegmentReportServiceHandler",
    ),
    method(
        "/skywalking.v3.TraceSegmentReportService/collectInSync",
        true,
        Unary,
        SegmentCollection,
        "TraceSegmentReportServiceHandler",
    ),
    method(
        "/skywalking.v3.SpanAttachedEventReportService/collect",
        false,
        ClientStreaming,
        SpanAttachedEvents,
        "SpanAttachedEventReportServiceHandler",
    ),
    method(
        "/skywalking.v3.LogReportService/collect",
        false,
        ClientStreaming,
        Logs,
        "LogReportServiceGrpcHandler",
    ),
    method(
        "/skywalking.v3.MeterReportService/collect",
        true,
        ClientStreaming,
        MeterSet,
        "MeterServiceHandler",
    ),
    method(
        "/skywalking.v3.MeterReportService/collectBatch",
        true,
        ClientStreaming,
        MeterBatch,
        "MeterServiceHandler",
    ),
    method(
        "/skywalking.v3.JVMMetricReportService/collect",
        true,
        Unary,
        Named(2, 3),
        "JVMMetricReportServiceHandler",
    ),
    method(
        "/skywalking.v3.CLRMetricReportService/collect",
        true,
        Unary,
        Named(2, 3),
        "CLRMetricReportServiceHandler",
    ),
    method(
        "/skywalking.v3.ManagementService/reportInstanceProperties",
        true,
        Unary,
        Named(1, 2),
        "ManagementServiceHandler",
    ),
    method(
        "/skywalking.v3.ManagementService/keepAlive",
        true,
        Unary,
        Named(1, 2),
        "ManagementServiceHandler",
    ),
    method(
        "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations",
        false,
        Unary,
        Named(1, 0),
        "ConfigurationDiscoveryServiceHandler",
    ),
    method(
        "/skywalking.v3.EventService/collect",
        false,
        ClientStreaming,
        Events,
        "EventGrpcServiceHandler",
    ),
    method(
        "/skywalking.v3.ProfileTask/getProfileTaskCommands",
        true,
        Unary,
        Named(1, 2),
        "ProfileTaskServiceHandler",
    ),
    method(
        "/skywalking.v3.ProfileTask/collectSnapshot",
        true,
        ClientStreaming,
        Named(1, 0),
        "ProfileTaskServiceHandler",
    ),
    method(
        "/skywalking.v3.ProfileTask/goProfileReport",
        false,
        ClientStreaming,
        GoProfile,
        "ProfileTaskServiceHandler",
    ),
    method(
        "/skywalking.v3.ProfileTask/reportTaskFinish",
        true,
        Unary,
        Named(1, 2),
        "ProfileTaskServiceHandler",
    ),
    method(
        "/skywalking.v3.BrowserPerfService/collectPerfData",
        true,
        Unary,
        Named(1, 2),
        "BrowserPerfServiceHandler",
    ),
    method(
        "/skywalking.v3.BrowserPerfService/collectWebVitalsPerfData",
        false,
        Unary,
        Named(1, 2),
        "BrowserPerfServiceHandler",
    ),
    method(
        "/skywalking.v3.BrowserPerfService/collectResourcePerfData",
        false,
        Unary,
        Named(1, 2),
        "BrowserPerfServiceHandler",
    ),
    method(
        "/skywalking.v3.BrowserPerfService/collectWebInteractionsPerfData",
        false,
        Unary,
        Named(1, 2),
        "BrowserPerfServiceHandler",
    ),
    method(
        "/skywalking.v3.BrowserPerfService/collectErrorLogs",
        true,
        ClientStreaming,
        Named(2, 3),
        "BrowserPerfServiceHandler",
    ),
    method(
        "/skywalking.v3.EBPFProcessService/reportProcesses",
        false,
        Unary,
        Counted,
        "EBPFProcessServiceHandler",
    ),
    method(
        "/skywalking.v3.EBPFProcessService/keepAlive",
        false,
        Unary,
        Counted,
        "EBPFProcessServiceHandler",
    ),
    method(
        "/skywalking.v3.EBPFProfilingService/queryTasks",
        false,
        Unary,
        Counted,
        "EBPFProfilingServiceHandler",
    ),
    method(
        "/skywalking.v3.EBPFProfilingService/collectProfilingData",
        false,
        ClientStreaming,
        EbpfProfiling,
        "EBPFProfilingServiceHandler",
    ),
    method(
        "/skywalking.v3.ContinuousProfilingService/queryPolicies",
        false,
        Unary,
        Counted,
        "ContinuousProfilingServiceHandler",
    ),
    method(
        "/skywalking.v3.ContinuousProfilingService/reportProfilingTask",
        false,
        Unary,
        Counted,
        "ContinuousProfilingServiceHandler",
    ),
    method(
        "/skywalking.v3.EBPFAccessLogService/collect",
        false,
        ClientStreaming,
        EbpfAccessLog,
        "AccessLogServiceHandler",
    ),
    method(
        "/skywalking.v3.ServiceMeshMetricService/collect",
        true,
        ClientStreaming,
        Named(3, 4),
        "MeshGRPCHandler",
    ),
    method(
        "/skywalking.v10.AsyncProfilerTask/collect",
        false,
        Bidi,
        Counted,
        "AsyncProfilerServiceHandler",
    ),
    method(
        "/skywalking.v10.AsyncProfilerTask/getAsyncProfilerTaskCommands",
        false,
        Unary,
        Counted,
        "AsyncProfilerServiceHandler",
    ),
    method(
        "/skywalking.v10.PprofTask/collect",
        false,
        Bidi,
        Counted,
        "PprofServiceHandler",
    ),
    method(
        "/skywalking.v10.PprofTask/getPprofTaskCommands",
        false,
        Unary,
        Counted,
        "PprofServiceHandler",
    ),
    method(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        false,
        ClientStreaming,
        EnvoyIdentified,
        "AccessLogServiceGRPCHandler",
    ),
    method(
        "/envoy.service.metrics.v3.MetricsService/StreamMetrics",
        false,
        ClientStreaming,
        EnvoyIdentified,
        "MetricServiceGRPCHandler",
    ),
    method(
        "/grpc.health.v1.Health/Check",
        false,
        Unary,
        Health,
        "HealthCheckServiceHandler",
    ),
    method("/test.Echo/Say", false, Bidi, Echo, "(test service)"),
    method("/test.Echo/Call", false, Bidi, Echo, "(test service)"),
];

/// The method a path names, as grpc-java's registry finds it; `None` is UNIMPLEMENTED.
pub fn lookup(path: &str) -> Option<&'static Method> {
    if let Some(method) = METHODS.iter().find(|m| m.path == path) {
        return Some(method);
    }
    let bare = path.strip_prefix('/')?;
    if bare.split('/').next()?.contains('.') {
        return None;
    }
    METHODS.iter().find(|m| m.compat && m.short() == bare)
}

/// What OAP attributes from one message (or set): to whom, on which method.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Report {
    /// `Service/method`.
    pub method: &'static str,
    pub who: (String, String),
}

/// One meter sample as OAP's meter analyzer receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of one meter set, with who sent it and when.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterReport {
    pub service: String,
    pub instance: String,
    pub timestamp_ms: i64,
    pub samples: Vec<Sample>,
}

/// What a handler made of one call.
#[derive(Debug, Default)]
pub struct Received {
    pub reports: Vec<Report>,
    pub meter_reports: Vec<MeterReport>,
    /// How the call was closed, when not OK: the messages before the one refused were
    /// processed, as a streaming handler processes them one by one.
    pub refusal: Option<Status>,
    /// Messages OAP dropped without a status (a meter set lacking its service, an eBPF
    /// access log without a connection, an unfinished Go profile).
    pub discarded: u64,
}

/// OAP 10's layer names (`Layer.nameOf`); an event naming another is refused.
const LAYERS: &[&str] = &[
    "UNDEFINED",
    "MESH",
    "GENERAL",
    "OS_LINUX",
    "K8S",
    "FAAS",
    "MESH_CP",
    "MESH_DP",
    "DATABASE",
    "CACHE",
    "BROWSER",
    "SO11Y_OAP",
    "SO11Y_SATELLITE",
    "MQ",
    "VIRTUAL_DATABASE",
    "VIRTUAL_MQ",
    "VIRTUAL_GATEWAY",
    "K8S_SERVICE",
    "MYSQL",
    "VIRTUAL_CACHE",
    "POSTGRESQL",
    "APISIX",
    "AWS_EKS",
    "NGINX",
    "SO11Y_JAVA_AGENT",
    "SO11Y_GO_AGENT",
    "ELASTICSEARCH",
    "ROCKETMQ",
    "CLICKHOUSE",
    "RABBITMQ",
    "KAFKA",
    "PULSAR",
    "ACTIVEMQ",
    "REDIS",
    "MONGODB",
    "CILIUM_SERVICE",
    "BOOKKEEPER",
    "KONG",
    "FLINK",
    "BANYANDB",
    "GENAI",
];

fn text(message: &[u8], number: u64) -> Result<String, Malformed> {
    if number == 0 {
        return Ok(String::new());
    }
    Ok(pb::string(message, number)?.unwrap_or_default())
}

/// Reads a call's messages the way `method`'s handler does.
pub fn receive(method: &'static Method, messages: &[Bytes]) -> Received {
    let mut received = Received::default();
    let short = method.short();
    let report = |who: (String, String)| Report { method: short, who };
    // Every message must parse as protobuf before its handler sees it (ProtoLiteUtils);
    // the double reads the top level of each and every field it interprets.
    let outcome: Result<(), Status> = (|| {
        match method.reader {
            Named(service, instance) => {
                for message in messages {
                    received
                        .reports
                        .push(report((text(message, service)?, text(message, instance)?)));
                }
            }
            SegmentCollection => {
                for message in messages {
                    for segment in pb::messages(message, 1)? {
                        received
                            .reports
                            .push(report((text(segment, 4)?, text(segment, 5)?)));
                    }
                }
            }
            SpanAttachedEvents => {
                for message in messages {
                    let context = pb::merged(message, 6)?.unwrap_or_default();
                    received
                        .reports
                        .push(report((text(&context, 2)?, text(&context, 3)?)));
                }
            }
            Logs => {
                // LogReportServiceGrpcHandler.setServiceName: the stream keeps the first
                // non-empty service and writes it into every later LogData.
                let mut stream_service = String::new();
                for message in messages {
                    let (own, instance) = (text(message, 2)?, text(message, 3)?);
                    if stream_service.is_empty() && !own.is_empty() {
                        stream_service = own.clone();
                    }
                    let service = if stream_service.is_empty() {
                        own
                    } else {
                        stream_service.clone()
                    };
                    received.reports.push(report((service, instance)));
                }
            }
            MeterSet => {
                let datas: Vec<&[u8]> = messages.iter().map(|m| m.as_ref()).collect();
                meter_set(&datas, short, &mut received)?;
            }
            MeterBatch => {
                for message in messages {
                    let datas = pb::messages(message, 1)?;
                    meter_set(&datas, short, &mut received)?;
                }
            }
            Events => {
                for message in messages {
                    // EventGrpcServiceHandler: an empty or unknown layer closes the call
                    // with INVALID_ARGUMENT; the events before it were analyzed.
                    let layer = text(message, 9)?;
                    if layer.is_empty() {
                        return Err(Status::new(
                            grpc::INVALID_ARGUMENT,
                            "Layer field is required since v9.0.0, please upgrade your event report tools",
                        ));
                    }
                    if !LAYERS.contains(&layer.as_str()) {
                        return Err(Status::new(grpc::INVALID_ARGUMENT, "Unknown Layer name"));
                    }
                    let source = pb::merged(message, 2)?.unwrap_or_default();
                    received
                        .reports
                        .push(report((text(&source, 1)?, text(&source, 2)?)));
                }
            }
            GoProfile => {
                // goProfileReport: chunks are gathered while the task id stays the same;
                // a new task id starts over; the chunk with isLast completes the profile.
                // Chunks without a task id are logged and skipped.
                let (mut task, mut gathered, mut pending) = (String::new(), 0usize, 0u64);
                for message in messages {
                    let id = text(message, 1)?;
                    let payload = pb::bytes_field(message, 2)?;
                    let last = pb::varint_field(message, 3)? != 0;
                    if id.is_empty() {
                        received.discarded += 1;
                        continue;
                    }
                    if id != task {
                        received.discarded += pending;
                        (task, gathered, pending) = (id, 0, 0);
                    }
                    gathered += payload.len();
                    pending += 1;
                    if last {
                        received
                            .reports
                            .push(report((task.clone(), format!("{gathered} bytes"))));
                        (task, gathered, pending) = (String::new(), 0, 0);
                    }
                }
                received.discarded += pending;
            }
            EbpfProfiling => {
                let mut task: Option<Vec<u8>> = None;
                for message in messages {
                    // `isFirst || hasTask()`: the first message sets the task even without
                    // one (the default, empty task).
                    if task.is_none() || pb::has(message, 1)? {
                        task = Some(pb::merged(message, 1)?.unwrap_or_default());
                    }
                    let task = task.as_deref().unwrap_or_default();
                    received
                        .reports
                        .push(report((text(task, 1)?, text(task, 2)?)));
                }
            }
            EbpfAccessLog => {
                let mut node: Option<Vec<u8>> = None;
                let mut connection: Option<Vec<u8>> = None;
                for message in messages {
                    if node.is_none() || pb::has(message, 1)? {
                        node = Some(pb::merged(message, 1)?.unwrap_or_default());
                    }
                    if let Some(own) = pb::merged(message, 2)? {
                        connection = Some(own);
                    }
                    // Without a connection the handler counts the logs as dropped.
                    let Some(connection) = &connection else {
                        received.discarded += 1;
                        continue;
                    };
                    let node_name = text(node.as_deref().unwrap_or_default(), 1)?;
                    // connection.local (1) → kubernetes (1) → serviceName (1).
                    let local = pb::merged(connection, 1)?.unwrap_or_default();
                    let kubernetes = pb::merged(&local, 1)?.unwrap_or_default();
                    let service = text(&kubernetes, 1)?;
                    received.reports.push(report((node_name, service)));
                }
            }
            EnvoyIdentified => {
                // `if (isFirst) identifier = message.getIdentifier()`: later identifiers are
                // ignored. identifier (1) → node (1) → id (1).
                let mut node_id: Option<String> = None;
                for message in messages {
                    if node_id.is_none() {
                        let identifier = pb::merged(message, 1)?.unwrap_or_default();
                        let node = pb::merged(&identifier, 1)?.unwrap_or_default();
                        node_id = Some(text(&node, 1)?);
                    } else {
                        pb::fields(message)?;
                    }
                    received
                        .reports
                        .push(report((node_id.clone().unwrap_or_default(), String::new())));
                }
            }
            // The echo service passes its messages back unread, as any bytes service would.
            Echo => {}
            Counted | Health => {
                for message in messages {
                    pb::fields(message)?;
                    if method.reader == Counted {
                        received.reports.push(report(Default::default()));
                    }
                }
            }
        }
        Ok(())
    })();
    received.refusal = outcome.err();
    received
}

/// One meter set as `MeterProcessor` reads it: only `MeterData` with a value count; the
/// service, instance and timestamp are the last non-empty ones of the set; a set lacking
/// any of them is not processed.
fn meter_set(
    datas: &[&[u8]],
    method: &'static str,
    received: &mut Received,
) -> Result<(), Malformed> {
    let (mut service, mut instance, mut timestamp_ms) = (String::new(), String::new(), 0i64);
    let mut samples = Vec::new();
    for data in datas {
        if !pb::has(data, 1)? && !pb::has(data, 2)? {
            continue; // MeterProcessor.read: `default: return` before the agent info.
        }
        samples.extend(meter_samples(data)?);
        let own_service = pb::string(data, 3)?.unwrap_or_default();
        if !own_service.is_empty() {
            service = own_service;
        }
        let own_instance = pb::string(data, 4)?.unwrap_or_default();
        if !own_instance.is_empty() {
            instance = own_instance;
        }
        let own_time = pb::varint_field(data, 5)? as i64;
        if own_time > 0 {
            timestamp_ms = own_time;
        }
    }
    if service.is_empty() || instance.is_empty() || timestamp_ms == 0 {
        received.discarded += 1;
        return Ok(());
    }
    received.reports.push(Report {
        method,
        who: (service.clone(), instance.clone()),
    });
    received.meter_reports.push(MeterReport {
        service,
        instance,
        timestamp_ms,
        samples,
    });
    Ok(())
}

fn labels(single: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    pb::messages(single, 2)?
        .into_iter()
        .map(|label| {
            Ok((
                pb::string(label, 1)?.unwrap_or_default(),
                pb::string(label, 2)?.unwrap_or_default(),
            ))
        })
        .collect()
}

fn double(value: Value<'_>) -> f64 {
    match value {
        Value::Fixed64(bits) => f64::from_bits(bits),
        _ => 0.0,
    }
}

/// The samples of one `MeterData`: a single value, or a histogram as one sample per bucket
/// labelled `le` (OAP's reading of a native histogram).
fn meter_samples(data: &[u8]) -> Result<Vec<Sample>, Malformed> {
    let mut out = Vec::new();
    for single in pb::messages(data, 1)? {
        let mut sample = Sample {
            name: pb::string(single, 1)?.unwrap_or_default(),
            labels: labels(single)?,
            value: 0.0,
        };
        for (number, value) in pb::fields(single)? {
            if number == 3 {
                sample.value = double(value);
            }
        }
        out.push(sample);
    }
    for histogram in pb::messages(data, 2)? {
        let name = pb::string(histogram, 1)?.unwrap_or_default();
        let labels = labels(histogram)?;
        for bucket in pb::messages(histogram, 3)? {
            let (mut le, mut count, mut negative_infinity) = (0.0, 0u64, false);
            for (number, value) in pb::fields(bucket)? {
                match (number, value) {
                    (1, value) => le = double(value),
                    (2, Value::Varint(v)) => count = v,
                    (3, Value::Varint(v)) => negative_infinity = v != 0,
                    _ => {}
                }
            }
            let mut labels = labels.clone();
            let le = if negative_infinity {
                "-Infinity".to_string()
            } else {
                le.to_string()
            };
            labels.push(("le".into(), le));
            out.push(Sample {
                name: name.clone(),
                labels,
                value: count as f64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn who(received: &Received) -> Vec<(&str, &str)> {
        received
            .reports
            .iter()
            .map(|r| (r.who.0.as_str(), r.who.1.as_str()))
            .collect()
    }

    fn at(path: &str) -> &'static Method {
        lookup(path).unwrap()
    }

    #[test]
    fn methods_are_found_by_their_registered_names_only() {
        assert_eq!(
            at("/skywalking.v3.LogReportService/collect").short(),
            "LogReportService/collect"
        );
        assert_eq!(
            at("/TraceSegmentReportService/collect").short(),
            "TraceSegmentReportService/collect"
        );
        assert_eq!(
            at("/skywalking.v10.PprofTask/collect").short(),
            "PprofTask/collect"
        );
        // OAP registers no package-less log or event service, and nothing unknown.
        assert!(lookup("/LogReportService/collect").is_none());
        assert!(lookup("/EventService/collect").is_none());
        assert!(lookup("/skywalking.v3.LogReportService/unknown").is_none());
        assert!(lookup("/foo.TraceSegmentReportService/collect").is_none());
    }

    #[test]
    fn logs_of_a_stream_are_filed_under_its_first_service() {
        let a = [field(2, b"checkout"), field(3, b"c-1")].concat();
        let b = [field(2, b"payment"), field(3, b"p-1")].concat();
        let bare = field(3, b"c-1");
        let received = receive(
            at("/skywalking.v3.LogReportService/collect"),
            &[bare.clone().into(), a.into(), bare.into(), b.into()],
        );
        assert_eq!(
            who(&received),
            [
                ("", "c-1"),
                ("checkout", "c-1"),
                ("checkout", "c-1"),
                ("checkout", "p-1")
            ]
        );
    }

    #[test]
    fn a_meter_set_needs_service_instance_and_time() {
        let mut value = field(1, &field(1, b"m"));
        let named = [value.clone(), field(3, b"svc"), field(4, b"i-1")].concat();
        value.extend_from_slice(&[5 << 3, 42]);
        let set = receive(
            at("/skywalking.v3.MeterReportService/collect"),
            &[named.clone().into(), value.into()],
        );
        assert_eq!(who(&set), [("svc", "i-1")]);
        assert_eq!(set.meter_reports[0].samples.len(), 2);
        // Without a timestamp anywhere in the set, OAP drops it without a word.
        let untimed = receive(
            at("/skywalking.v3.MeterReportService/collect"),
            &[named.into()],
        );
        assert!(untimed.reports.is_empty());
        assert_eq!(untimed.discarded, 1);
    }

    #[test]
    fn an_event_without_a_layer_closes_the_stream_after_the_ones_before_it() {
        let good = [field(2, &field(1, b"svc")), field(9, b"GENERAL")].concat();
        let bad = field(2, &field(1, b"other"));
        let received = receive(
            at("/skywalking.v3.EventService/collect"),
            &[good.clone().into(), bad.into(), good.into()],
        );
        assert_eq!(who(&received), [("svc", "")]);
        assert_eq!(received.refusal.unwrap().code, grpc::INVALID_ARGUMENT);
    }

    #[test]
    fn envoy_streams_keep_the_first_identifier_and_ebpf_streams_carry_theirs() {
        let identified = |id: &[u8]| field(1, &field(1, &field(1, id)));
        let first = [identified(b"envoy-a"), field(2, b"logs")].concat();
        let other = [identified(b"envoy-b"), field(2, b"logs")].concat();
        let received = receive(
            at("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"),
            &[first.into(), field(2, b"more").into(), other.into()],
        );
        assert_eq!(who(&received), [("envoy-a", ""); 3]);

        let node = |name: &[u8]| field(1, &field(1, name));
        let connection = |service: &[u8]| field(2, &field(1, &field(1, &field(1, service))));
        let messages: Vec<Bytes> = vec![
            node(b"n1").into(), // no connection yet: dropped
            [connection(b"svc-a"), field(3, b"k")].concat().into(), // node from the first
            field(3, b"k").into(), // connection carried on
            [node(b"n2"), connection(b"svc-b")].concat().into(),
        ];
        let received = receive(at("/skywalking.v3.EBPFAccessLogService/collect"), &messages);
        assert_eq!(
            who(&received),
            [("n1", "svc-a"), ("n1", "svc-a"), ("n2", "svc-b")]
        );
        assert_eq!(received.discarded, 1);
    }

    #[test]
    fn a_go_profile_is_whole_only_when_its_chunks_arrive_together() {
        let chunk = |task: &[u8], payload: &[u8], last: bool| {
            let mut m = [field(1, task), field(2, payload)].concat();
            if last {
                m.extend_from_slice(&[3 << 3, 1]);
            }
            Bytes::from(m)
        };
        let whole = receive(
            at("/skywalking.v3.ProfileTask/goProfileReport"),
            &[chunk(b"t1", b"abc", false), chunk(b"t1", b"de", true)],
        );
        assert_eq!(who(&whole), [("t1", "5 bytes")]);
        // Interleaved with another task's chunks, the first profile starts over.
        let torn = receive(
            at("/skywalking.v3.ProfileTask/goProfileReport"),
            &[
                chunk(b"t1", b"abc", false),
                chunk(b"t2", b"x", false),
                chunk(b"t1", b"de", true),
            ],
        );
        assert_eq!(who(&torn), [("t1", "2 bytes")]);
        assert_eq!(torn.discarded, 2);
    }

    #[test]
    fn malformed_protobuf_closes_the_call() {
        let received = receive(
            at("/skywalking.v3.TraceSegmentReportService/collect"),
            &[Bytes::from_static(&[0x22, 9, b'x'])],
        );
        assert_eq!(
            received.refusal.unwrap().message,
            "Invalid protobuf byte sequence"
        );
    }
}
