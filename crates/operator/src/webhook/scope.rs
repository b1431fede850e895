//! Which pod creations the API server sends the webhook: those in namespaces that have a
//! SwAgent, and no others. The MutatingWebhookConfiguration's `namespaceSelector` is kept
//! to that set (by the namespace's own name label, which every namespace carries), so
//! the cluster's other pod creations never wait on the webhook, nor depend on it being up.
//!
//! The chart declares no `namespaceSelector`: `kubectl apply` and `helm upgrade` leave the
//! operator's alone. It is written again whenever the SwAgents change or the configuration
//! does (a re-applied bundle, someone's edit).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use skylift_api::SwAgent;
use tokio::sync::Notify;

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The selector of exactly `namespaces`; with none, a selector no namespace matches
/// (every namespace has its name label).
pub fn namespace_selector(namespaces: &BTreeSet<String>) -> LabelSelector {
    let requirement = if namespaces.is_empty() {
        LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: "DoesNotExist".into(),
            values: None,
        }
    } else {
        LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.into(),
            operator: "In".into(),
            values: Some(namespaces.iter().cloned().collect()),
        }
    };
    LabelSelector {
        match_expressions: Some(vec![requirement]),
        match_labels: None,
    }
}

/// The namespaces that have a SwAgent.
pub fn namespaces_with_agents<'a>(
    agents: impl IntoIterator<Item = &'a SwAgent>,
) -> BTreeSet<String> {
    agents
        .into_iter()
        .filter_map(|agent| agent.metadata.namespace.clone())
        .collect()
}

/// Puts `selector` into every webhook of `configuration`; whether anything changed.
pub fn set_selector(
    configuration: &mut MutatingWebhookConfiguration,
    selector: &LabelSelector,
) -> bool {
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook.namespace_selector.as_ref() != Some(selector) {
            webhook.namespace_selector = Some(selector.clone());
            changed = true;
        }
    }
    changed
}

/// How often the selector is looked at without a change, in case a watch missed one.
const RECHECK: Duration = Duration::from_secs(300);

/// Keeps the `namespaceSelector` of the MutatingWebhookConfiguration `name` to the
/// namespaces `swagents` holds, looking again whenever `swagents_changed` is notified or the
/// configuration changes.
pub async fn keep(
    client: Client,
    name: String,
    swagents: Store<SwAgent>,
    swagents_changed: std::sync::Arc<Notify>,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut configuration_changed = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    if swagents.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let wait = match write(&api, &name, &swagents).await {
            Ok(()) => RECHECK,
            Err(kube::Error::Api(status)) if status.code == 409 => Duration::from_millis(200),
            Err(err) => {
                tracing::warn!(error = %err, configuration = %name, "keeping the webhook's namespaceSelector; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = swagents_changed.notified() => {}
            Some(_) = configuration_changed.next() => {}
        }
    }
}

/// One look: the configuration written at the version read if its selector is not the
/// one the SwAgents ask for (a concurrent writer makes it a 409, and the next look reads
/// again).
async fn write(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    swagents: &Store<SwAgent>,
) -> Result<(), kube::Error> {
    let state = swagents.state();
    let namespaces = namespaces_with_agents(state.iter().map(|a| a.as_ref()));
    let selector = namespace_selector(&namespaces);
    let Some(mut configuration) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !set_selector(&mut configuration, &selector) {
        return Ok(());
    }
    api.replace(name, &PostParams::default(), &configuration)
        .await?;
    tracing::info!(configuration = %name, namespaces = ?namespaces, "webhook now called for pods in these namespaces only");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(namespace: &str) -> SwAgent {
        let mut agent = SwAgent::new(
            "java",
            serde_json::from_value(json!({"selector": {"app": "shop"}, "language": "java"}))
                .unwrap(),
        );
        agent.metadata.namespace = Some(namespace.into());
        agent
    }

    #[test]
    fn the_webhook_is_sent_only_the_namespaces_with_a_swagent() {
        let agents = [agent("shop"), agent("billing"), agent("shop")];
        let namespaces = namespaces_with_agents(agents.iter());
        let selector = namespace_selector(&namespaces);
        assert_eq!(
            serde_json::to_value(&selector).unwrap(),
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["billing", "shop"]}]})
        );
        // None: no namespace at all (In needs at least one value).
        assert_eq!(
            serde_json::to_value(namespace_selector(&BTreeSet::new())).unwrap(),
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "DoesNotExist"}]})
        );
    }

    #[test]
    fn the_selector_is_written_only_when_it_differs() {
        let mut configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "skylift-agent-injector"},
            "webhooks": [{"name": "inject.agent.skylift.io", "admissionReviewVersions": ["v1"],
                          "sideEffects": "None", "clientConfig": {}, "namespaceSelector": {}}],
        }))
        .unwrap();
        let selector = namespace_selector(&BTreeSet::from(["shop".to_string()]));
        assert!(set_selector(&mut configuration, &selector));
        assert!(!set_selector(&mut configuration, &selector));
    }
}
