//! The agent-injection admission webhook: kube-apiserver sends an `AdmissionReview` for
//! each pod created, and gets back the JSON Patch of [`crate::build::inject`]. Every
//! replica serves it (it does not need the leader Lease), from its own caches of the
//! SwAgents, Satellites and OAPServers.
//!
//! A pod is always admitted: an injection that cannot be done is a warning on the pod's
//! creation, never a refusal, and the webhook is registered with `failurePolicy: Ignore`
//! so that an outage of the operator never blocks pods either.
//!
//! The API server calls it only for pods in namespaces that have a SwAgent ([`scope`]),
//! and it is served on a thread and runtime of its own ([`serve_on_own_thread`]), with its
//! own client, so admission never waits behind reconciles or Lease renewals, nor they
//! behind a burst of pod creations.

pub mod scope;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use skylift_api::{OAPServer, Satellite, SwAgent};

use crate::build::inject::{Outcome, inject};
use crate::controller::cache::scoped_api;
use crate::controller::swagent::default_backend_in;
use crate::metrics::Metrics;

/// The path the MutatingWebhookConfiguration calls.
pub const INJECT_PATH: &str = "/inject-agent";
/// How long a review waits for the caches' first list.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the webhook reads.
#[derive(Clone)]
pub struct Caches {
    pub swagents: Store<SwAgent>,
    pub satellites: Store<Satellite>,
    pub oapservers: Store<OAPServer>,
    /// Notified whenever a SwAgent changes.
    pub swagents_changed: Arc<tokio::sync::Notify>,
}

impl Caches {
    /// Starts the watches (in `namespace`, or everywhere); they run until dropped.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
    ) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
        fn cache<K>(
            client: &Client,
            namespace: Option<&str>,
            changed: Arc<tokio::sync::Notify>,
        ) -> (Store<K>, tokio::task::JoinHandle<()>)
        where
            K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            let api: Api<K> = scoped_api(client, namespace);
            let (reader, writer) = reflector::store();
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            let task = tokio::spawn(reflector::reflector(writer, stream).for_each(move |_| {
                changed.notify_one();
                futures::future::ready(())
            }));
            (reader, task)
        }
        let swagents_changed = Arc::new(tokio::sync::Notify::new());
        let unheeded = Arc::new(tokio::sync::Notify::new());
        let (swagents, a) = cache(client, namespace, swagents_changed.clone());
        let (satellites, b) = cache(client, namespace, unheeded.clone());
        let (oapservers, c) = cache(client, namespace, unheeded);
        (
            Caches {
                swagents,
                satellites,
                oapservers,
                swagents_changed,
            },
            vec![a, b, c],
        )
    }

    /// Waits (at most `limit`) for the first list of every cache: a pod created while the
    /// operator starts is decided on what exists, not on empty caches.
    async fn filled(&self, limit: std::time::Duration) -> bool {
        let all = async {
            let (a, b, c) = futures::join!(
                self.swagents.wait_until_ready(),
                self.satellites.wait_until_ready(),
                self.oapservers.wait_until_ready()
            );
            a.is_ok() && b.is_ok() && c.is_ok()
        };
        tokio::time::timeout(limit, all).await.unwrap_or(false)
    }
}

