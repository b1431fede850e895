//! Mutating admission webhooks, as kube-apiserver calls them on a create: every
//! MutatingWebhookConfiguration whose rules and selectors match the request is called in
//! name order with an `admission.k8s.io/v1` AdmissionReview, over HTTPS verified with its
//! `caBundle`, and the JSON Patch it answers is applied to the object. Each rule below is
//! kube-apiserver's, from k8s.io/apiserver/pkg/admission/plugin/webhook:
//!
//! - `rules` match by operation, API group, version and resource, `*` matching any
//!   (`predicates/rules/rules.go`);
//! - `namespaceSelector` is matched against the namespace's labels, which always include
//!   `kubernetes.io/metadata.name`; `objectSelector` against the object's labels
//!   (`predicates/namespace/matcher.go`, `predicates/object/matcher.go`); a missing
//!   selector selects everything;
//! - the response must carry the request's `uid` and `allowed`; a patch must be
//!   `patchType: JSONPatch` (`mutating/dispatcher.go`); `allowed: false` refuses the
//!   request with the response's status, its code at least 400, its message behind
//!   `admission webhook "<name>" denied the request` (`errors/statuserror.go`);
//! - a call that fails (connection, TLS, timeout after `timeoutSeconds`, default 10, or a
//!   malformed answer) refuses the request when `failurePolicy` is `Fail` (the v1
//!   default), and is skipped when it is `Ignore` (`errors.go`, `dispatcher.go`).
//!
//! Only `clientConfig.url` is reachable from the double (it has no Service network), and
//! `url` webhooks are what tests register. Only CREATE is dispatched.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::selector::LabelSelector;
use super::state::{ApiError, State};

const GROUP: &str = "admissionregistration.k8s.io";

/// Whether a webhook's `metav1.LabelSelector` selects `object` (a missing one does; one
/// that cannot be read selects nothing).
fn selects(selector: &Value, object: &Value) -> bool {
    LabelSelector::from_object(selector).is_ok_and(|s| s.matches(object))
}

fn matches_rule(rule: &Value, rt: &ResourceType, operation: &str) -> bool {
    let has = |field: &str, wanted: &str| {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|v| v == "*" || v == wanted)
    };
    has("operations", operation)
        && has("apiGroups", &rt.group)
        && has("apiVersions", &rt.version)
        && has("resources", &rt.plural)
}

/// Runs the mutating webhooks for the creation of `object` (of type `rt` in `namespace`)
/// and returns the object as they left it.
pub async fn mutate_create(
    state: &State,
    rt: &ResourceType,
    namespace: Option<&str>,
    mut object: Value,
    user: &str,
) -> Result<Value, ApiError> {
    let Ok(mut configurations) = state.list_all(GROUP, "mutatingwebhookconfigurations") else {
        return Ok(object);
    };
    configurations.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    // The namespace as its selector sees it: its labels, which always include its name.
    let namespace_object = namespace.map(|ns| {
        let mut object = state
            .get("", "namespaces", None, ns)
            .unwrap_or_else(|_| json!({"metadata": {}}));
        object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(ns);
        object
    });
    for configuration in configurations {
        for webhook in configuration["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let applies = webhook["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| matches_rule(r, rt, "CREATE"))
                && namespace_object
                    .as_ref()
                    .is_none_or(|ns| selects(&webhook["namespaceSelector"], ns))
                && selects(&webhook["objectSelector"], &object);
            if !applies {
                continue;
            }
            let ignore = webhook["failurePolicy"].as_str() == Some("Ignore");
            let name = webhook["name"].as_str().unwrap_or_default().to_string();
            match call(&webhook, rt, namespace, &object, user).await {
                Ok(Some(patched)) => object = patched_with(object, &patched, &name)?,
                Ok(None) => {}
                Err(Refusal::Denied(status)) => return Err(status),
                Err(Refusal::Failed(reason)) if ignore => {
                    state.record_webhook_failure(&name, &reason);
                }
                Err(Refusal::Failed(reason)) => {
                    return Err(ApiError::new(
                        500,
                        "InternalError",
                        format!(
                            "Internal error occurred: failed calling webhook \"{name}\": {reason}"
                        ),
                    ));
                }
            }
        }
    }
    Ok(object)
}

