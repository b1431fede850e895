//! OAP's GraphQL, shaped and read without I/O: the request bodies for MQE
//! (`execExpression`, OAP 9.5+), for the metrics-v2 fallback (`readMetricsValues` /
//! `readLabeledMetricsValues`) and for `getTimeInfo`, and what their answers mean.
//! Durations are written in the OAP's time zone, as OAP reads them.

use serde_json::{Value, json};

use crate::entity::Entity;

/// A query window at minute precision, as OAP's `Duration` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: String,
    pub end: String,
}

/// Minutes a read looks back: the current minute and the two before (SWCK's window).
pub const WINDOW_MINUTES: i64 = 3;

/// `getTimeInfo`'s `timezone` (Java's `Z` pattern, e.g. `+0800`, `-0530`) in minutes east
/// of UTC.
pub fn timezone_offset(text: &str) -> Option<i32> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => (1, text),
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    (hours <= 18 && minutes < 60).then_some(sign * (hours * 60 + minutes))
}

/// The last `minutes` minutes up to `now_ms` (Unix milliseconds), in the zone `offset`
/// minutes east of UTC, as OAP's MINUTE-step strings (`yyyy-MM-dd HHmm`).
pub fn window(now_ms: i64, offset_minutes: i32, minutes: i64) -> Window {
    let local = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms + i64::from(offset_minutes) * 60_000)
            .unwrap_or_default()
            .naive_utc()
            .format("%Y-%m-%d %H%M")
            .to_string()
    };
    Window {
        start: local(now_ms - (minutes - 1) * 60_000),
        end: local(now_ms),
    }
}

fn duration(window: &Window) -> Value {
    json!({"start": window.start, "end": window.end, "step": "MINUTE"})
}

/// Virtual layers (databases, message queues, gateways seen from callers) hold conjectured
/// services, which OAP files as not normal.
fn normal(layer: Option<&str>) -> bool {
    !layer.is_some_and(|layer| layer.starts_with("VIRTUAL_"))
}

/// The entity as OAP's `Entity` input.
pub fn entity_input(entity: &Entity) -> Value {
    let mut input = json!({
        "serviceName": entity.service,
        "normal": normal(entity.layer.as_deref()),
    });
    let fields = [
        ("serviceInstanceName", &entity.instance),
        ("endpointName", &entity.endpoint),
        ("destServiceName", &entity.dest_service),
        ("destServiceInstanceName", &entity.dest_instance),
        ("destEndpointName", &entity.dest_endpoint),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            input[field] = json!(value);
        }
    }
    if entity.dest_service.is_some() {
        input["destNormal"] = json!(true);
    }
    input
}

/// An OAP's release, as its `version` query gives it (`10.2.0`, `9.7.0-a1b2c3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OapVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for OapVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The `version` query.
pub fn version_request() -> Value {
    json!({"query": "query { version }"})
}

/// The version in a `version` answer; `None` when OAP could not say.
pub fn version_of(answer: &Value) -> Option<OapVersion> {
    let text = answer.pointer("/data/version")?.as_str()?;
    let mut numbers = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(str::parse::<u32>);
    Some(OapVersion {
        major: numbers.next()?.ok()?,
        minor: numbers.next().and_then(Result::ok).unwrap_or(0),
    })
}

/// The percentiles OAP computes, by the index SWCK's `label` and OAP 9's labeled metrics
/// use for them (`0` is p50, ... `4` is p99); OAP 10 names them by value, label `p`.
const PERCENTILES: [&str; 5] = ["50", "75", "90", "95", "99"];

/// The MQE label selection for the `label` of a selector, in the form of OAP `version`:
/// before 10, `label='<value>'` (percentile indexes, as metrics v2 took them); from 10 on,
/// labels are selected by name (docs/en/api/metrics-query-expression.md in
/// apache/skywalking): a percentile index becomes `p='<percentile>'` and `name=value`
/// becomes `name='value'`. `Err` says what to write instead.
pub fn label_selection(label: &str, version: Option<OapVersion>) -> Result<String, String> {
    // Label values are user input: quotes are not allowed in them.
    let label = label.replace('\'', "");
    if version.is_none_or(|v| v.major < 10) {
        return Ok(format!("label='{label}'"));
    }
    if let Some(percentile) = label
        .parse::<usize>()
        .ok()
        .and_then(|index| PERCENTILES.get(index))
    {
        return Ok(format!("p='{percentile}'"));
    }
    match label.split_once('=') {
        Some((name, value))
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok(format!("{name}='{value}'"))
        }
        _ => Err(format!(
            "label {label:?}: OAP {} selects a metric's labels by name: give a percentile index \
             (0 to 4 for p50, p75, p90, p95, p99) or <label name>=<value> (SWCK-escaped in the \
             selector)",
            version.map(|v| v.to_string()).unwrap_or_default()
        )),
    }
}