/// The answer to one `AdmissionReview` (`admission.k8s.io/v1`), and the outcome's name for
/// metrics. Pure, so what the API server gets back is tested directly.
pub fn review(
    body: &Value,
    agents_in: impl Fn(&str) -> Vec<SwAgent>,
    backend_in: impl Fn(&str) -> Option<String>,
) -> (Value, &'static str) {
    let request = &body["request"];
    let uid = request["uid"].clone();
    let answer = |response: Value| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    let allowed = |warnings: Vec<String>| {
        let mut response = json!({"uid": uid, "allowed": true});
        if !warnings.is_empty() {
            response["warnings"] = json!(warnings);
        }
        answer(response)
    };
    // Only a pod's creation is injected: an update never adds an agent to a pod (its
    // containers and volumes cannot change anyway), whatever the webhook is registered for.
    if request["operation"] != "CREATE" || request["kind"]["kind"] != "Pod" {
        return (allowed(Vec::new()), "not_selected");
    }
    let Ok(pod) = serde_json::from_value::<Pod>(request["object"].clone()) else {
        return (
            allowed(vec![
                "skylift: the pod could not be read; admitted without an agent".into(),
            ]),
            "invalid",
        );
    };
    // A pod's own namespace may be empty in the object; the request always names it.
    let namespace = request["namespace"]
        .as_str()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default()
        .to_string();
    let agents = agents_in(&namespace);
    match inject(&pod, &agents, backend_in(&namespace).as_deref()) {
        Outcome::Injected { agent, patch } => {
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&patch).expect("JSON serializes"));
            tracing::debug!(%namespace, swagent = %agent, "agent injected");
            (
                answer(
                    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch}),
                ),
                "injected",
            )
        }
        Outcome::Skipped { agent, warning } => {
            tracing::info!(%namespace, swagent = %agent, %warning, "agent not injected");
            (allowed(vec![format!("skylift: {warning}")]), "skipped")
        }
        Outcome::NotSelected => (allowed(Vec::new()), "not_selected"),
        Outcome::AlreadyInjected => (allowed(Vec::new()), "already_injected"),
        Outcome::OptedOut => (allowed(Vec::new()), "opted_out"),
    }
}

struct WebhookState {
    caches: Caches,
    metrics: Arc<Metrics>,
}

async fn handle(
    State(state): State<Arc<WebhookState>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        state.metrics.record_admission("invalid");
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "an AdmissionReview in JSON is expected",
        )
            .into_response();
    };
    let caches = &state.caches;
    // Within the API server's timeout (5 s in the chart); past it the pod is created
    // without an agent either way.
    if !caches.filled(CACHE_WAIT).await {
        state.metrics.record_admission("not_ready");
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the webhook's caches are still filling",
        )
            .into_response();
    }
    let (answer, outcome) = review(
        &body,
        |namespace| {
            caches
                .swagents
                .state()
                .iter()
                .filter(|a| a.metadata.namespace.as_deref() == Some(namespace))
                .map(|a| a.as_ref().clone())
                .collect()
        },
        |namespace| default_backend_in(&caches.satellites, &caches.oapservers, namespace),
    );
    state.metrics.record_admission(outcome);
    axum::Json(answer).into_response()
}

/// Where and how the webhook is served.
pub struct ServeSettings {
    /// Bound by the caller, so a port that cannot be taken stops the start.
    pub listener: std::net::TcpListener,
    /// The Service the API server calls (the serving certificate's names).
    pub service: String,
    /// The Secret the self-managed CA and certificate are kept in.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` and `namespaceSelector` are kept.
    pub configuration: String,
    /// A certificate to serve instead of a self-managed one (PEM files, reloaded).
    pub cert_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The namespace the operator watches (None: all).
    pub watch_namespace: Option<String>,
    /// The operator's own namespace (the Secret's and the Service's).
    pub pod_namespace: String,
    pub metrics: Arc<Metrics>,
}

/// Serves the webhook on a thread with a runtime and an API client of its own. The
/// receiver resolves if it ever stops.
pub fn serve_on_own_thread(
    settings: ServeSettings,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || {
            let _stopped = stopped;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "the webhook's runtime could not start");
                    return;
                }
            };
            runtime.block_on(async move {
                match Client::try_default().await {
                    Ok(client) => serve(client, settings).await,
                    Err(err) => tracing::error!(error = %err, "the webhook's API client"),
                }
            });
        })?;
    Ok(on_stop)
}

