//! OTLP export requests taken apart for affinity: a trace export split by trace ID, so that
//! every span of a trace reaches one collector (tail sampling needs the whole trace), a
//! metrics export split by a resource attribute (`service.name` by default), so that one
//! service's series reach one collector (cumulative-to-delta and other stateful processors
//! need it), and a logs export split by its records' trace IDs when asked. Only the wire
//! format is walked: resources, scopes, spans and records are copied as they came.
//!
//! The messages (opentelemetry-proto, `collector/*/v1` and `trace/v1`, `metrics/v1`,
//! `logs/v1`):
//! - `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`;
//!   `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2;
//!   string schema_url = 3; }`; `ScopeSpans { InstrumentationScope scope = 1;
//!   repeated Span spans = 2; string schema_url = 3; }`; `Span { bytes trace_id = 1; ... }`;
//! - `ExportLogsServiceRequest { repeated ResourceLogs resource_logs = 1; }` with the same
//!   shape below it (`scope_logs = 2`, `log_records = 2`) and `LogRecord { bytes trace_id
//!   = 9; ... }`;
//! - `ExportMetricsServiceRequest { repeated ResourceMetrics resource_metrics = 1; }`;
//!   `ResourceMetrics { Resource resource = 1; repeated ScopeMetrics scope_metrics = 2; }`;
//!   `ScopeMetrics { repeated Metric metrics = 2; }`; `Metric { oneof data { Gauge gauge
//!   = 5; Sum sum = 7; Histogram histogram = 9; ExponentialHistogram
//!   exponential_histogram = 10; Summary summary = 11; } }`, each with `data_points = 1`;
//!   `Resource { repeated KeyValue attributes = 1; }`; `KeyValue { string key = 1; AnyValue
//!   value = 2; }`; `AnyValue { oneof value { string string_value = 1; ... } }`;
//! - `ExportTraceServiceResponse { ExportTracePartialSuccess partial_success = 1; }`;
//!   `ExportTracePartialSuccess { int64 rejected_spans = 1; string error_message = 2; }`
//!   (the metrics and logs ones count `rejected_data_points` and `rejected_log_records`
//!   the same way).

use bytes::{Bytes, BytesMut};

use crate::grpc::wire::{self, WireError};

pub const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
pub const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The OTLP signal an export carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    /// The signal of an export method's path.
    pub fn of_path(path: &str) -> Option<Signal> {
        match path {
            TRACE_EXPORT => Some(Signal::Traces),
            METRICS_EXPORT => Some(Signal::Metrics),
            LOGS_EXPORT => Some(Signal::Logs),
            _ => None,
        }
    }

    /// The signal of an OTLP/HTTP export path.
    pub fn of_http_path(path: &str) -> Option<Signal> {
        match path {
            "/v1/traces" => Some(Signal::Traces),
            "/v1/metrics" => Some(Signal::Metrics),
            "/v1/logs" => Some(Signal::Logs),
            _ => None,
        }
    }

    /// The signal's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// What the signal's partial success counts.
    pub fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
            Signal::Logs => "log records",
        }
    }
}

const RESOURCE_SPANS: u64 = 1;
const SCOPE_SPANS: u64 = 2;
const SPANS: u64 = 2;
const TRACE_ID: u64 = 1;
const LOG_TRACE_ID: u64 = 9;
const RESOURCE_METRICS: u64 = 1;
const SCOPE_METRICS: u64 = 2;
const METRICS: u64 = 2;
/// `Metric`'s data kinds: gauge, sum, histogram, exponential histogram, summary.
const METRIC_DATA: [u64; 5] = [5, 7, 9, 10, 11];
const DATA_POINTS: u64 = 1;
const RESOURCE: u64 = 1;
const ATTRIBUTES: u64 = 1;
const KEY: u64 = 1;
const VALUE: u64 = 2;
const STRING_VALUE: u64 = 1;
const PARTIAL_SUCCESS: u64 = 1;
const REJECTED: u64 = 1;
const ERROR_MESSAGE: u64 = 2;

/// One part of a split export: the target it goes to, the export request carrying its
/// share, and how many spans (data points, log records) that is.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub target: usize,
    /// The request framed as a gRPC message (a 5-byte header, uncompressed), written once:
    /// each span's bytes are copied a single time, into the part they go to.
    pub framed: Bytes,
    pub items: u64,
}

impl Part {
    /// The export request alone (the body of an OTLP/HTTP export).
    pub fn request(&self) -> Bytes {
        self.framed.slice(5..)
    }
}

