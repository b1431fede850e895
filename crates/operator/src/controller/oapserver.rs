//! Reconciling an `OAPServer`: apply its objects, then report its status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skylift_api::{OAPServer, OAPServerStatus};

use super::report::{RESYNC, now, publish_changes, sort_results, write_status};
use super::{Context, Error};
use crate::build::{oapserver as build, selector_string};
use crate::status::{Observed, Rollout, conditions};

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
    sort_results(results, &mut changes, &mut problems)?;
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
