//! The HTTP front of the double: kube-apiserver's URL layout, content types and answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::admission;
use super::resources::ResourceType;
use super::reviews;
use super::selector::{FieldSelector, LabelSelector};
use super::state::{
    ApiError, Change, ChangeKind, PatchKind, RequestAttributes, State, Subresource,
};

pub fn router(state: Arc<State>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error_response(error: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.status(),
    )
}

/// A request path split into its parts.
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(state: &State, path: &str) -> Option<Target> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (String::new(), version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (group.to_string(), version.to_string(), rest),
        _ => return None,
    };
    let namespaced_plural = |plural: &str| {
        state
            .resource_type(&group, &version, plural)
            .is_some_and(|t| t.namespaced)
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural) => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    Some(Target {
        group,
        version,
        namespace,
        plural: rest.first().map(|s| s.to_string()),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

async fn handle(
    AxumState(state): AxumState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    match uri.path() {
        "/version" => {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-skylift-double", "platform": "linux/amd64"}),
            );
        }
        "/api" => {
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        "/apis" => return json_response(StatusCode::OK, &group_list(&state)),
        "/healthz" | "/readyz" | "/livez" => return (StatusCode::OK, "ok").into_response(),
        "/apis/authentication.k8s.io/v1/tokenreviews" if method == Method::POST => {
            state.record_request(attributes(
                &headers,
                "create",
                "authentication.k8s.io",
                "tokenreviews",
                None,
                None,
            ));
            return match parse_body(&body) {
                Ok(review) => {
                    json_response(StatusCode::CREATED, &reviews::review_token(&state, &review))
                }
                Err(error) => error_response(&error),
            };
        }
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" if method == Method::POST => {
            state.record_request(attributes(
                &headers,
                "create",
                "authorization.k8s.io",
                "subjectaccessreviews",
                None,
                None,
            ));
            return match parse_body(&body) {
                Ok(review) => json_response(
                    StatusCode::CREATED,
                    &reviews::review_access(&state, &review),
                ),
                Err(error) => error_response(&error),
            };
        }
        _ => {}
    }
    let Some(target) = parse_path(&state, uri.path()) else {
        return error_response(&ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        });
    };
    let Some(plural) = target.plural.clone() else {
        return json_response(
            StatusCode::OK,
            &resource_list(&state, &target.group, &target.version),
        );
    };
    let Some(rt) = state.resource_type(&target.group, &target.version, &plural) else {
        return error_response(&ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({plural})"),
            details: None,
        });
    };
    let verb = match (&method, &target.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            "watch"
        }
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    let resource = match &target.subresource {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.clone(),
    };
    // As kube-apiserver's RequestInfo: a list or watch of one name (a `metadata.name`
    // field selector) is authorized as a request for that name.
    let name = target.name.clone().or_else(|| {
        query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(','))
            .map(String::from)
    });
    // As kube-apiserver: a server-side apply that creates the object is also authorized
    // as a create (RBAC's `patch` alone does not let an apply make an object).
    let creates = method == Method::PATCH
        && target.subresource.is_none()
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/apply-patch"))
        && target.name.as_deref().is_some_and(|n| {
            state
                .get(&target.group, &plural, target.namespace.as_deref(), n)
                .is_err()
        });
    if creates {
        state.record_request(attributes(
            &headers,
            "create",
            &target.group,
            &resource,
            target.namespace.clone(),
            name.clone(),
        ));
    }
    state.record_request(attributes(
        &headers,
        verb,
        &target.group,
        &resource,
        target.namespace.clone(),
        name,
    ));
    if method != Method::GET {
        let what = match &target.subresource {
            Some(sub) => format!("{} {plural}/{sub}", method.as_str()),
            None => format!("{} {plural}", method.as_str()),
        };
        state.count_write(what);
    }
    let result = serve(&state, &rt, &target, &method, &headers, &query, &body).await;
    match result {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// A request's RBAC attributes; the bearer token stands for the user.
fn attributes(
    headers: &HeaderMap,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<String>,
    name: Option<String>,
) -> RequestAttributes {
    RequestAttributes {
        user: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from),
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace,
        name,
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    // kube-apiserver accepts YAML for apply patches; JSON is YAML.
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice(body))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &Arc<State>,
    rt: &ResourceType,
    target: &Target,
    method: &Method,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let ns = target.namespace.as_deref();
    let (group, plural) = (rt.group.as_str(), rt.plural.as_str());
    let sub = Subresource::parse(target.subresource.as_deref())?;
    if rt.namespaced && ns.is_none() && target.name.is_some() {
        return Err(ApiError::bad_request(format!(
            "{} is namespaced: the path needs a namespace",
            rt.plural
        )));
    }
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) => {
            let labels = LabelSelector::parse(
                query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
            let fields = FieldSelector::parse(
                query
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(
                    state.clone(),
                    rt.clone(),
                    ns.map(String::from),
                    labels,
                    fields,
                    query,
                );
            }
            let (mut items, rv) = state.list(group, plural, ns, &labels, &fields)?;
            for item in &mut items {
                strip(item);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind),
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items,
                }),
            ))
        }
        (Method::GET, Some(name)) => {
            let object = match sub {
                Subresource::Scale => state.scale(group, plural, ns, name)?,
                _ => state.get(group, plural, ns, name)?,
            };
            Ok(ok(object))
        }
        (Method::POST, None) => {
            let user = attributes(headers, "create", group, plural, None, None)
                .user
                .unwrap_or_else(|| "system:admin".into());
            let object = admission::mutate_create(state, rt, ns, parse_body(body)?, &user).await?;
            let created = state.create(group, plural, ns, object)?;
            Ok(json_response(StatusCode::CREATED, &stripped(created)))
        }
        (Method::PUT, Some(name)) => Ok(ok(state.replace(
            group,
            plural,
            ns,
            name,
            sub,
            parse_body(body)?,
        )?)),
        (Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::StrategicMerge,
                "application/json-patch+json" => PatchKind::Json,
                other => {
                    return Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                        ),
                        details: None,
                    });
                }
            };
            let force = query.get("force").is_some_and(|f| f == "true");
            let patched = state.patch(
                group,
                plural,
                ns,
                name,
                sub,
                kind,
                parse_body(body)?,
                query.get("fieldManager").map(String::as_str),
                force,
            )?;
            Ok(ok(patched))
        }
        (Method::DELETE, Some(name)) => Ok(ok(state.delete(group, plural, ns, name)?)),
        _ => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
            details: None,
        }),
    }
}

