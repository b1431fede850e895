//! The API the aggregator and the HPA call: discovery, health, and metric reads
//! (`/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=...`).
//! Transport security and the caller's authentication and authorization wrap this router
//! (see the binary); here a read goes from the request to OAP and back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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
use crate::federation::{self, Federation, Part, Unreachable};
use crate::metric::{self, Metric, NamedExpression};
use crate::metrics::Metrics;
use crate::oap::Reading;
use crate::oaps::{self, Directory, OapRef, RouteError};
use crate::quantity;
use crate::reader::{OapReader, ReadError, Target};
use skylift_api::label_selector as selector;

/// A federated value's OAP, expression name and entity.
type KeptKey = (OapRef, String, Entity);

/// What reads share.
pub struct Adapter {
    /// `--metric-prefix`.
    pub prefix: String,
    /// `--expressions`: name → MQE expression (federated or not).
    pub expressions: HashMap<String, NamedExpression>,
    /// The OAPs reads go to.
    pub oaps: Arc<Directory>,
    pub cache: Cache<(OapRef, Target, Entity), Result<Reading, ReadError>>,
    pub metrics: Arc<Metrics>,
    /// The last value each OAP gave each federated expression for each entity, and when:
    /// with `unreachable: partial`, it stands in for an unreachable OAP within `staleness`.
    last_good: Mutex<HashMap<KeptKey, (Part, std::time::Instant)>>,
}

impl Adapter {
    pub fn new(
        prefix: String,
        expressions: HashMap<String, NamedExpression>,
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
            last_good: Mutex::default(),
        }
    }

    /// Keeps what `key`'s OAP gave, forgetting values past any use when many are kept.
    fn kept(&self, key: KeptKey, part: Part, at: std::time::Instant) {
        let mut kept = self.last_good.lock().expect("never poisoned");
        if kept.len() >= KEPT_MOST {
            kept.retain(|_, (_, when)| at.duration_since(*when) < KEPT_FOR);
        }
        kept.insert(key, (part, at));
    }
}

/// How many federated values are kept before old ones are forgotten, and how old a kept
/// value may be before it is forgotten then.
const KEPT_MOST: usize = 10_000;
const KEPT_FOR: Duration = Duration::from_secs(3600);

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
    let (target, federation) = match metric::parse(&adapter.prefix, name) {
        Ok(Metric::Oap(metric)) => (Target::Metric(metric), None),
        Ok(Metric::Expression(expression_name)) => {
            match adapter.expressions.get(&expression_name) {
                Some(named) => (
                    Target::Expression {
                        name: expression_name,
                        expression: named.expression.clone(),
                    },
                    named.federation.as_ref(),
                ),
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
    let entity = match entity::from_requirements(&requirements) {
        Ok(entity) => entity,
        Err(err) => {
            return failure(
                StatusCode::BAD_REQUEST,
                &format!("metric {name:?}, selector {selector:?}: {err}"),
            );
        }
    };
    if let Some(federation) = federation {
        if explicit.is_some() {
            return failure(
                StatusCode::BAD_REQUEST,
                &format!(
                    "metric {name:?} is federated: it is read from the OAPs its expression names; leave oap out of the selector"
                ),
            );
        }
        let reading = read_federated(adapter, namespace, name, &target, federation, &entity).await;
        return answer_with(name, namespace, &entity, reading);
    }
    let (oap, reader) = match adapter.oaps.resolve(explicit, namespace) {
        Ok(resolved) => resolved,
        Err(err) => return route_failure(name, selector, &err),
    };
    let reading = lookup(adapter, oap, reader, target, entity.clone()).await;
    answer_with(name, namespace, &entity, reading)
}

/// A read through the cache: one OAP query per (OAP, target, entity) per interval.
async fn lookup(
    adapter: &Adapter,
    oap: OapRef,
    reader: Arc<OapReader>,
    target: Target,
    entity: Entity,
) -> Result<Reading, ReadError> {
    let metrics = adapter.metrics.clone();
    let key = (oap, target, entity);
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
                metrics.oap_query(&query.0.to_string(), outcome, started.elapsed());
                reading
            }
            .boxed()
        })
        .await;
    adapter.metrics.cache_lookup(lookup.as_str());
    reading
}

