//! OAP's query side over the stand-in's storage: MQE (`latest(m)`, a plain metric as a
//! time series, labeled selection `m{k='a,b'}`), metrics v2 (`readMetricsValues`,
//! `readLabeledMetricsValues`), `listMetrics`, with GraphQL `Duration` strings read in the
//! OAP's time zone. Answers are shaped as OAP shapes them.

use chrono::NaiveDateTime;
use serde_json::{Value, json};

use super::store::{Labels, MetricStore, Window};

/// A parsed MQE expression of the forms the stand-in evaluates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expression {
    pub latest: bool,
    pub metric: String,
    /// Label name → accepted values.
    pub selection: Vec<(String, Vec<String>)>,
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits `a='x,y', b="z"` at the commas that are not inside quotes.
fn outside_quotes(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quote) = (Vec::new(), 0, None);
    for (i, c) in text.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(open)) if c == open => quote = None,
            (',', None) => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !text[start..].trim().is_empty() {
        parts.push(&text[start..]);
    }
    parts
}

/// Parses `latest(m)`, `m`, `m{k='v'}`, `latest(m{k='v1,v2', j="w"})`.
pub fn parse(expression: &str) -> Result<Expression, String> {
    let text = expression.trim();
    let (latest, inner) = match text.strip_prefix("latest(") {
        Some(rest) => (
            true,
            rest.strip_suffix(')')
                .ok_or_else(|| format!("Expression: [{expression}] misses a closing ')'."))?,
        ),
        None => (false, text),
    };
    let (metric, selection) = match inner.split_once('{') {
        Some((metric, rest)) => {
            let body = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("Expression: [{expression}] misses a closing '}}'."))?;
            let mut selection = Vec::new();
            for part in outside_quotes(body) {
                let (name, value) = part.split_once('=').ok_or_else(|| {
                    format!("Expression: [{expression}] has a label without '='.")
                })?;
                let value = value.trim().trim_matches(['\'', '"']);
                selection.push((
                    name.trim().to_string(),
                    value.split(',').map(|v| v.trim().to_string()).collect(),
                ));
            }
            (metric.trim(), selection)
        }
        None => (inner.trim(), Vec::new()),
    };
    if !is_name(metric) {
        return Err(format!(
            "Expression: [{expression}] is not one the stand-in evaluates (latest(m), m, m{{label='v'}})."
        ));
    }
    Ok(Expression {
        latest,
        metric: metric.to_string(),
        selection,
    })
}

/// Reads a GraphQL `Duration` (`{start, end, step}`) in a zone `offset_minutes` east of UTC.
pub fn window(duration: &Value, offset_minutes: i32) -> Result<Window, String> {
    let step = duration["step"].as_str().unwrap_or("MINUTE");
    let (format, step_ms, pad) = match step {
        "MINUTE" => ("%Y-%m-%d %H%M", 60_000, ""),
        "HOUR" => ("%Y-%m-%d %H%M", 3_600_000, "00"),
        "DAY" => ("%Y-%m-%d %H%M", 86_400_000, " 0000"),
        other => return Err(format!("the stand-in keeps no {other} data")),
    };
    let read = |field: &str| -> Result<i64, String> {
        let text = duration[field]
            .as_str()
            .ok_or_else(|| format!("duration.{field} is missing"))?;
        let local = NaiveDateTime::parse_from_str(&format!("{text}{pad}"), format)
            .map_err(|e| format!("duration.{field} {text:?} is not a {step} time: {e}"))?;
        Ok(local.and_utc().timestamp_millis() - i64::from(offset_minutes) * 60_000)
    };
    Ok(Window {
        start_ms: read("start")?,
        end_ms: read("end")?,
        step_ms,
        offset_ms: i64::from(offset_minutes) * 60_000,
    })
}

fn selected(labels: &Labels, selection: &[(String, Vec<String>)]) -> bool {
    selection.iter().all(|(name, values)| {
        labels
            .iter()
            .any(|(key, value)| key == name && values.contains(value))
    })
}

fn label_list(labels: &Labels) -> Value {
    Value::Array(
        labels
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect(),
    )
}

fn unknown(message: String) -> Value {
    json!({"type": "UNKNOWN", "results": [], "error": message})
}

/// The `execExpression` result for `expression` on `entity`'s data in `window`.
pub fn exec(store: &MetricStore, expression: &str, entity: &str, window: Window) -> Value {
    let parsed = match parse(expression) {
        Ok(parsed) => parsed,
        Err(message) => return unknown(message),
    };
    let Some(points) = store.points(&parsed.metric, entity, window) else {
        return unknown(format!("Metric: [{}] dose not exist.", parsed.metric));
    };
    let chosen = points
        .into_iter()
        .filter(|(labels, _)| selected(labels, &parsed.selection));
    let results: Vec<Value> = if parsed.latest {
        chosen
            .map(|(labels, values)| {
                let newest = values.iter().rev().find_map(|(_, v)| *v);
                json!({"metric": {"labels": label_list(&labels)},
                       "values": [{"id": null, "value": newest.map(|v| v.to_string())}]})
            })
            .collect()
    } else {
        chosen
            .map(|(labels, values)| {
                let values: Vec<Value> = values
                    .iter()
                    .map(|(at, v)| json!({"id": at.to_string(), "value": v.map(|v| v.to_string())}))
                    .collect();
                json!({"metric": {"labels": label_list(&labels)}, "values": values})
            })
            .collect()
    };
    let kind = if parsed.latest {
        "SINGLE_VALUE"
    } else {
        "TIME_SERIES_VALUES"
    };
    json!({"type": kind, "error": null, "results": results})
}

