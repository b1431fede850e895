//! Reconciling an `OAPServer`: apply its objects, then report its status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use skylift_api::constants::FIELD_MANAGER;
use skylift_api::{OAPServer, OAPServerStatus};

use super::{Applied, Context, Error};
use crate::build::{oapserver as build, selector_string};
use crate::status::{Observed, Problem, Rollout, conditions};

/// Safety net: even without any watch event, look again after this long.
pub(crate) const RESYNC: Duration = Duration::from_secs(30 * 60);

pub async fn reconcile(oap: Arc<OAPServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("OAPServer");
    if oap.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = oap.uid().unwrap_or_default();
    let objects = build::build(&oap);
    let stores = &ctx.stores;
    let deployment_name = objects.deployment.name_any();

    let mut changes = Vec::new();
    let mut problems = Vec::new();
    let results = [
        (
            "ServiceAccount",
            ctx.apply(&stores.service_accounts, &uid, objects.service_account)
                .await,
        ),
        ("Role", ctx.apply(&stores.roles, &uid, objects.role).await),
        (
            "RoleBinding",
            ctx.apply(&stores.role_bindings, &uid, objects.role_binding)
                .await,
        ),
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.service).await,
        ),
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.headless_service)
                .await,
        ),
        (
            "Deployment",
            ctx.apply(&stores.deployments, &uid, objects.deployment)
                .await,
        ),
    ];
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
    publish_changes(&ctx, oap.as_ref(), &changes).await;

    let deployment: Option<Deployment> = stores
        .deployments
        .get(&oap.namespace().unwrap_or_default(), &deployment_name)
        .and_then(|cached| cached.typed());
    let rollout = Rollout::of(deployment.as_ref(), oap.spec.replicas);
    let previous = oap.status.clone().unwrap_or_default();
    let status = OAPServerStatus {
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        selector: Some(selector_string(&build::pod_selector(&oap.name_any()))),
        address: Some(build::address(&oap)),
        conditions: conditions(
            &previous.conditions,
            &Observed {
                generation: oap.metadata.generation,
                rollout,
                upstreams: None,
                problems: &problems,
            },
            now(),
        ),
        observed_generation: oap.metadata.generation,
    };
    if oap.status.as_ref() != Some(&status) {
        write_status::<OAPServer>(
            &ctx,
            &oap.name_any(),
            &oap.namespace().unwrap_or_default(),
            json!(status),
        )
        .await?;
    }
    Ok(Action::requeue(RESYNC))
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
    let (created, updated) = (list(Applied::Created), list(Applied::Updated));
    let note = match (created.is_empty(), updated.is_empty()) {
        (false, true) => format!("created {created}"),
        (true, false) => format!("updated {updated}"),
        _ => format!("created {created}; updated {updated}"),
    };
    let reason = if updated.is_empty() {
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
