//! What the proxy does with each gRPC method: the SkyWalking v3 / v10 and Envoy services
//! and the policy each gets (see the protocol reference). Anything not listed is passed
//! through per request.

/// How a method is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Client stream of reports: every message is queued and the stream is answered with an
    /// empty `Commands` when it ends.
    AsyncStream,
    /// One report: queued and answered with an empty `Commands` at once, then sent upstream
    /// as a unary call of its own (OAP's unary handlers take exactly one message).
    AsyncUnary,
    /// Forwarded to one upstream at once; its answer (or status) is relayed.
    Sync,
    /// Forwarded as is, streaming both ways (bidirectional SkyWalking v10 tasks, unknown
    /// services).
    PassThrough,
}

/// How a stream's messages relate to each other, from what OAP's handler for the method
/// reads from which message (see `docs/protocols.md`). It decides how messages may be split
/// into batches, mixed with other clients' messages, and what must be written into them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Every message stands alone; balanced message by message.
    Independent,
    /// `EventService/collect`: independent, but OAP closes the stream with
    /// INVALID_ARGUMENT at the first event without a layer (field 9), losing the events
    /// after it: such an event is refused to its client at once and never queued.
    Events,
    /// `MeterReportService/collect`: the whole stream is one set, with service, instance and
    /// timestamp on its first message only. OAP reads them per stream, so the set is turned
    /// into one `MeterDataCollection` and sent with `collectBatch`, where every message is a
    /// set of its own; the service and instance are its routing key.
    MeterSet,
    /// `MeterReportService/collectBatch`: each message is a `MeterDataCollection` whose first
    /// `MeterData` names the service and instance (the routing key).
    MeterBatch,
    /// `LogReportService/collect`: OAP takes the first non-empty service (field 2) of a
    /// stream and writes it into every later `LogData`. Every later message gets the
    /// stream's service written in, and an upstream stream only carries one service.
    FirstService,
    /// Envoy's streams: OAP reads the `identifier` (field 1) of the first message of each
    /// stream only. Every later message gets that identifier (and only that one), and an
    /// upstream stream only carries one sender's messages.
    FirstIdentifier,
    /// eBPF streams: OAP keeps the metadata (field `metadata`: the node, or the profiling
    /// task) of the first message or of the last message that carried one, and for access
    /// logs the connection (field `context`) of the last message that carried one. Every
    /// message gets both written in, and an upstream stream only carries one node's or
    /// task's messages.
    Latest { metadata: u64, context: Option<u64> },
}

/// A method the proxy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// `/package.Service/method`: how OAP registers it, and the path the proxy calls
    /// upstream whatever spelling the client used.
    pub path: &'static str,
    pub policy: Policy,
    pub shape: Shape,
    /// Short protocol name for metrics labels, e.g. `segment`.
    pub protocol: &'static str,
    /// What OAP's handler reads from which message of a call (and the handler's name).
    pub oap_reads: &'static str,
}

impl Method {
    /// The fully qualified service, e.g. `skywalking.v3.TraceSegmentReportService`.
    pub fn service(&self) -> &'static str {
        self.path[1..]
            .split_once('/')
            .map_or("", |(service, _)| service)
    }

    /// The method's own name, e.g. `collect`.
    pub fn name(&self) -> &'static str {
        self.path.rsplit_once('/').map_or("", |(_, name)| name)
    }

    /// The path its reports are sent upstream on: its own, but a meter set goes as one
    /// `collectBatch` message.
    pub(crate) fn upstream_path(&self) -> String {
        match self.shape {
            Shape::MeterSet => format!("{}Batch", self.path),
            _ => self.path.to_string(),
        }
    }

    /// A unary call: exactly one request message.
    pub(crate) fn is_unary(&self) -> bool {
        matches!(self.policy, Policy::AsyncUnary | Policy::Sync)
    }

    /// Whether each report goes upstream in a call of its own: a unary method's (OAP's
    /// unary handlers take exactly one message), and events (OAP closes an event stream at
    /// the first event it refuses; alone, a refused event takes no other with it).
    pub(crate) fn sends_alone(&self) -> bool {
        self.is_unary() || self.shape == Shape::Events
    }
}

const fn m(
    path: &'static str,
    policy: Policy,
    shape: Shape,
    protocol: &'static str,
    oap_reads: &'static str,
) -> Method {
    Method {
        path,
        policy,
        shape,
        protocol,
        oap_reads,
    }
}

use Policy::{AsyncStream, AsyncUnary, PassThrough, Sync};
use Shape::{Events, FirstIdentifier, FirstService, Independent, Latest, MeterBatch, MeterSet};

