//! What the proxy does with each gRPC method: the SkyWalking v3 / v10 and Envoy services
//! and the policy each gets (see the protocol reference). Anything not listed is passed
//! through per request.

/// How a method is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Client stream of reports: every message is queued and the stream is answered with an
    /// empty `Commands` when it ends.
    AsyncStream,
    /// One report: queued and answered with an empty `Commands` at once.
    AsyncUnary,
    /// Forwarded to one upstream at once; its answer (or status) is relayed.
    Sync,
    /// Forwarded as is, streaming both ways (bidirectional SkyWalking v10 tasks, unknown
    /// services).
    PassThrough,
}

/// How a stream's messages relate to each other, which decides how they may be split into
/// batches and mixed with other clients' messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Every message stands alone; balanced message by message.
    Independent,
    /// `MeterReportService/collect`: the whole stream is one set, with service, instance and
    /// timestamp on its first message only. OAP reads them from the first message of each
    /// stream it gets, so the set is turned into one `MeterDataCollection` and sent with
    /// `collectBatch`, where every message is a set of its own; the service and instance
    /// are its routing key.
    MeterSet,
    /// `MeterReportService/collectBatch`: each message is a `MeterDataCollection` whose first
    /// `MeterData` names the service and instance (the routing key).
    MeterBatch,
    /// Envoy's streams: the first message's `identifier` (field 1) names the sending proxy
    /// and OAP reads it from the first message of each stream only. Every later message gets
    /// the identifier written in, and an upstream stream only carries one sender's messages.
    Identified,
}

/// A method the proxy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// Fully qualified service, e.g. `skywalking.v3.TraceSegmentReportService`.
    pub service: &'static str,
    pub method: &'static str,
    pub policy: Policy,
    pub shape: Shape,
    /// Short protocol name for metrics labels, e.g. `segment`.
    pub protocol: &'static str,
}

const fn m(
    service: &'static str,
    method: &'static str,
    policy: Policy,
    protocol: &'static str,
) -> Method {
    Method {
        service,
        method,
        policy,
        shape: Shape::Independent,
        protocol,
    }
}

use Policy::{AsyncStream, AsyncUnary, PassThrough, Sync};