/// Reads a federated expression at each of its OAPs (and its weight, averaging) and
/// combines the values ([`crate::federation`]).
async fn read_federated(
    adapter: &Adapter,
    namespace: &str,
    name: &str,
    target: &Target,
    federation: &Federation,
    entity: &Entity,
) -> Result<Reading, ReadError> {
    let weight_target = federation.weight.as_ref().map(|weight| Target::Expression {
        name: format!("{name}#weight"),
        expression: weight.clone(),
    });
    let reads = federation.oaps.iter().map(|oap| {
        let weight_target = weight_target.clone();
        async move {
            let reader = match adapter.oaps.resolve(Some(oap.clone()), namespace) {
                Ok((_, reader)) => reader,
                Err(err) if err.is_transient() => {
                    return Err(ReadError::Unavailable {
                        url: oap.to_string(),
                        reason: err.to_string(),
                    });
                }
                Err(err) => return Err(ReadError::Refused(err.to_string())),
            };
            let value = lookup(
                adapter,
                oap.clone(),
                reader.clone(),
                target.clone(),
                entity.clone(),
            );
            let weight = async {
                match weight_target {
                    Some(weight) => {
                        Some(lookup(adapter, oap.clone(), reader, weight, entity.clone()).await)
                    }
                    None => None,
                }
            };
            let (value, weight) = futures::join!(value, weight);
            Ok((value?, weight.transpose()?))
        }
    });
    let results = futures::future::join_all(reads).await;
    let mut parts = Vec::new();
    let mut unreachable = Vec::new();
    let now = std::time::Instant::now();
    for (oap, result) in federation.oaps.iter().zip(results) {
        let key = (oap.clone(), name.to_string(), entity.clone());
        match result {
            Ok((Reading::Value(value), weight)) => {
                let weight = match weight {
                    Some(Reading::Value(weight)) => number(&weight, oap)?,
                    // No weight: this OAP's value cannot be weighed.
                    Some(Reading::NoData(_)) => continue,
                    None => 1.0,
                };
                let part = Part {
                    value: number(&value, oap)?,
                    weight,
                };
                // Only `partial` ever answers from a kept value.
                if federation.unreachable == Unreachable::Partial {
                    adapter.kept(key, part, now);
                }
                parts.push(part);
            }
            Ok((Reading::NoData(_), _)) => {}
            Err(ReadError::Unavailable { reason, .. }) => {
                let kept = adapter
                    .last_good
                    .lock()
                    .expect("never poisoned")
                    .get(&key)
                    .filter(|(_, at)| now.duration_since(*at) <= federation.staleness)
                    .map(|(part, _)| *part);
                match (federation.unreachable, kept) {
                    (Unreachable::Partial, Some(part)) => parts.push(part),
                    _ => unreachable.push(format!("{oap}: {reason}")),
                }
            }
            Err(err) => {
                return Err(ReadError::Refused(format!("at OAP {oap}: {err}")));
            }
        }
    }
    let unreachable_says = || ReadError::Unavailable {
        url: federation
            .oaps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        reason: unreachable.join("; "),
    };
    if !unreachable.is_empty() && federation.unreachable == Unreachable::Fail {
        return Err(unreachable_says());
    }
    match federation::combine(federation.combine, &parts) {
        Some(value) => {
            if !unreachable.is_empty() {
                tracing::warn!(metric = %name, service = %entity.service, unreachable = %unreachable.join("; "), "federated value answered without unreachable OAPs");
            }
            Ok(Reading::Value(federation::decimal(value)))
        }
        None if !unreachable.is_empty() => Err(unreachable_says()),
        None => Ok(Reading::NoData(format!(
            "no OAP of {name:?} has a value in the window"
        ))),
    }
}

/// A value OAP gave, as a number.
fn number(value: &str, oap: &OapRef) -> Result<f64, ReadError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| ReadError::Unavailable {
            url: oap.to_string(),
            reason: format!("answered {value:?}, not a number"),
        })
}

/// The answer to the HPA for a reading.
fn answer_with(
    name: &str,
    namespace: &str,
    entity: &Entity,
    reading: Result<Reading, ReadError>,
) -> Response {
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
