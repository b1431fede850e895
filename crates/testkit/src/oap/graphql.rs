//! A stand-in for OAP's GraphQL endpoint (`POST /graphql`), answering the queries skylift's
//! adapter sends the way OAP does: `getTimeInfo`, `version`, MQE `execExpression` (or, for
//! an OAP older than 9.5, the validation error OAP gives for it), and the metrics-v2
//! `readMetricsValues` / `readLabeledMetricsValues`, `listMetrics`. Values are set by the
//! test, or come from a [`MetricStore`] filled by the OAP stand-in's meter pipeline; every
//! query is recorded, and each answer can be made to take a while, like a busy OAP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::oap::query;
use crate::oap::store::MetricStore;

/// What the stand-in serves.
#[derive(Clone, Debug)]
pub struct OapData {
    /// Whether `execExpression` exists (OAP 9.5+).
    pub mqe: bool,
    /// MQE expression → newest value (`None`: the metric exists but has no data).
    /// Expressions not listed answer OAP's "does not exist" error.
    pub expressions: HashMap<String, Option<String>>,
    /// Metric → the window's points for metrics v2: (value, isEmptyValue).
    pub series: HashMap<String, Vec<(i64, bool)>>,
    /// The OAP's time zone, as `getTimeInfo` gives it (`+0800`).
    pub timezone: String,
    pub version: String,
    /// How long each answer takes.
    pub latency: Duration,
}

impl Default for OapData {
    fn default() -> Self {
        OapData {
            mqe: true,
            expressions: HashMap::new(),
            series: HashMap::new(),
            timezone: "+0000".into(),
            version: "10.2.0-standin".into(),
            latency: Duration::ZERO,
        }
    }
}

impl OapData {
    /// The major release of `version` (`10` for `10.2.0-standin`; 0 when unreadable).
    fn major_version(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0)
    }
}

struct Shared {
    data: Mutex<OapData>,
    /// Where metrics not set in `data` are read from.
    store: Option<Arc<MetricStore>>,
    /// Every request body, with when it arrived.
    asked: Mutex<Vec<(Instant, Value)>>,
}