/// A buffer for a message of `len` bytes, its gRPC frame header written.
fn framed_buffer(len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out
}

/// The spans of one scope that go to one target, in their order.
struct ScopeShare<'a> {
    scope: usize,
    spans: Vec<&'a [u8]>,
}

/// The spans of one resource that go to one target, scope by scope.
struct ResourceShare<'a> {
    resource: usize,
    scopes: Vec<ScopeShare<'a>>,
}

/// The share of target `to` among `shares` (target, what it carries, how many items),
/// added empty at the end the first time.
fn share_of<T: Default>(shares: &mut Vec<(usize, T, u64)>, to: usize) -> &mut (usize, T, u64) {
    let index = match shares.iter().position(|(t, ..)| *t == to) {
        Some(index) => index,
        None => {
            shares.push((to, T::default(), 0));
            shares.len() - 1
        }
    };
    &mut shares[index]
}

/// Splits a trace export by trace ID: `target` picks the part of each span from its trace
/// ID (empty when the span has none), and every span keeps its resource and scope. Parts
/// come in the order of their first span; within a part, spans keep their order.
pub fn split_traces(
    request: &[u8],
    target: impl FnMut(&[u8]) -> usize,
) -> Result<Vec<Part>, WireError> {
    split_by_trace_id(request, TRACE_ID, target)
}

/// Splits a logs export by its records' trace IDs, as [`split_traces`] does spans
/// (`target` sees an empty ID for a record outside any trace).
pub fn split_logs(
    request: &[u8],
    target: impl FnMut(&[u8]) -> usize,
) -> Result<Vec<Part>, WireError> {
    split_by_trace_id(request, LOG_TRACE_ID, target)
}

/// Traces and logs share their shape (resource → scope → item, each list field 2 under
/// field 1); only the item's trace ID field differs.
fn split_by_trace_id(
    request: &[u8],
    trace_id_field: u64,
    mut target: impl FnMut(&[u8]) -> usize,
) -> Result<Vec<Part>, WireError> {
    let resources = wire::values_of(request, RESOURCE_SPANS)?;
    // What each resource and scope carries besides its children, copied to every part.
    let mut resource_headers = Vec::with_capacity(resources.len());
    let mut scope_headers: Vec<Vec<Vec<u8>>> = Vec::with_capacity(resources.len());
    let mut shares: Vec<(usize, Vec<ResourceShare>, u64)> = Vec::new();
    for (r, resource) in resources.iter().enumerate() {
        resource_headers.push(wire::without_fields(resource, &[SCOPE_SPANS])?);
        let scopes = wire::values_of(resource, SCOPE_SPANS)?;
        let mut headers = Vec::with_capacity(scopes.len());
        for (s, scope) in scopes.iter().enumerate() {
            headers.push(wire::without_fields(scope, &[SPANS])?);
            for span in wire::values_of(scope, SPANS)? {
                let trace_id = wire::last_value(span, trace_id_field)?.unwrap_or_default();
                let to = target(trace_id);
                let (_, resources, count) = share_of(&mut shares, to);
                *count += 1;
                if resources.last().is_none_or(|share| share.resource != r) {
                    resources.push(ResourceShare {
                        resource: r,
                        scopes: Vec::new(),
                    });
                }
                let scopes = &mut resources.last_mut().expect("pushed").scopes;
                if scopes.last().is_none_or(|share| share.scope != s) {
                    scopes.push(ScopeShare {
                        scope: s,
                        spans: Vec::new(),
                    });
                }
                scopes.last_mut().expect("pushed").spans.push(span);
            }
        }
        scope_headers.push(headers);
    }
    // Sizes first, then each part written once into a buffer of its size.
    let scope_len = |resource: usize, share: &ScopeShare| {
        scope_headers[resource][share.scope].len()
            + share
                .spans
                .iter()
                .map(|span| wire::length_delimited_len(SPANS, span.len()))
                .sum::<usize>()
    };
    let resource_len = |share: &ResourceShare| {
        resource_headers[share.resource].len()
            + share
                .scopes
                .iter()
                .map(|scope| {
                    wire::length_delimited_len(SCOPE_SPANS, scope_len(share.resource, scope))
                })
                .sum::<usize>()
    };
    Ok(shares
        .into_iter()
        .map(|(target, resources, items)| {
            let total = resources
                .iter()
                .map(|share| wire::length_delimited_len(RESOURCE_SPANS, resource_len(share)))
                .sum();
            let mut out = framed_buffer(total);
            for share in &resources {
                wire::put_field_header(&mut out, RESOURCE_SPANS, resource_len(share));
                out.extend_from_slice(&resource_headers[share.resource]);
                for scope in &share.scopes {
                    wire::put_field_header(&mut out, SCOPE_SPANS, scope_len(share.resource, scope));
                    out.extend_from_slice(&scope_headers[share.resource][scope.scope]);
                    for span in &scope.spans {
                        wire::put_length_delimited(&mut out, SPANS, &[span]);
                    }
                }
            }
            Part {
                target,
                framed: out.freeze(),
                items,
            }
        })
        .collect())
}

