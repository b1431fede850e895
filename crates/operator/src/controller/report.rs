//! Reporting what a reconcile did: status written with server-side apply, and Events.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde_json::json;
use skylift_api::common::condition;
use skylift_api::constants::FIELD_MANAGER;

use super::{Applied, Context, Error};
use crate::status::Problem;

/// Safety net: even without any watch event, look again after this long.
pub(crate) const RESYNC: Duration = Duration::from_secs(30 * 60);

/// While an object of a name the resource needs is someone else's, nothing the operator
/// watches tells when it goes: look again this often.
pub(crate) const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// When to reconcile again without a change: soon while a name is taken, else the resync.
pub(crate) fn next_look(problems: &[Problem]) -> Action {
    if problems.iter().any(|p| p.reason == "NameConflict") {
        Action::requeue(CONFLICT_RECHECK)
    } else {
        Action::requeue(RESYNC)
    }
}

/// Sorts the results of applying a resource's objects: what changed goes to `changes`, an
/// object owned by something else becomes a `NameConflict` problem (reported in status),
/// any other failure fails the reconcile.
pub(crate) fn sort_results(
    results: impl IntoIterator<Item = (&'static str, Result<Applied, Error>)>,
    changes: &mut Vec<(&'static str, Applied)>,
    problems: &mut Vec<Problem>,
) -> Result<(), Error> {
    for (kind, result) in results {
        match result {
            Ok(Applied::Unchanged) => {}
            Ok(applied) => changes.push((kind, applied)),
            Err(Error::NameConflict { kind, name, owner }) => problems.push(Problem {
                reason: "NameConflict",
                message: super::name_conflict(kind, &name, owner.as_deref()),
            }),
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes `status` through the status subresource with server-side apply.
pub(crate) async fn write_status<K>(
    ctx: &Context,
    name: &str,
    namespace: &str,
    status: serde_json::Value,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    ctx.metrics.record_write(super::apply::kind_of::<K>());
    Ok(())
}

/// One event per reconcile that changed objects: "Created Deployment, Service".
pub(crate) async fn publish_changes<K>(ctx: &Context, resource: &K, changes: &[(&str, Applied)])
where
    K: Resource<DynamicType = ()>,
{
    if changes.is_empty() {
        return;
    }
    let list = |wanted: Applied| {
        changes
            .iter()
            .filter(|(_, applied)| *applied == wanted)
            .map(|(kind, _)| *kind)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let note = [
        ("created", Applied::Created),
        ("updated", Applied::Updated),
        ("deleted", Applied::Deleted),
    ]
    .into_iter()
    .map(|(verb, wanted)| (verb, list(wanted)))
    .filter(|(_, kinds)| !kinds.is_empty())
    .map(|(verb, kinds)| format!("{verb} {kinds}"))
    .collect::<Vec<_>>()
    .join("; ");
    let reason = if changes.iter().all(|(_, a)| *a == Applied::Created) {
        "Created"
    } else {
        "Updated"
    };
    publish(ctx, resource, EventType::Normal, reason, note).await;
}

/// A Warning Event for each problem the resource's conditions do not already report, so
/// `kubectl describe` and `kubectl get events` say it once, not on every reconcile.
pub(crate) async fn publish_problems<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    resource: &K,
    previous: &[Condition],
    problems: &[Problem],
) {
    for problem in problems {
        let already_reported = previous.iter().any(|c| {
            c.type_ == condition::DEGRADED
                && c.reason == problem.reason
                && c.message == problem.message
        });
        if !already_reported {
            publish(
                ctx,
                resource,
                EventType::Warning,
                problem.reason,
                problem.message.clone(),
            )
            .await;
        }
    }
}

/// Which failure was last reported for each resource (kind, namespace, name), so a
/// reconcile retried with the same failure is not reported again, whether or not the
/// status written for the first has reached the caches yet. A reconcile that succeeds
/// forgets it.
#[derive(Default)]
pub struct ReportedFailures(
    std::sync::Mutex<std::collections::HashMap<FailureKey, (String, String)>>,
);

/// A resource: (kind, namespace, name).
pub type FailureKey = (String, String, String);

impl ReportedFailures {
    /// Whether `reason` / `message` is new for the resource `key`; it is recorded.
    pub(crate) fn is_new(&self, key: FailureKey, reason: &str, message: &str) -> bool {
        let mut reported = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let failure = (reason.to_string(), message.to_string());
        if reported.get(&key) == Some(&failure) {
            return false;
        }
        reported.insert(key, failure);
        true
    }

    /// The resource `key` reconciled: its next failure is reported whatever it is.
    pub(crate) fn forget(&self, key: &FailureKey) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// A reconcile that failed says why where users look: `Degraded` in the resource's status
/// (reason: the failure's category, message: what the API server said) and a Warning
/// Event, each once per distinct failure, however often the reconcile is retried.
pub(crate) async fn report_failure<K>(
    ctx: &Context,
    resource: &K,
    reason: &'static str,
    message: &str,
) where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let previous: Vec<Condition> = serde_json::to_value(resource)
        .ok()
        .and_then(|value| serde_json::from_value(value["status"]["conditions"].clone()).ok())
        .unwrap_or_default();
    let Some(conditions) = crate::status::failed(
        &previous,
        reason,
        message,
        resource.meta().generation,
        now(),
    ) else {
        return;
    };
    let Some(name) = resource.meta().name.clone() else {
        return;
    };
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        resource.meta().namespace.as_deref().unwrap_or_default(),
    );
    // A merge patch of the conditions alone: the next reconcile that succeeds applies the
    // whole status again.
    let patch = json!({"status": {"conditions": conditions}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => ctx.metrics.record_write(super::apply::kind_of::<K>()),
        Err(err) => {
            tracing::warn!(error = %err, %name, "could not report the failure in the status")
        }
    }
    publish(
        ctx,
        resource,
        EventType::Warning,
        reason,
        message.to_string(),
    )
    .await;
}

/// Publishes an event about `resource`; a failure to record is logged, never fatal.
pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    resource: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx
        .recorder
        .publish(&event, &resource.object_ref(&()))
        .await
    {
        Ok(()) => ctx.metrics.record_write("Event"),
        Err(err) => tracing::warn!(error = %err, reason, "could not record an event"),
    }
}

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