/// A running stand-in on a loopback port.
pub struct GraphqlOap {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// `+0800` → minutes east of UTC.
fn offset_minutes(timezone: &str) -> i32 {
    let sign = if timezone.starts_with('-') { -1 } else { 1 };
    let digits = timezone.trim_start_matches(['+', '-']);
    let hours: i32 = digits.get(..2).and_then(|h| h.parse().ok()).unwrap_or(0);
    let minutes: i32 = digits.get(2..4).and_then(|m| m.parse().ok()).unwrap_or(0);
    sign * (hours * 60 + minutes)
}

fn error(message: impl std::fmt::Display) -> Json<Value> {
    Json(json!({"data": null, "errors": [{"message": message.to_string()}]}))
}

/// The answer from the store, for what `data` does not set.
fn from_store(store: &MetricStore, query: &str, vars: &Value, data: &OapData) -> Json<Value> {
    let offset = offset_minutes(&data.timezone);
    let window = match query::window(&vars["duration"], offset) {
        Ok(window) => window,
        Err(message) => return error(message),
    };
    if query.contains("execExpression") {
        let entity = vars["entity"]["serviceName"].as_str().unwrap_or_default();
        let expression = vars["expression"].as_str().unwrap_or_default();
        return Json(json!({"data": {"result": query::exec(store, expression, entity, window)}}));
    }
    let condition = &vars["condition"];
    let metric = condition["name"].as_str().unwrap_or_default();
    let entity = condition["entity"]["serviceName"]
        .as_str()
        .unwrap_or_default();
    let labels: Option<Vec<String>> = query
        .contains("readLabeledMetricsValues")
        .then(|| serde_json::from_value(vars["labels"].clone()).unwrap_or_default());
    Json(
        json!({"data": {"result": query::read_v2(store, metric, entity, labels.as_deref(), window)}}),
    )
}

async fn graphql(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    shared
        .asked
        .lock()
        .expect("never poisoned")
        .push((Instant::now(), body.clone()));
    let data = shared.data.lock().expect("never poisoned").clone();
    if !data.latency.is_zero() {
        tokio::time::sleep(data.latency).await;
    }
    let query = body["query"].as_str().unwrap_or_default();
    let vars = &body["variables"];
    if query.contains("getTimeInfo") {
        return Json(json!({"data": {"result": {"timezone": data.timezone,
            "currentTimestamp": now_ms() as u64}}}));
    }
    if query.contains("version") && !query.contains("execExpression") {
        return Json(json!({"data": {"version": data.version}}));
    }
    if query.contains("listMetrics") {
        let empty = MetricStore::default();
        let store = shared.store.as_deref().unwrap_or(&empty);
        return match query::list_metrics(store, vars["regex"].as_str()) {
            Ok(list) => Json(json!({"data": {"result": list}})),
            Err(message) => error(message),
        };
    }
    if query.contains("execExpression") {
        if !data.mqe {
            return Json(json!({"data": null, "errors": [{"message":
                "Validation error (FieldUndefined@[result]) : Field 'execExpression' in type 'Query' is undefined"}]}));
        }
        let expression = vars["expression"].as_str().unwrap_or_default();
        // OAP 10 selects labels by their names (`service_percentile{p='75'}`): the old
        // `label` selector names no label, and selects nothing (MQE, docs/en/api/
        // metrics-query-expression.md in apache/skywalking).
        let selects_by_index = query::parse(expression)
            .is_ok_and(|parsed| parsed.selection.iter().any(|(name, _)| name == "label"));
        if data.major_version() >= 10 && selects_by_index {
            return Json(
                json!({"data": {"result": {"type": "SINGLE_VALUE", "error": null,
                "results": []}}}),
            );
        }
        if let (None, Some(store)) = (data.expressions.get(expression), &shared.store) {
            return from_store(store, query, vars, &data);
        }
        return Json(match data.expressions.get(expression) {
            Some(Some(value)) => {
                json!({"data": {"result": {"type": "SINGLE_VALUE", "error": null,
                "results": [{"metric": {"labels": []}, "values": [{"id": null, "value": value}]}]}}})
            }
            Some(None) => {
                json!({"data": {"result": {"type": "SINGLE_VALUE", "error": null,
                "results": [{"metric": {"labels": []}, "values": [{"id": null, "value": null}]}]}}})
            }
            None => json!({"data": {"result": {"type": "UNKNOWN", "results": [],
                "error": format!("Metric: [{expression}] dose not exist.")}}}),
        });
    }
    if query.contains("readMetricsValues") || query.contains("readLabeledMetricsValues") {
        let metric = vars["condition"]["name"].as_str().unwrap_or_default();
        if let (None, Some(store)) = (data.series.get(metric), &shared.store) {
            return from_store(store, query, vars, &data);
        }
        let points: Vec<Value> = data
            .series
            .get(metric)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(value, empty)| json!({"id": "x", "value": value, "isEmptyValue": empty}))
            .collect();
        return Json(json!({"data": {"result": {"label": null, "values": {"values": points}}}}));
    }
    error("Invalid Syntax : the stand-in does not serve this query")
}

impl GraphqlOap {
    /// On a free loopback port, answering from `data` only.
    pub async fn start(data: OapData) -> std::io::Result<GraphqlOap> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, data, None, axum::Router::new())
    }

    /// On `listener`, answering from `data` and then `store`, with `extra` routes beside
    /// `/graphql` and `/healthcheck`.
    pub fn serve(
        listener: tokio::net::TcpListener,
        data: OapData,
        store: Option<Arc<MetricStore>>,
        extra: axum::Router,
    ) -> std::io::Result<GraphqlOap> {
        let shared = Arc::new(Shared {
            data: Mutex::new(data),
            store,
            asked: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/graphql", post(graphql))
            .route("/healthcheck", get(|| async { "ok" }))
            .with_state(shared.clone())
            .merge(extra);
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GraphqlOap {
            address,
            shared,
            task,
        })
    }

    /// The GraphQL endpoint's URL.
    pub fn url(&self) -> String {
        format!("http://{}/graphql", self.address)
    }

    /// Changes what is served.
    pub fn update(&self, change: impl FnOnce(&mut OapData)) {
        change(&mut self.shared.data.lock().expect("never poisoned"));
    }

    /// Every request body received, in order.
    pub fn asked(&self) -> Vec<Value> {
        let asked = self.shared.asked.lock().expect("never poisoned");
        asked.iter().map(|(_, body)| body.clone()).collect()
    }

    /// When each metric query (MQE or metrics v2) arrived.
    pub fn metric_query_times(&self) -> Vec<Instant> {
        let asked = self.shared.asked.lock().expect("never poisoned");
        asked
            .iter()
            .filter(|(_, body)| {
                let query = body["query"].as_str().unwrap_or_default();
                query.contains("execExpression") || query.contains("MetricsValues")
            })
            .map(|(at, _)| *at)
            .collect()
    }

    /// How many metric queries (MQE or metrics v2) were received.
    pub fn metric_queries(&self) -> usize {
        self.metric_query_times().len()
    }
}

impl Drop for GraphqlOap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