/// Every method with a policy of its own.
pub static METHODS: &[Method] = &[
    m(
        "skywalking.v3.TraceSegmentReportService",
        "collect",
        AsyncStream,
        "segment",
    ),
    m(
        "skywalking.v3.TraceSegmentReportService",
        "collectInSync",
        AsyncUnary,
        "segment",
    ),
    m(
        "skywalking.v3.SpanAttachedEventReportService",
        "collect",
        AsyncStream,
        "span_attached_event",
    ),
    m(
        "skywalking.v3.LogReportService",
        "collect",
        AsyncStream,
        "log",
    ),
    Method {
        service: "skywalking.v3.MeterReportService",
        method: "collect",
        policy: AsyncStream,
        shape: Shape::MeterSet,
        protocol: "meter",
    },
    Method {
        service: "skywalking.v3.MeterReportService",
        method: "collectBatch",
        policy: AsyncStream,
        shape: Shape::MeterBatch,
        protocol: "meter",
    },
    m(
        "skywalking.v3.JVMMetricReportService",
        "collect",
        AsyncUnary,
        "jvm",
    ),
    m(
        "skywalking.v3.CLRMetricReportService",
        "collect",
        AsyncUnary,
        "clr",
    ),
    m(
        "skywalking.v3.ManagementService",
        "reportInstanceProperties",
        AsyncUnary,
        "management",
    ),
    m(
        "skywalking.v3.ManagementService",
        "keepAlive",
        AsyncUnary,
        "management",
    ),
    m(
        "skywalking.v3.ConfigurationDiscoveryService",
        "fetchConfigurations",
        Sync,
        "configuration",
    ),
    m(
        "skywalking.v3.EventService",
        "collect",
        AsyncStream,
        "event",
    ),
    m(
        "skywalking.v3.ProfileTask",
        "getProfileTaskCommands",
        Sync,
        "profile",
    ),
    m(
        "skywalking.v3.ProfileTask",
        "collectSnapshot",
        AsyncStream,
        "profile",
    ),
    m(
        "skywalking.v3.ProfileTask",
        "goProfileReport",
        AsyncStream,
        "profile",
    ),
    m(
        "skywalking.v3.ProfileTask",
        "reportTaskFinish",
        Sync,
        "profile",
    ),
    m(
        "skywalking.v3.BrowserPerfService",
        "collectPerfData",
        AsyncUnary,
        "browser",
    ),
    m(
        "skywalking.v3.BrowserPerfService",
        "collectWebVitalsPerfData",
        AsyncUnary,
        "browser",
    ),
    m(
        "skywalking.v3.BrowserPerfService",
        "collectResourcePerfData",
        AsyncUnary,
        "browser",
    ),
    m(
        "skywalking.v3.BrowserPerfService",
        "collectWebInteractionsPerfData",
        AsyncUnary,
        "browser",
    ),
    m(
        "skywalking.v3.BrowserPerfService",
        "collectErrorLogs",
        AsyncStream,
        "browser",
    ),
    m(
        "skywalking.v3.EBPFProcessService",
        "reportProcesses",
        Sync,
        "ebpf",
    ),
    m(
        "skywalking.v3.EBPFProcessService",
        "keepAlive",
        Sync,
        "ebpf",
    ),
    m(
        "skywalking.v3.EBPFProfilingService",
        "queryTasks",
        Sync,
        "ebpf",
    ),
    m(
        "skywalking.v3.EBPFProfilingService",
        "collectProfilingData",
        AsyncStream,
        "ebpf",
    ),
    m(
        "skywalking.v3.ContinuousProfilingService",
        "queryPolicies",
        Sync,
        "continuous_profiling",
    ),
    m(
        "skywalking.v3.ContinuousProfilingService",
        "reportProfilingTask",
        Sync,
        "continuous_profiling",
    ),
    m(
        "skywalking.v3.EBPFAccessLogService",
        "collect",
        AsyncStream,
        "ebpf_access_log",
    ),
    m(
        "skywalking.v3.ServiceMeshMetricService",
        "collect",
        AsyncStream,
        "mesh",
    ),
    m(
        "skywalking.v10.AsyncProfilerTask",
        "collect",
        PassThrough,
        "async_profiler",
    ),
    m(
        "skywalking.v10.AsyncProfilerTask",
        "getAsyncProfilerTaskCommands",
        Sync,
        "async_profiler",
    ),
    m("skywalking.v10.PprofTask", "collect", PassThrough, "pprof"),
    m(
        "skywalking.v10.PprofTask",
        "getPprofTaskCommands",
        Sync,
        "pprof",
    ),
    Method {
        service: "envoy.service.accesslog.v3.AccessLogService",
        method: "StreamAccessLogs",
        policy: AsyncStream,
        shape: Shape::Identified,
        protocol: "envoy_als",
    },
    Method {
        service: "envoy.service.metrics.v3.MetricsService",
        method: "StreamMetrics",
        policy: AsyncStream,
        shape: Shape::Identified,
        protocol: "envoy_metrics",
    },
];

/// Package older agents leave out (`/TraceSegmentReportService/collect`).
const COMPAT_PACKAGE: &str = "skywalking.v3";

/// The method a request path (`/package.Service/Method`) names, if the proxy knows it.
pub fn lookup(path: &str) -> Option<&'static Method> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    let known = |svc: &str| {
        METHODS
            .iter()
            .find(|m| m.service == svc && m.method == method)
    };
    if service.contains('.') {
        known(service)
    } else {
        let qualified = format!("{COMPAT_PACKAGE}.{service}");
        known(&qualified)
    }
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

    #[test]
    fn the_table_has_no_duplicates() {
        for (i, a) in METHODS.iter().enumerate() {
            for b in &METHODS[i + 1..] {
                assert!(
                    !(a.service == b.service && a.method == b.method),
                    "{}/{}",
                    a.service,
                    a.method
                );
            }
        }
    }
}