/// The string value of a resource's attribute `key`, if it has one.
fn attribute<'a>(resource: &'a [u8], key: &str) -> Result<Option<&'a str>, WireError> {
    let mut found = None;
    for attribute in wire::values_of(resource, ATTRIBUTES)? {
        if wire::string_field(attribute, KEY)? == Some(key)
            && let Some(value) = wire::last_value(attribute, VALUE)?
            && let Some(name) = wire::string_field(value, STRING_VALUE)?
        {
            found = Some(name);
        }
    }
    Ok(found)
}

/// The data points a `ResourceMetrics` carries (what a metrics partial success counts).
fn data_points(resource_metrics: &[u8]) -> Result<u64, WireError> {
    let mut count = 0;
    for scope in wire::values_of(resource_metrics, SCOPE_METRICS)? {
        for metric in wire::values_of(scope, METRICS)? {
            for kind in METRIC_DATA {
                if let Some(data) = wire::last_value(metric, kind)? {
                    count += wire::values_of(data, DATA_POINTS)?.len() as u64;
                }
            }
        }
    }
    Ok(count)
}

/// Splits a metrics export by each resource's attribute `key` (`service.name` by
/// default): `target` picks the part of each `ResourceMetrics` (whole) from the
/// attribute's string value (`None` without one). A part's items are its data points.
pub fn split_metrics(
    request: &[u8],
    key: &str,
    mut target: impl FnMut(Option<&str>) -> usize,
) -> Result<Vec<Part>, WireError> {
    let mut parts: Vec<(usize, Vec<&[u8]>, u64)> = Vec::new();
    for resource_metrics in wire::values_of(request, RESOURCE_METRICS)? {
        let resource = wire::last_value(resource_metrics, RESOURCE)?.unwrap_or_default();
        let to = target(attribute(resource, key)?);
        let points = data_points(resource_metrics)?;
        let (_, resources, items) = share_of(&mut parts, to);
        resources.push(resource_metrics);
        *items += points;
    }
    Ok(parts
        .into_iter()
        .map(|(target, resources, items)| {
            let total = resources
                .iter()
                .map(|r| wire::length_delimited_len(RESOURCE_METRICS, r.len()))
                .sum();
            let mut out = framed_buffer(total);
            for resource_metrics in resources {
                wire::put_length_delimited(&mut out, RESOURCE_METRICS, &[resource_metrics]);
            }
            Part {
                target,
                framed: out.freeze(),
                items,
            }
        })
        .collect())
}

/// What an export response says was rejected: the count (spans or data points) and the
/// message, zero and `None` for full success.
pub fn rejected(response: &[u8]) -> Result<(u64, Option<String>), WireError> {
    let Some(partial) = wire::last_value(response, PARTIAL_SUCCESS)? else {
        return Ok((0, None));
    };
    let count = wire::varint_field(partial, REJECTED)?.unwrap_or(0);
    let message = wire::string_field(partial, ERROR_MESSAGE)?
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    Ok((count, message))
}