/// Every method with a policy of its own.
pub static METHODS: &[Method] = &[
    m(
        "/skywalking.v3.TraceSegmentReportService/collect",
        AsyncStream,
        Independent,
        "segment",
        "TraceSegmentReportServiceHandler: each SegmentObject on its own (service 4, instance 5)",
    ),
    m(
        "/skywalking.v3.TraceSegmentReportService/collectInSync",
        AsyncUnary,
        Independent,
        "segment",
        "TraceSegmentReportServiceHandler: the one SegmentCollection, each segment on its own",
    ),
    m(
        "/skywalking.v3.SpanAttachedEventReportService/collect",
        AsyncStream,
        Independent,
        "span_attached_event",
        "SpanAttachedEventReportServiceHandler: each event on its own (traceContext 6)",
    ),
    m(
        "/skywalking.v3.LogReportService/collect",
        AsyncStream,
        FirstService,
        "log",
        "LogReportServiceGrpcHandler: service (2) of the first LogData that has one, written into every later one; instance (3) per message",
    ),
    m(
        "/skywalking.v3.MeterReportService/collect",
        AsyncStream,
        MeterSet,
        "meter",
        "MeterServiceHandler: the whole stream is one set; service (3), instance (4), timestamp (5) from its messages, usually the first",
    ),
    m(
        "/skywalking.v3.MeterReportService/collectBatch",
        AsyncStream,
        MeterBatch,
        "meter",
        "MeterServiceHandler: each MeterDataCollection is one set, named by its MeterData",
    ),
    m(
        "/skywalking.v3.JVMMetricReportService/collect",
        AsyncUnary,
        Independent,
        "jvm",
        "JVMMetricReportServiceHandler: the one JVMMetricCollection (service 2, instance 3)",
    ),
    m(
        "/skywalking.v3.CLRMetricReportService/collect",
        AsyncUnary,
        Independent,
        "clr",
        "CLRMetricReportServiceHandler: the one CLRMetricCollection (service 2, instance 3)",
    ),
    m(
        "/skywalking.v3.ManagementService/reportInstanceProperties",
        AsyncUnary,
        Independent,
        "management",
        "ManagementServiceHandler: the one InstanceProperties (service 1, instance 2)",
    ),
    m(
        "/skywalking.v3.ManagementService/keepAlive",
        AsyncUnary,
        Independent,
        "management",
        "ManagementServiceHandler: the one InstancePingPkg (service 1, instance 2)",
    ),
    m(
        "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations",
        Sync,
        Independent,
        "configuration",
        "ConfigurationDiscoveryServiceHandler: the request (service 1, uuid 2); answers the agent's configuration",
    ),
    m(
        "/skywalking.v3.EventService/collect",
        AsyncStream,
        Events,
        "event",
        "EventGrpcServiceHandler: each Event on its own; an empty or unknown layer (9) closes the stream with INVALID_ARGUMENT",
    ),
    m(
        "/skywalking.v3.ProfileTask/getProfileTaskCommands",
        Sync,
        Independent,
        "profile",
        "ProfileTaskServiceHandler: the query (service 1, instance 2); answers the tasks",
    ),
    m(
        "/skywalking.v3.ProfileTask/collectSnapshot",
        AsyncStream,
        Independent,
        "profile",
        "ProfileTaskServiceHandler: each ThreadSnapshot on its own (taskId 1)",
    ),
    m(
        "/skywalking.v3.ProfileTask/goProfileReport",
        PassThrough,
        Independent,
        "profile",
        "ProfileTaskServiceHandler: chunks (payload 2) gathered per stream while taskId (1) stays the same, parsed at isLast (3): the stream must reach one OAP whole",
    ),
    m(
        "/skywalking.v3.ProfileTask/reportTaskFinish",
        Sync,
        Independent,
        "profile",
        "ProfileTaskServiceHandler: the report (service 1, instance 2, taskId 3)",
    ),
    m(
        "/skywalking.v3.BrowserPerfService/collectPerfData",
        AsyncUnary,
        Independent,
        "browser",
        "BrowserPerfServiceHandler: the one BrowserPerfData (service 1, version 2)",
    ),
    m(
        "/skywalking.v3.BrowserPerfService/collectWebVitalsPerfData",
        AsyncUnary,
        Independent,
        "browser",
        "BrowserPerfServiceHandler: the one message (service 1, version 2)",
    ),
    m(
        "/skywalking.v3.BrowserPerfService/collectResourcePerfData",
        AsyncUnary,
        Independent,
        "browser",
        "BrowserPerfServiceHandler: the one message (service 1, version 2)",
    ),
    m(
        "/skywalking.v3.BrowserPerfService/collectWebInteractionsPerfData",
        AsyncUnary,
        Independent,
        "browser",
        "BrowserPerfServiceHandler: the one message (service 1, version 2)",
    ),
    m(
        "/skywalking.v3.BrowserPerfService/collectErrorLogs",
        AsyncStream,
        Independent,
        "browser",
        "BrowserPerfServiceHandler: each BrowserErrorLog on its own (service 2, version 3)",
    ),
    m(
        "/skywalking.v3.EBPFProcessService/reportProcesses",
        Sync,
        Independent,
        "ebpf",
        "EBPFProcessServiceHandler: the process list; answers their ids",
    ),
    m(
        "/skywalking.v3.EBPFProcessService/keepAlive",
        Sync,
        Independent,
        "ebpf",
        "EBPFProcessServiceHandler: the process pings",
    ),
    m(
        "/skywalking.v3.EBPFProfilingService/queryTasks",
        Sync,
        Independent,
        "ebpf",
        "EBPFProfilingServiceHandler: the query (roverInstanceId 1); answers the tasks",
    ),
    m(
        "/skywalking.v3.EBPFProfilingService/collectProfilingData",
        AsyncStream,
        Latest {
            metadata: 1,
            context: None,
        },
        "ebpf",
        "EBPFProfilingServiceHandler: task (1) of the first message or of the last that carried one",
    ),
    m(
        "/skywalking.v3.ContinuousProfilingService/queryPolicies",
        Sync,
        Independent,
        "continuous_profiling",
        "ContinuousProfilingServiceHandler: the query; answers the policies",
    ),
    m(
        "/skywalking.v3.ContinuousProfilingService/reportProfilingTask",
        Sync,
        Independent,
        "continuous_profiling",
        "ContinuousProfilingServiceHandler: the report; answers the task",
    ),
    m(
        "/skywalking.v3.EBPFAccessLogService/collect",
        AsyncStream,
        Latest {
            metadata: 1,
            context: Some(2),
        },
        "ebpf_access_log",
        "AccessLogServiceHandler: node (1) of the first message or of the last that carried one; connection (2) of the last message that carried one (logs before any connection are dropped)",
    ),
    m(
        "/skywalking.v3.ServiceMeshMetricService/collect",
        AsyncStream,
        Independent,
        "mesh",
        "MeshGRPCHandler: each message on its own",
    ),
    m(
        "/skywalking.v10.AsyncProfilerTask/collect",
        PassThrough,
        Independent,
        "async_profiler",
        "AsyncProfilerServiceHandler: bidirectional upload, metadata first: the stream must reach one OAP whole",
    ),
    m(
        "/skywalking.v10.AsyncProfilerTask/getAsyncProfilerTaskCommands",
        Sync,
        Independent,
        "async_profiler",
        "AsyncProfilerServiceHandler: the query; answers the tasks",
    ),
    m(
        "/skywalking.v10.PprofTask/collect",
        PassThrough,
        Independent,
        "pprof",
        "PprofServiceHandler: bidirectional upload, metadata first: the stream must reach one OAP whole",
    ),
    m(
        "/skywalking.v10.PprofTask/getPprofTaskCommands",
        Sync,
        Independent,
        "pprof",
        "PprofServiceHandler: the query; answers the tasks",
    ),
    m(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        AsyncStream,
        FirstIdentifier,
        "envoy_als",
        "AccessLogServiceGRPCHandler: identifier (1) of the first message only, for the whole stream",
    ),
    m(
        "/envoy.service.metrics.v3.MetricsService/StreamMetrics",
        AsyncStream,
        FirstIdentifier,
        "envoy_metrics",
        "MetricServiceGRPCHandler: identifier (1) of the first message only, for the whole stream",
    ),
];

