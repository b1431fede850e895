//! Reporting what a reconcile did: status written with server-side apply, and Events.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde_json::json;
use skylift_api::constants::FIELD_MANAGER;

use super::{Applied, Context, Error};
use crate::status::Problem;

/// Safety net: even without any watch event, look again after this long.
pub(crate) const RESYNC: Duration = Duration::from_secs(30 * 60);

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
                message: format!("{kind} {name} already exists and is controlled by {owner}"),
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