/// An export response: full success when nothing was rejected, else `partial_success`
/// with the count and the message (OTLP's partial success: the client keeps the rest).
pub fn response(rejected: u64, message: &str) -> Vec<u8> {
    if rejected == 0 && message.is_empty() {
        return Vec::new();
    }
    let mut partial = BytesMut::new();
    if rejected > 0 {
        wire::put_varint_field(&mut partial, REJECTED, rejected);
    }
    if !message.is_empty() {
        wire::put_length_delimited(&mut partial, ERROR_MESSAGE, &[message.as_bytes()]);
    }
    let mut out = BytesMut::new();
    wire::put_length_delimited(&mut out, PARTIAL_SUCCESS, &[&partial]);
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire::tests::message;

    fn span(trace: u8, name: &str) -> Vec<u8> {
        message(&[
            (1, &[trace; 16]),
            (2, &[trace, 1, 2, 3, 4, 5, 6, 7]),
            (5, name.as_bytes()),
        ])
    }

    fn scope(name: &str, spans: &[Vec<u8>]) -> Vec<u8> {
        let scope = message(&[(1, name.as_bytes())]);
        let mut fields: Vec<(u64, &[u8])> = vec![(1, &scope), (3, b"https://schema/scope")];
        fields.extend(spans.iter().map(|s| (2, s.as_slice())));
        message(&fields)
    }

    fn resource(service: &str, scopes: &[Vec<u8>]) -> Vec<u8> {
        let value = message(&[(1, service.as_bytes())]);
        let attribute = message(&[(1, b"service.name"), (2, &value)]);
        let resource = message(&[(1, &attribute)]);
        let mut fields: Vec<(u64, &[u8])> = vec![(1, &resource)];
        fields.extend(scopes.iter().map(|s| (2, s.as_slice())));
        fields.push((3, b"https://schema/resource"));
        message(&fields)
    }

    fn request(resources: &[Vec<u8>]) -> Vec<u8> {
        let fields: Vec<(u64, &[u8])> = resources.iter().map(|r| (1, r.as_slice())).collect();
        message(&fields)
    }

    /// Every span of a request with the resource and scope it sits in (each without its
    /// children), in order.
    fn flatten(request: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for r in wire::values_of(request, 1).unwrap() {
            let resource = wire::without_fields(r, &[2]).unwrap();
            for s in wire::values_of(r, 2).unwrap() {
                let scope = wire::without_fields(s, &[2]).unwrap();
                for span in wire::values_of(s, 2).unwrap() {
                    out.push((resource.clone(), scope.clone(), span.to_vec()));
                }
            }
        }
        out
    }

    #[test]
    fn every_span_goes_once_with_its_resource_and_scope_to_its_trace_ids_part() {
        // Two services, two scopes each, spans of five traces interleaved; trace 3 has
        // spans in both services.
        let original = request(&[
            resource(
                "checkout",
                &[
                    scope("http", &[span(1, "a"), span(2, "b"), span(3, "c")]),
                    scope("db", &[span(2, "d"), span(4, "e")]),
                ],
            ),
            resource(
                "payment",
                &[
                    scope("http", &[span(3, "f"), span(5, "g")]),
                    scope("grpc", &[span(1, "h")]),
                ],
            ),
        ]);
        let target = |trace_id: &[u8]| usize::from(trace_id[0] % 3);
        let parts = split_traces(&original, target).unwrap();
        assert_eq!(parts.iter().map(|p| p.items).sum::<u64>(), 8);
        let mut all = Vec::new();
        for part in &parts {
            let spans = flatten(&part.request());
            assert_eq!(spans.len() as u64, part.items);
            for (_, _, span) in &spans {
                let trace_id = wire::last_value(span, 1).unwrap().unwrap();
                assert_eq!(target(trace_id), part.target, "one target per trace");
            }
            all.extend(spans);
        }
        // The same spans with the same resource and scope, none lost or repeated.
        let mut expected = flatten(&original);
        expected.sort();
        all.sort();
        assert_eq!(all, expected);
        // Trace 1's part: spans of both services, in their order.
        let first = parts.iter().find(|p| p.target == 1).unwrap();
        let names: Vec<String> = flatten(&first.request())
            .iter()
            .map(|(_, _, span)| wire::string_field(span, 5).unwrap().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "e", "h"]);
    }

    #[test]
    fn one_target_gives_back_one_part_and_garbage_is_an_error() {
        let original = request(&[resource("checkout", &[scope("http", &[span(1, "a")])])]);
        let parts = split_traces(&original, |_| 0).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(flatten(&parts[0].request()), flatten(&original));
        assert!(split_traces(&[0x0a, 0x05, 1], |_| 0).is_err());
        assert_eq!(split_traces(&[], |_| 0).unwrap(), Vec::new());
    }

    #[test]
    fn metrics_go_whole_by_their_service_name() {
        let metrics = |service: Option<&str>| -> Vec<u8> {
            let resource = match service {
                Some(service) => {
                    let value = message(&[(1, service.as_bytes())]);
                    let attribute = message(&[(1, b"service.name"), (2, &value)]);
                    message(&[(1, &attribute)])
                }
                None => message(&[]),
            };
            // One gauge of two points and one sum of one: three data points.
            let point = message(&[(7, b"attributes")]);
            let gauge = message(&[(1, &point), (1, &point)]);
            let sum = message(&[(1, &point), (2, &[])]);
            let scope = message(&[
                (2, &message(&[(1, b"cpu"), (5, &gauge)])),
                (2, &message(&[(1, b"requests"), (7, &sum)])),
            ]);
            message(&[(1, &resource), (2, &scope)])
        };
        let original = message(&[
            (1, &metrics(Some("checkout"))),
            (1, &metrics(Some("payment"))),
            (1, &metrics(None)),
            (1, &metrics(Some("checkout"))),
        ]);
        let mut seen = Vec::new();
        let parts = split_metrics(&original, "service.name", |service| {
            seen.push(service.map(str::to_string));
            match service {
                Some("checkout") => 0,
                Some(_) => 1,
                None => 2,
            }
        })
        .unwrap();
        assert_eq!(
            seen,
            [Some("checkout"), Some("payment"), None, Some("checkout")]
                .map(|s| s.map(str::to_string))
        );
        let items: Vec<(usize, u64)> = parts.iter().map(|p| (p.target, p.items)).collect();
        assert_eq!(items, [(0, 6), (1, 3), (2, 3)], "data points per part");
        assert_eq!(
            wire::values_of(&parts[0].request(), 1).unwrap(),
            [
                metrics(Some("checkout")).as_slice(),
                &metrics(Some("checkout"))
            ]
        );
    }

    #[test]
    fn metrics_split_by_another_attribute() {
        let with = |key: &[u8], value: &str| {
            let value = message(&[(1, value.as_bytes())]);
            let attribute = message(&[(1, key), (2, &value)]);
            message(&[(1, &message(&[(1, &attribute)]))])
        };
        let original = message(&[
            (1, &with(b"service.name", "checkout")),
            (1, &with(b"k8s.pod.name", "checkout-1")),
        ]);
        let mut seen = Vec::new();
        split_metrics(&original, "k8s.pod.name", |value| {
            seen.push(value.map(str::to_string));
            0
        })
        .unwrap();
        assert_eq!(seen, [None, Some("checkout-1".to_string())]);
    }

    #[test]
    fn log_records_split_by_their_trace_id_field() {
        let record = |trace: Option<u8>, body: &str| match trace {
            Some(trace) => message(&[(5, body.as_bytes()), (9, &[trace; 16])]),
            None => message(&[(5, body.as_bytes())]),
        };
        let original = request(&[resource(
            "checkout",
            &[scope(
                "logger",
                &[
                    record(Some(1), "a"),
                    record(None, "b"),
                    record(Some(2), "c"),
                ],
            )],
        )]);
        let parts = split_logs(&original, |trace_id| match trace_id.first() {
            Some(1) => 1,
            Some(_) => 2,
            None => 0,
        })
        .unwrap();
        let shape: Vec<(usize, u64)> = parts.iter().map(|p| (p.target, p.items)).collect();
        assert_eq!(shape, [(1, 1), (0, 1), (2, 1)]);
        assert_eq!(flatten(&parts[1].request())[0].2, record(None, "b"));
    }

    #[test]
    fn signals_by_path() {
        assert_eq!(Signal::of_path(TRACE_EXPORT), Some(Signal::Traces));
        assert_eq!(Signal::of_path(METRICS_EXPORT), Some(Signal::Metrics));
        assert_eq!(Signal::of_path(LOGS_EXPORT), Some(Signal::Logs));
        assert_eq!(Signal::of_http_path("/v1/traces"), Some(Signal::Traces));
        assert_eq!(Signal::of_http_path("/v1/logs"), Some(Signal::Logs));
        assert_eq!(Signal::of_http_path("/v3/segments"), None);
        assert_eq!(
            Signal::of_path("/skywalking.v3.TraceSegmentReportService/collect"),
            None
        );
    }

    #[test]
    fn partial_success_reads_back() {
        assert_eq!(response(0, ""), Vec::<u8>::new());
        assert_eq!(rejected(&[]).unwrap(), (0, None));
        let answer = response(7, "2 of 3 collectors: queue full");
        assert_eq!(
            rejected(&answer).unwrap(),
            (7, Some("2 of 3 collectors: queue full".into()))
        );
        assert_eq!(rejected(&response(300, "")).unwrap(), (300, None));
    }
}