enum Refusal {
    /// The webhook answered `allowed: false`.
    Denied(ApiError),
    /// The call failed; `failurePolicy` decides.
    Failed(String),
}

fn patched_with(mut object: Value, patch: &Value, webhook: &str) -> Result<Value, ApiError> {
    super::merge::json_patch(&mut object, patch).map_err(|e| {
        ApiError::new(
            500,
            "InternalError",
            format!(
                "Internal error occurred: webhook \"{webhook}\": {}",
                e.message
            ),
        )
    })?;
    Ok(object)
}

/// Calls one webhook; `Ok(Some(patch))` when it answered with a patch.
async fn call(
    webhook: &Value,
    rt: &ResourceType,
    namespace: Option<&str>,
    object: &Value,
    user: &str,
) -> Result<Option<Value>, Refusal> {
    let failed = |what: String| Refusal::Failed(what);
    let url = webhook["clientConfig"]["url"]
        .as_str()
        .ok_or_else(|| failed("the double reaches webhooks by clientConfig.url only".into()))?;
    let timeout = Duration::from_secs(webhook["timeoutSeconds"].as_u64().unwrap_or(10));
    let mut client = reqwest::Client::builder().timeout(timeout).use_rustls_tls();
    if let Some(bundle) = webhook["clientConfig"]["caBundle"].as_str() {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .map_err(|e| failed(format!("caBundle is not base64: {e}")))?;
        for certificate in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| failed(e.to_string()))?
        {
            client = client.add_root_certificate(certificate);
        }
    }
    let client = client.build().map_err(|e| failed(e.to_string()))?;
    let uid = format!("admission-{}", uid_counter());
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let gvr = json!({"group": rt.group, "version": rt.version, "resource": rt.plural});
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": object["metadata"]["name"], "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": user}, "object": object, "oldObject": null,
            "dryRun": false, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    });
    let answer: Value = client
        .post(url)
        .json(&review)
        .send()
        .await
        .map_err(|e| failed(format!("Post \"{url}\": {e}")))?
        .error_for_status()
        .map_err(|e| failed(e.to_string()))?
        .json()
        .await
        .map_err(|e| failed(format!("the response is not an AdmissionReview: {e}")))?;
    let response = &answer["response"];
    if response["uid"] != json!(uid) {
        return Err(failed(format!(
            "expected response.uid=\"{uid}\", got \"{}\"",
            response["uid"].as_str().unwrap_or_default()
        )));
    }
    match response["allowed"].as_bool() {
        Some(true) => {}
        Some(false) => return Err(Refusal::Denied(denied(webhook, &response["status"]))),
        None => return Err(failed("the response has no allowed".into())),
    }
    let Some(patch) = response["patch"].as_str() else {
        return Ok(None);
    };
    if response["patchType"].as_str() != Some("JSONPatch") {
        return Err(failed(format!(
            "unsupported patch type {:?}",
            response["patchType"]
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| failed(format!("the patch is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| failed(format!("the patch is not JSON: {e}")))
}

/// kube-apiserver's refusal for `allowed: false` (`webhook/errors/statuserror.go`,
/// `ToStatusErr`): the webhook's status, a code of at least 400, and its message behind
/// `admission webhook "<name>" denied the request`.
fn denied(webhook: &Value, status: &Value) -> ApiError {
    let name = webhook["name"].as_str().unwrap_or_default();
    let code = status["code"].as_u64().unwrap_or(0).max(400) as u16;
    let denied_by = format!("admission webhook \"{name}\" denied the request");
    let message = match (status["message"].as_str(), status["reason"].as_str()) {
        (Some(message), _) if !message.is_empty() => format!("{denied_by}: {message}"),
        (_, Some(reason)) if !reason.is_empty() => format!("{denied_by}: {reason}"),
        _ => format!("{denied_by} without explanation"),
    };
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    ApiError::new(code, reason, message)
}

fn uid_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