/// Serves the webhook over HTTPS (the given certificate files, or a self-managed
/// certificate whose CA goes into the configuration), and keeps the configuration's
/// namespaceSelector; returns if the listener stops.
pub async fn serve(client: Client, settings: ServeSettings) {
    use skylift_certs::{bootstrap, serve, tls};
    let tls = tls::TlsState::new();
    let _certificates = match settings.cert_files {
        Some((cert, key)) => {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Err(err) = tls::serve_files(tls, cert, key).await;
                tracing::error!(error = %err, "the webhook's certificate files cannot be read; the webhook does not serve");
            })
        }
        None => {
            let mut bootstrap_settings = bootstrap::Settings::new(
                &settings.service,
                &settings.pod_namespace,
                (settings.pod_namespace.clone(), settings.secret.clone()),
            );
            bootstrap_settings.ca_bundle_for = Some(bootstrap::CaBundleTarget::MutatingWebhook(
                settings.configuration.clone(),
            ));
            bootstrap_settings.manager = "skylift-operator".into();
            tokio::spawn(bootstrap::run(
                client.clone(),
                bootstrap_settings,
                tls.clone(),
            ))
        }
    };
    let (caches, _watches) = Caches::start(&client, settings.watch_namespace.as_deref());
    let _scope = tokio::spawn(scope::keep(
        client.clone(),
        settings.configuration.clone(),
        caches.swagents.clone(),
        caches.swagents_changed.clone(),
    ));
    let listener = match settings
        .listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(settings.listener))
    {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "the webhook's listener");
            return;
        }
    };
    tracing::info!(address = ?listener.local_addr().ok(), "agent-injection webhook listening");
    serve::serve(listener, tls, router(caches, settings.metrics)).await;
}

pub fn router(caches: Caches, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(INJECT_PATH, post(handle))
        .with_state(Arc::new(WebhookState { caches, metrics }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java_agent() -> SwAgent {
        let mut agent = SwAgent::new(
            "java",
            serde_json::from_value(json!({"selector": {"app": "shop"}, "language": "java"}))
                .unwrap(),
        );
        agent.metadata.namespace = Some("shop".into());
        agent
    }

    fn request(operation: &str, kind: &str, object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "operation": operation,
            "kind": {"group": "", "version": "v1", "kind": kind}, "namespace": "shop", "object": object,
        }})
    }

    fn shop_pod() -> Value {
        json!({"metadata": {"generateName": "shop-7c9f-", "labels": {"app": "shop"}},
               "spec": {"containers": [{"name": "app", "image": "shop:1"}]}})
    }

    fn answer(body: &Value) -> (Value, &'static str) {
        review(
            body,
            |_| vec![java_agent()],
            |_| Some("sat.shop.svc:11800".into()),
        )
    }

    #[test]
    fn a_created_pod_gets_a_json_patch_answering_its_request() {
        let (answer, outcome) = answer(&request("CREATE", "Pod", shop_pod()));
        assert_eq!(outcome, "injected");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(response["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(
            patch
                .as_array()
                .unwrap()
                .iter()
                .any(|op| op["path"] == "/spec/initContainers")
        );
    }

    #[test]
    fn updates_other_kinds_and_unreadable_pods_are_admitted_unchanged() {
        for (body, outcome) in [
            (request("UPDATE", "Pod", shop_pod()), "not_selected"),
            (
                request("CREATE", "Service", json!({"metadata": {"name": "s"}})),
                "not_selected",
            ),
            (
                request(
                    "CREATE",
                    "Pod",
                    json!({"spec": {"containers": "not a list"}}),
                ),
                "invalid",
            ),
        ] {
            let (answer, got) = super::tests::answer(&body);
            assert_eq!(got, outcome, "{body}");
            let response = &answer["response"];
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none(), "{response}");
        }
    }

    #[test]
    fn a_selected_pod_that_cannot_be_injected_is_admitted_with_a_warning() {
        let (answer, outcome) = review(
            &request("CREATE", "Pod", shop_pod()),
            |_| vec![java_agent()],
            |_| None,
        );
        assert_eq!(outcome, "skipped");
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.starts_with("skylift: SwAgent java selects this pod but names no backend"),
            "{warning}"
        );
        assert_eq!(answer["response"]["allowed"], true);
    }
}