/// Package older agents leave out (`/TraceSegmentReportService/collect`).
const COMPAT_PACKAGE: &str = "skywalking.v3";

/// The method a request path (`/package.Service/Method`) names, if the proxy knows it.
pub(crate) fn lookup(path: &str) -> Option<&'static Method> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    let known = |svc: &str| {
        METHODS
            .iter()
            .find(|m| m.service() == svc && m.name() == method)
    };
    if service.contains('.') {
        known(service)
    } else {
        let qualified = format!("{COMPAT_PACKAGE}.{service}");
        known(&qualified)
    }
}

impl Policy {
    /// What the proxy does with a call, in a few words (for the protocol reference).
    pub fn describe(self) -> &'static str {
        match self {
            Policy::AsyncStream => "acknowledged; queued",
            Policy::AsyncUnary => "acknowledged; queued, one upstream call each",
            Policy::Sync => "forwarded at once, the answer relayed",
            Policy::PassThrough => "forwarded whole to one upstream, both ways",
        }
    }
}

impl Shape {
    /// What the proxy does to a stream of this shape (for the protocol reference).
    pub fn describe(self) -> &'static str {
        match self {
            Shape::Independent => "batched, balanced message by message",
            Shape::Events => "one event per upstream call; an event without a layer is refused",
            Shape::MeterSet => {
                "the set becomes one collectBatch message, routed by service and instance"
            }
            Shape::MeterBatch => "batched, routed by service and instance",
            Shape::FirstService => {
                "batched; the stream's first service written into every later message; upstream streams of one service"
            }
            Shape::FirstIdentifier => {
                "batched; the first identifier written into every later message; upstream streams of one sender"
            }
            Shape::Latest { context: None, .. } => {
                "batched; the task in force written into every message; upstream streams of one task"
            }
            Shape::Latest {
                context: Some(_), ..
            } => {
                "batched; the node and connection in force written into every message; upstream streams of one node"
            }
        }
    }
}