fn v2_values(values: &[(i64, Option<i64>)]) -> Value {
    let points: Vec<Value> = values
        .iter()
        .map(|(at, v)| json!({"id": at.to_string(), "value": v.unwrap_or(0), "isEmptyValue": v.is_none()}))
        .collect();
    json!({"values": points})
}

/// `readMetricsValues` (labels `None`) or `readLabeledMetricsValues`.
pub fn read_v2(
    store: &MetricStore,
    metric: &str,
    entity: &str,
    labels: Option<&[String]>,
    window: Window,
) -> Value {
    let points = store.points(metric, entity, window).unwrap_or_default();
    match labels {
        None => {
            let values = points.get(&Labels::new()).map_or(&[][..], Vec::as_slice);
            json!({"label": null, "values": v2_values(values)})
        }
        Some(wanted) => Value::Array(
            wanted
                .iter()
                .filter_map(|label| {
                    let (_, values) = points
                        .iter()
                        .find(|(set, _)| set.iter().any(|(_, value)| value == label))?;
                    Some(json!({"label": label, "values": v2_values(values)}))
                })
                .collect(),
        ),
    }
}

/// `listMetrics(regex)`: the metrics kept, as OAP lists them.
pub fn list_metrics(store: &MetricStore, pattern: Option<&str>) -> Result<Value, String> {
    let regex = pattern
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| format!("regex: {e}"))?;
    Ok(Value::Array(
        store
            .catalogue()
            .into_iter()
            .filter(|(name, _)| regex.as_ref().is_none_or(|r| r.is_match(name)))
            .map(|(name, labeled)| {
                let kind = if labeled {
                    "LABELED_VALUE"
                } else {
                    "REGULAR_VALUE"
                };
                // Everything the stand-in keeps is service-scoped.
                json!({"name": name, "type": kind, "catalog": "SERVICE"})
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_040_000;

    #[test]
    fn expressions_parse_with_and_without_latest_and_labels() {
        assert_eq!(
            parse("latest(satellite_service_grpc_connect_count)").unwrap(),
            Expression {
                latest: true,
                metric: "satellite_service_grpc_connect_count".into(),
                selection: vec![]
            }
        );
        assert_eq!(
            parse("m{status='all,abandoned', pipe=\"skylift\"}")
                .unwrap()
                .selection,
            vec![
                (
                    "status".to_string(),
                    vec!["all".to_string(), "abandoned".to_string()]
                ),
                ("pipe".to_string(), vec!["skylift".to_string()])
            ]
        );
        assert!(parse("avg(m) + 1").is_err());
    }

    #[test]
    fn windows_are_read_in_the_oap_zone() {
        let w = window(
            &json!({"start": "2023-11-14 2214", "end": "2023-11-14 2216", "step": "MINUTE"}),
            0,
        )
        .unwrap();
        assert_eq!(w.start_ms, T0);
        assert_eq!(w.end_ms, T0 + 120_000);
        let east = window(
            &json!({"start": "2023-11-15 0614", "end": "2023-11-15 0614", "step": "MINUTE"}),
            480,
        )
        .unwrap();
        assert_eq!(east.start_ms, T0);
    }

    #[test]
    fn latest_series_and_selection_answer_as_oap() {
        let store = MetricStore::default();
        let w = Window {
            start_ms: T0,
            end_ms: T0 + 120_000,
            step_ms: 60_000,
            offset_ms: 0,
        };
        store.observe("c", "svc", vec![], T0, 4);
        store.observe("c", "svc", vec![], T0 + 60_000, 9);
        let latest = exec(&store, "latest(c)", "svc", w);
        assert_eq!(latest["type"], "SINGLE_VALUE");
        assert_eq!(latest["results"][0]["values"][0]["value"], "9");
        let series = exec(&store, "c", "svc", w);
        assert_eq!(series["type"], "TIME_SERIES_VALUES");
        assert_eq!(series["results"][0]["values"][2]["value"], Value::Null);
        assert_eq!(series["results"][0]["values"][0]["id"], T0.to_string());
        let missing = exec(&store, "latest(nope)", "svc", w);
        assert_eq!(missing["type"], "UNKNOWN");

        store.observe("l", "svc", vec![("status".into(), "all".into())], T0, 7);
        store.observe(
            "l",
            "svc",
            vec![("status".into(), "abandoned".into())],
            T0,
            1,
        );
        let chosen = exec(&store, "latest(l{status='all'})", "svc", w);
        assert_eq!(chosen["results"].as_array().unwrap().len(), 1);
        assert_eq!(chosen["results"][0]["metric"]["labels"][0]["value"], "all");
        let v2 = read_v2(&store, "c", "svc", None, w);
        assert_eq!(v2["values"]["values"][1]["value"], 9);
        assert_eq!(v2["values"]["values"][2]["isEmptyValue"], true);
        let labeled = read_v2(&store, "l", "svc", Some(&["abandoned".into()]), w);
        assert_eq!(labeled[0]["values"]["values"][0]["value"], 1);
        let listed = list_metrics(&store, Some("^l$")).unwrap();
        assert_eq!(
            listed,
            json!([{"name": "l", "type": "LABELED_VALUE", "catalog": "SERVICE"}])
        );
    }
}