fn strip(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

fn stripped(mut object: Value) -> Value {
    strip(&mut object);
    object
}

fn ok(object: Value) -> Response {
    json_response(StatusCode::OK, &stripped(object))
}

/// The watch event a change means for one watcher's selectors: an object that stops
/// matching is DELETED for it, one that starts matching is ADDED.
fn event_for(
    change: &Change,
    rt: &ResourceType,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<Value> {
    if change.group != rt.group || change.plural != rt.plural {
        return None;
    }
    if namespace.is_some() && change.namespace.as_deref() != namespace {
        return None;
    }
    let matches = |v: &Value| labels.matches(v) && fields.matches(v);
    let now = matches(&change.object);
    let before = change.previous.as_ref().is_some_and(matches);
    let kind = match (change.kind, before, now) {
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Deleted, true, _) | (ChangeKind::Deleted, _, true) => "DELETED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, false) => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": stripped(change.object.clone())}))
}

fn line(value: &Value) -> Result<Bytes, Infallible> {
    let mut text = value.to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

fn watch(
    state: Arc<State>,
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(300),
    );
    let requested: u64 = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let mut initial = Vec::new();
    let start = if requested == 0 {
        // "Start at most recent": the current objects as ADDED, then what follows.
        let rv = state.resource_version();
        let (items, _) = state.list(
            &rt.group,
            &rt.plural,
            namespace.as_deref(),
            &labels,
            &fields,
        )?;
        initial.extend(
            items
                .into_iter()
                .map(|o| json!({"type": "ADDED", "object": stripped(o)})),
        );
        rv
    } else {
        requested
    };
    let (backlog, receiver) = match state.watch_from(start) {
        Ok(found) => found,
        Err(gone) => {
            let event = json!({"type": "ERROR", "object": gone.status()});
            return Ok(stream_response(Body::from(
                line(&event).unwrap_or_default(),
            )));
        }
    };
    let ns = namespace.clone();
    let (rt_b, labels_b, fields_b) = (rt.clone(), labels.clone(), fields.clone());
    let mut last_rv = start;
    let backlog_events: Vec<Value> = backlog
        .iter()
        .filter_map(|c| {
            last_rv = last_rv.max(c.rv);
            event_for(c, &rt_b, ns.as_deref(), &labels_b, &fields_b)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    struct Live {
        receiver: tokio::sync::broadcast::Receiver<Arc<Change>>,
        last_rv: u64,
        done: bool,
    }
    let live = futures::stream::unfold(
        Live {
            receiver,
            last_rv,
            done: false,
        },
        move |mut live| {
            let (rt, labels, fields, namespace) = (
                rt.clone(),
                labels.clone(),
                fields.clone(),
                namespace.clone(),
            );
            async move {
                loop {
                    if live.done {
                        return None;
                    }
                    let next = tokio::time::timeout_at(deadline, live.receiver.recv()).await;
                    match next {
                        Ok(Ok(change)) => {
                            if change.rv <= live.last_rv {
                                continue;
                            }
                            live.last_rv = change.rv;
                            if let Some(event) =
                                event_for(&change, &rt, namespace.as_deref(), &labels, &fields)
                            {
                                return Some((event, live));
                            }
                        }
                        // A watcher that falls behind is closed, as kube-apiserver closes
                        // slow watchers; the client re-watches from its last version.
                        Ok(Err(RecvError::Lagged(_))) | Ok(Err(RecvError::Closed)) => return None,
                        Err(_elapsed) => {
                            live.done = true;
                            if bookmarks {
                                let bookmark = json!({"type": "BOOKMARK", "object": {
                                    "kind": rt.kind, "apiVersion": rt.api_version(),
                                    "metadata": {"resourceVersion": live.last_rv.to_string()}}});
                                return Some((bookmark, live));
                            }
                            return None;
                        }
                    }
                }
            }
        },
    );
    let events = futures::stream::iter(initial.into_iter().chain(backlog_events)).chain(live);
    Ok(stream_response(Body::from_stream(events.map(|e| line(&e)))))
}

fn stream_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a static response builds")
}

fn group_list(state: &State) -> Value {
    let mut groups: Vec<(String, String)> = state
        .resource_types()
        .into_iter()
        .filter(|t| !t.group.is_empty())
        .map(|t| (t.group, t.version))
        .collect();
    groups.sort();
    groups.dedup();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.iter().map(|(g, v)| json!({
        "name": g, "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
        "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v},
    })).collect::<Vec<_>>()})
}

fn resource_list(state: &State, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in state
        .resource_types()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
            "kind": t.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}));
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.scale.is_some() {
            resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}