/// The method table as Markdown, as `docs/protocols.md` holds it (a test keeps the two
/// the same).
#[cfg(test)]
pub(crate) fn markdown_table() -> String {
    let mut out =
        String::from("| method | the proxy | what OAP reads (handler) |\n|---|---|---|\n");
    for method in METHODS {
        let what = match method.policy {
            Policy::AsyncStream => {
                format!("{}; {}", method.policy.describe(), method.shape.describe())
            }
            _ => method.policy.describe().to_string(),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            method.path.trim_start_matches('/'),
            what,
            method.oap_reads
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_skywalking_method_is_recognised() {
        let with = lookup("/skywalking.v3.TraceSegmentReportService/collect").unwrap();
        let without = lookup("/TraceSegmentReportService/collect").unwrap();
        assert_eq!(with, without);
        assert_eq!(with.policy, Policy::AsyncStream);
        assert_eq!(
            lookup("/ConfigurationDiscoveryService/fetchConfigurations")
                .unwrap()
                .policy,
            Policy::Sync
        );
        assert_eq!(
            lookup("/skywalking.v3.MeterReportService/collectBatch")
                .unwrap()
                .shape,
            Shape::MeterBatch
        );
        assert_eq!(
            lookup("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs")
                .unwrap()
                .protocol,
            "envoy_als"
        );
        assert_eq!(
            lookup("/skywalking.v10.PprofTask/collect").unwrap().policy,
            Policy::PassThrough
        );
        // Whatever the client's spelling, the upstream is called on OAP's registered name.
        assert_eq!(
            without.path,
            "/skywalking.v3.TraceSegmentReportService/collect"
        );
        assert_eq!(
            (with.service(), with.name()),
            ("skywalking.v3.TraceSegmentReportService", "collect")
        );
    }

    #[test]
    fn unknown_methods_and_malformed_paths_are_not_claimed() {
        for path in [
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "/TraceSegmentReportService/unknown",
            "/AccessLogService/StreamAccessLogs", // Envoy services are always qualified
            "TraceSegmentReportService/collect",
            "/skywalking.v3.TraceSegmentReportService/",
            "/a/b/c",
        ] {
            assert_eq!(lookup(path), None, "{path}");
        }
    }

    /// `docs/protocols.md` holds [`markdown_table`] between its markers;
    /// `SKYLIFT_UPDATE_DOCS=1 cargo test -p skylift-proxy` writes it there.
    #[test]
    fn the_protocol_reference_says_what_the_table_says() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocols.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- methods:begin -->\n", "<!-- methods:end -->");
        let start = doc.find(begin).expect("the begin marker") + begin.len();
        let stop = doc.find(end).expect("the end marker");
        let table = markdown_table();
        if doc[start..stop] != table {
            if std::env::var_os("SKYLIFT_UPDATE_DOCS").is_some() {
                std::fs::write(path, format!("{}{table}{}", &doc[..start], &doc[stop..])).unwrap();
            } else {
                panic!(
                    "docs/protocols.md is stale: run SKYLIFT_UPDATE_DOCS=1 cargo test -p skylift-proxy"
                );
            }
        }
    }

    #[test]
    fn the_table_has_no_duplicates() {
        for (i, a) in METHODS.iter().enumerate() {
            for b in &METHODS[i + 1..] {
                assert!(a.path != b.path, "{}", a.path);
            }
        }
    }
}