/// The MQE expression reading an OAP metric's newest value (of one label, if given, in the
/// form of OAP `version`).
pub fn latest(
    metric: &str,
    label: Option<&str>,
    version: Option<OapVersion>,
) -> Result<String, String> {
    Ok(match label {
        Some(label) => format!("latest({metric}{{{}}})", label_selection(label, version)?),
        None => format!("latest({metric})"),
    })
}

/// `execExpression` for `expression` over `window`.
pub fn mqe_request(expression: &str, entity: &Entity, window: &Window) -> Value {
    json!({
        "query": "query ($expression: String!, $entity: Entity!, $duration: Duration!) { result: execExpression(expression: $expression, entity: $entity, duration: $duration) { type error results { metric { labels { key value } } values { id value } } } }",
        "variables": {
            "expression": expression,
            "entity": entity_input(entity),
            "duration": duration(window),
        },
    })
}

/// The metrics-v2 read of `metric` (labeled when the entity names a label).
pub fn v2_request(metric: &str, entity: &Entity, window: &Window) -> Value {
    let condition = json!({"name": metric, "entity": entity_input(entity)});
    match &entity.label {
        Some(label) => json!({
            "query": "query ($condition: MetricsCondition!, $labels: [String!]!, $duration: Duration!) { result: readLabeledMetricsValues(condition: $condition, labels: $labels, duration: $duration) { label values { values { id value isEmptyValue } } } }",
            "variables": {"condition": condition, "labels": [label], "duration": duration(window)},
        }),
        None => json!({
            "query": "query ($condition: MetricsCondition!, $duration: Duration!) { result: readMetricsValues(condition: $condition, duration: $duration) { label values { values { id value isEmptyValue } } } }",
            "variables": {"condition": condition, "duration": duration(window)},
        }),
    }
}

/// `getTimeInfo`: the OAP's time zone and clock.
pub fn time_info_request() -> Value {
    json!({"query": "query { result: getTimeInfo { timezone currentTimestamp } }"})
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The value, as OAP wrote it (a decimal string).
    Value(String),
    /// Nothing recorded in the window; the reason says what was looked at.
    NoData(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// This OAP does not know the query (older than MQE): fall back.
    #[error("OAP does not serve {0}")]
    Unsupported(&'static str),
    /// OAP answered with errors (an unknown metric, a bad expression, ...).
    #[error("OAP refused the query: {0}")]
    Refused(String),
    #[error("OAP's answer is not what the query asks for: {0}")]
    Malformed(String),
}

fn graphql_errors(answer: &Value) -> Option<Vec<String>> {
    let errors = answer.get("errors")?.as_array()?;
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string()
            })
            .collect()
    })
}

fn checked<'a>(answer: &'a Value, field: &'static str) -> Result<&'a Value, QueryError> {
    if let Some(errors) = graphql_errors(answer) {
        // A schema without the field: graphql-java says "Field 'x' in type 'Query' is
        // undefined" (FieldUndefined).
        if errors
            .iter()
            .any(|e| e.contains(field) && (e.contains("undefined") || e.contains("FieldUndefined")))
        {
            return Err(QueryError::Unsupported(field));
        }
        return Err(QueryError::Refused(errors.join("; ")));
    }
    answer
        .pointer("/data/result")
        .filter(|v| !v.is_null())
        .ok_or_else(|| QueryError::Malformed("no data.result".into()))
}

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An `execExpression` answer: the newest non-null value of the first result.
pub fn mqe_reading(answer: &Value, expression: &str) -> Result<Reading, QueryError> {
    let result = checked(answer, "execExpression")?;
    if let Some(error) = result.get("error").and_then(Value::as_str)
        && !error.is_empty()
    {
        return Err(QueryError::Refused(format!("{expression}: {error}")));
    }
    let kind = result.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(kind, "SINGLE_VALUE" | "TIME_SERIES_VALUES") {
        return Err(QueryError::Refused(format!(
            "{expression} gives {kind:?}, not a single value or a time series"
        )));
    }
    let values = result
        .pointer("/results/0/values")
        .and_then(Value::as_array);
    let newest = values.and_then(|values| {
        values
            .iter()
            .rev()
            .find_map(|point| point.get("value").and_then(value_text))
    });
    Ok(match newest {
        Some(value) => Reading::Value(value),
        None => Reading::NoData(format!("{expression} has no value in the window")),
    })
}

