//! The API the aggregator and the HPA call: discovery, health, and metric reads
//! (`/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=...`).
//! Transport security and the caller's authentication and authorization wrap this router
//! (see the binary); here a read goes from the request to OAP and back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::FutureExt;
use serde_json::Value;

use crate::answer::{self, MetricValue};
use crate::cache::Cache;
use crate::entity::{self, Entity};
use crate::metric::{self, Metric};
use crate::metrics::Metrics;
use crate::oap::Reading;
use crate::oaps::{self, Directory, OapRef, RouteError};
use crate::quantity;
use crate::reader::{ReadError, Target};
use skylift_api::label_selector as selector;

/// What reads share.
pub struct Adapter {
    /// `--metric-prefix`.
    pub prefix: String,
    /// `--expressions`: name → MQE expression.
    pub expressions: HashMap<String, String>,
    /// The OAPs reads go to.
    pub oaps: Arc<Directory>,
    pub cache: Cache<(OapRef, Target, Entity), Result<Reading, ReadError>>,
    pub metrics: Arc<Metrics>,
}

impl Adapter {
    pub fn new(
        prefix: String,
        expressions: HashMap<String, String>,
        oaps: Arc<Directory>,
        refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Adapter {
        Adapter {
            prefix,
            expressions,
            oaps,
            cache: Cache::with_refresh_ahead(refresh),
            metrics,
        }
    }
}

/// An answer with a JSON body.
fn json(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

pub fn failure(status: StatusCode, message: &str) -> Response {
    json(status, answer::status(status.as_u16(), message))
}

pub fn router(adapter: Arc<Adapter>) -> Router {
    Router::new()
        .route("/apis", get(|| async { Json(answer::api_group_list()) }))
        .route(
            "/apis/external.metrics.k8s.io",
            get(|| async { Json(answer::api_group()) }),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(|| async { Json(answer::api_resource_list()) }),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(read),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(adapter): State<Arc<Adapter>>| async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    adapter.metrics.render(),
                )
            }),
        )
        // The aggregator tolerates a missing OpenAPI document (404 on /openapi/v2 and v3).
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "not found") })
        .with_state(adapter)
}

async fn read(
    State(adapter): State<Arc<Adapter>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let selector = query.get("labelSelector").map_or("", String::as_str);
    read_metric(&adapter, &namespace, &name, selector).await
}

/// A read with no OAP to go to: 503 while an OAPServer's address is being written, 404
/// for an OAP the adapter does not know, 400 for a selector to fix.
fn route_failure(name: &str, selector: &str, err: &RouteError) -> Response {
    let status = match err {
        _ if err.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        RouteError::UnknownStatic { .. } | RouteError::UnknownServer(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    failure(
        status,
        &format!("metric {name:?}, selector {selector:?}: {err}"),
    )
}

/// Reads one external metric for the HPA.
pub async fn read_metric(
    adapter: &Adapter,
    namespace: &str,
    name: &str,
    selector: &str,
) -> Response {
    let target = match metric::parse(&adapter.prefix, name) {
        Ok(Metric::Oap(metric)) => Target::Metric(metric),
        Ok(Metric::Expression(expression_name)) => {
            match adapter.expressions.get(&expression_name) {
                Some(expression) => Target::Expression {
                    name: expression_name,
                    expression: expression.clone(),
                },
                None => {
                    return failure(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "metric {name:?}: no expression named {expression_name:?} in --expressions"
                        ),
                    );
                }
            }
        }
        Err(err) => return failure(StatusCode::NOT_FOUND, &err.to_string()),
    };
    let requirements = match selector::parse(selector) {
        Ok(requirements) => requirements,
        Err(err) => return failure(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let (explicit, requirements) = match oaps::split(&requirements) {
        Ok(split) => split,
        Err(err) => return route_failure(name, selector, &err),
    };
    let (oap, reader) = match adapter.oaps.resolve(explicit, namespace) {
        Ok(resolved) => resolved,
        Err(err) => return route_failure(name, selector, &err),
    };
    let entity = match entity::from_requirements(&requirements) {
        Ok(entity) => entity,
        Err(err) => {
            return failure(
                StatusCode::BAD_REQUEST,
                &format!("metric {name:?}, selector {selector:?}: {err}"),
            );
        }
    };
    let metrics = adapter.metrics.clone();
    let key = (oap, target, entity.clone());
    let query = key.clone();
    let (reading, lookup) = adapter
        .cache
        .lookup(key, move || {
            async move {
                let started = std::time::Instant::now();
                let reading = reader.read(&query.1, &query.2).await;
                let outcome = match &reading {
                    Ok(Reading::Value(_)) => "value",
                    Ok(Reading::NoData(_)) => "no_data",
                    Err(ReadError::Unavailable { .. }) => "unavailable",
                    Err(_) => "refused",
                };
                metrics.oap_query(outcome, started.elapsed());
                reading
            }
            .boxed()
        })
        .await;
    adapter.metrics.cache_lookup(lookup.as_str());
    match reading {
        Ok(Reading::Value(value)) => match quantity::quantity(&value) {
            Ok(value) => json(
                StatusCode::OK,
                answer::value_list(&[MetricValue {
                    metric_name: name.to_string(),
                    labels: entity.labels(),
                    timestamp: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    window_seconds: 60,
                    value,
                }]),
            ),
            Err(err) => failure(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("OAP answered {name:?} with a value that is not a number: {err}"),
            ),
        },
        Ok(Reading::NoData(reason)) => {
            tracing::info!(%namespace, metric = %name, service = %entity.service, %reason, "no value to answer");
            json(StatusCode::OK, answer::value_list(&[]))
        }
        Err(err @ ReadError::Unavailable { .. }) => {
            failure(StatusCode::SERVICE_UNAVAILABLE, &err.to_string())
        }
        Err(err) => failure(
            StatusCode::NOT_FOUND,
            &format!("metric {name:?} for service {:?}: {err}", entity.service),
        ),
    }
}
