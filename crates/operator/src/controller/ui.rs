//! Reconciling a `UI`: its Deployment, Service and optional Ingress, and its status.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use skylift_api::{UI, WorkloadStatus};

use super::report::{next_look, publish_changes, sort_results};
use super::workload::{missing_backend, report};
use super::{Context, Error};
use crate::build::backend::BackendTarget;
use crate::build::{selector_string, ui as build};

pub async fn reconcile(ui: Arc<UI>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("UI");
    if ui.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = ui.uid().unwrap_or_default();
    let namespace = ui.namespace().unwrap_or_default();
    let name = ui.name_any();
    let objects = build::build(&ui);
    let stores = &ctx.stores;
    let workload = build::workload_name(&name);
    let mut problems = Vec::new();
    if let Some(oap) = &ui.spec.oap.oap_server_ref {
        problems.extend(missing_backend(
            &ctx,
            &namespace,
            &BackendTarget::OapServer(oap.name.clone()),
            "spec.oap.oapServerRef.name",
        ));
    }
    let ingress = ctx
        .apply_or_remove(
            &stores.ingresses,
            &uid,
            (&namespace, &workload),
            objects.ingress,
        )
        .await;
    let results = [
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.service).await,
        ),
        (
            "Deployment",
            ctx.apply(&stores.deployments, &uid, objects.deployment)
                .await,
        ),
        ("Ingress", ingress),
    ];
    let mut changes = Vec::new();
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(&ctx, ui.as_ref(), &changes).await;

    let status = WorkloadStatus {
        selector: Some(selector_string(&build::pod_selector(&name))),
        url: Some(build::url(&ui)),
        backend: Some(build::oap_url(&ui)),
        ..WorkloadStatus::default()
    };
    let rollout = stores.deployment_rollout(&namespace, &workload, ui.spec.replicas);
    report(
        &ctx,
        ui.as_ref(),
        ui.status.as_ref(),
        status,
        rollout,
        &problems,
    )
    .await?;
    Ok(next_look(&problems))
}