/// A metrics-v2 answer: the last complete minute (the second-to-last point), as SWCK
/// reads it.
pub fn v2_reading(answer: &Value, metric: &str) -> Result<Reading, QueryError> {
    let result = checked(answer, "readMetricsValues")?;
    // readLabeledMetricsValues answers a list (one per label), readMetricsValues one.
    let series = match result {
        Value::Array(list) => list.first(),
        other => Some(other),
    };
    let points = series
        .and_then(|s| s.pointer("/values/values"))
        .and_then(Value::as_array)
        .ok_or_else(|| QueryError::Malformed("no values.values".into()))?;
    if points.len() < 2 {
        return Ok(Reading::NoData(format!(
            "{metric}: fewer than two minutes in the window"
        )));
    }
    let point = &points[points.len() - 2];
    let empty = point
        .get("isEmptyValue")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match point.get("value").and_then(value_text) {
        Some(value) if !empty => Ok(Reading::Value(value)),
        _ => Ok(Reading::NoData(format!(
            "{metric}: nothing recorded in the last complete minute"
        ))),
    }
}

/// A `getTimeInfo` answer: (OAP's clock in Unix ms, its zone in minutes east of UTC).
pub fn time_info(answer: &Value) -> Result<(i64, i32), QueryError> {
    let result = checked(answer, "getTimeInfo")?;
    let now = result
        .get("currentTimestamp")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
        .ok_or_else(|| QueryError::Malformed("no currentTimestamp".into()))?;
    let offset = result
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(timezone_offset)
        .ok_or_else(|| QueryError::Malformed("no readable timezone".into()))?;
    Ok((now, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn satellite() -> Entity {
        Entity {
            service: "satellite::satellite-service".into(),
            ..Entity::default()
        }
    }

    #[test]
    fn windows_are_written_in_the_oap_time_zone() {
        // 2026-10-01T12:00:30Z.
        let now = 1_790_856_030_000;
        assert_eq!(timezone_offset("+0800"), Some(480));
        assert_eq!(timezone_offset("-0530"), Some(-330));
        assert_eq!(timezone_offset("0000"), Some(0));
        assert_eq!(timezone_offset("UTC"), None);
        assert_eq!(
            window(now, 480, 3),
            Window {
                start: "2026-10-01 1958".into(),
                end: "2026-10-01 2000".into()
            }
        );
        assert_eq!(window(now, -330, 1).end, "2026-10-01 0630");
    }

    #[test]
    fn a_label_is_written_in_the_form_of_the_oaps_version() {
        let v = |major, minor| Some(OapVersion { major, minor });
        assert_eq!(
            version_of(&json!({"data": {"version": "10.2.0"}})),
            v(10, 2)
        );
        assert_eq!(
            version_of(&json!({"data": {"version": "9.7.0-a1b2c3"}})),
            v(9, 7)
        );
        assert_eq!(version_of(&json!({"data": {"version": "unknown"}})), None);
        assert_eq!(version_of(&json!({"errors": []})), None);
        // OAP 9 (and an OAP that cannot say): percentile indexes as metrics v2 took them.
        for version in [v(9, 7), None] {
            assert_eq!(
                latest("service_percentile", Some("1"), version).unwrap(),
                "latest(service_percentile{label='1'})"
            );
        }
        // OAP 10: by label name; index 1 is p75.
        assert_eq!(
            latest("service_percentile", Some("1"), v(10, 2)).unwrap(),
            "latest(service_percentile{p='75'})"
        );
        assert_eq!(
            latest(
                "k8s_cluster_deployment_status",
                Some("status=true"),
                v(10, 0)
            )
            .unwrap(),
            "latest(k8s_cluster_deployment_status{status='true'})"
        );
        let refused = latest("service_percentile", Some("7"), v(10, 2)).unwrap_err();
        assert!(
            refused.contains("OAP 10.2") && refused.contains("0 to 4"),
            "{refused}"
        );
        assert!(latest("m", Some("=x"), v(10, 2)).is_err());
    }

    #[test]
    fn mqe_requests_carry_the_expression_entity_and_window() {
        let w = window(1_790_856_030_000, 0, 3);
        let body = mqe_request(
            &latest("satellite_service_grpc_connect_count", None, None).unwrap(),
            &satellite(),
            &w,
        );
        let vars = &body["variables"];
        assert_eq!(
            vars["expression"],
            "latest(satellite_service_grpc_connect_count)"
        );
        assert_eq!(
            vars["entity"],
            json!({"serviceName": "satellite::satellite-service", "normal": true})
        );
        assert_eq!(vars["duration"]["step"], "MINUTE");
        assert!(body["query"].as_str().unwrap().contains("execExpression"));
        assert_eq!(
            latest("service_percentile", Some("1'"), None).unwrap(),
            "latest(service_percentile{label='1'})"
        );
        let relation = Entity {
            dest_service: Some("db".into()),
            layer: Some("VIRTUAL_DATABASE".into()),
            ..satellite()
        };
        let input = entity_input(&relation);
        assert_eq!(input["normal"], false);
        assert_eq!(input["destServiceName"], "db");
        assert_eq!(input["destNormal"], true);
    }

    #[test]
    fn mqe_answers_give_the_newest_value_or_say_why_not() {
        let single = json!({"data": {"result": {"type": "SINGLE_VALUE", "error": null,
            "results": [{"metric": {"labels": []}, "values": [{"id": null, "value": "11"}]}]}}});
        assert_eq!(mqe_reading(&single, "e"), Ok(Reading::Value("11".into())));
        let series = json!({"data": {"result": {"type": "TIME_SERIES_VALUES", "error": null,
            "results": [{"values": [{"id": "1", "value": "4.5"}, {"id": "2", "value": null}]}]}}});
        assert_eq!(mqe_reading(&series, "e"), Ok(Reading::Value("4.5".into())));
        let empty = json!({"data": {"result": {"type": "SINGLE_VALUE", "error": null,
            "results": [{"values": [{"id": null, "value": null}]}]}}});
        assert!(matches!(mqe_reading(&empty, "e"), Ok(Reading::NoData(_))));
        let unknown = json!({"data": {"result": {"type": "UNKNOWN",
            "error": "Metric: [nope] dose not exist.", "results": []}}});
        assert!(
            matches!(mqe_reading(&unknown, "e"), Err(QueryError::Refused(m)) if m.contains("nope"))
        );
        let old_oap = json!({"errors": [{"message": "Validation error (FieldUndefined@[result]) : Field 'execExpression' in type 'Query' is undefined"}], "data": null});
        assert_eq!(
            mqe_reading(&old_oap, "e"),
            Err(QueryError::Unsupported("execExpression"))
        );
    }

    #[test]
    fn v2_answers_give_the_last_complete_minute_as_swck_does() {
        let answer = |points: Value| json!({"data": {"result": {"label": null, "values": {"values": points}}}});
        let three = answer(json!([
            {"id": "a", "value": 10, "isEmptyValue": false},
            {"id": "b", "value": 12, "isEmptyValue": false},
            {"id": "c", "value": 3, "isEmptyValue": false}
        ]));
        assert_eq!(v2_reading(&three, "m"), Ok(Reading::Value("12".into())));
        let gap = answer(json!([
            {"id": "b", "value": 0, "isEmptyValue": true},
            {"id": "c", "value": 3, "isEmptyValue": false}
        ]));
        assert!(matches!(v2_reading(&gap, "m"), Ok(Reading::NoData(_))));
        let short = answer(json!([{"id": "c", "value": 3, "isEmptyValue": false}]));
        assert!(matches!(v2_reading(&short, "m"), Ok(Reading::NoData(_))));
        let labeled = json!({"data": {"result": [{"label": "1", "values": {"values": [
            {"id": "b", "value": 250, "isEmptyValue": false},
            {"id": "c", "value": 0, "isEmptyValue": true}]}}]}});
        assert_eq!(v2_reading(&labeled, "m"), Ok(Reading::Value("250".into())));
        let body = v2_request(
            "service_percentile",
            &Entity {
                label: Some("1".into()),
                ..satellite()
            },
            &window(0, 0, 3),
        );
        assert_eq!(body["variables"]["labels"], json!(["1"]));
    }

    #[test]
    fn time_info_is_read_from_either_number_form() {
        let answer = json!({"data": {"result": {"timezone": "+0800", "currentTimestamp": 1_790_856_030_000_i64}}});
        assert_eq!(time_info(&answer), Ok((1_790_856_030_000, 480)));
        let as_text = json!({"data": {"result": {"timezone": "-0100", "currentTimestamp": "5"}}});
        assert_eq!(time_info(&as_text), Ok((5, -60)));
    }
}
