//! Reconciling an `OTelCollector`: its identity, configuration and Deployment, and its
//! status.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use skylift_api::{OTelCollector, WorkloadStatus};

use super::report::{next_look, publish_changes, sort_results};
use super::sources::lookup;
use super::workload::{missing_backend, report};
use super::{Context, Error};
use crate::build::backend::BackendTarget;
use crate::build::{collector as build, selector_string};
use crate::status::Problem;

pub async fn reconcile(collector: Arc<OTelCollector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("OTelCollector");
    if collector.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = collector.uid().unwrap_or_default();
    let namespace = collector.namespace().unwrap_or_default();
    let name = collector.name_any();
    let stores = &ctx.stores;
    let target = BackendTarget::of(&collector.spec.backend);
    let mut problems: Vec<Problem> = missing_backend(&ctx, &namespace, &target, "spec.backend")
        .into_iter()
        .collect();
    let user_config = collector
        .spec
        .config_map_ref
        .as_ref()
        .and_then(|r| {
            let found = lookup(&stores.config_sources, &namespace, &r.name);
            let has_key = found.as_ref().is_some_and(|f| f.keys.contains(&r.key));
            if !has_key {
                problems.push(Problem {
                    reason: "ConfigMapNotFound",
                    message: format!(
                        "ConfigMap {:?} with key {:?} does not exist in namespace {namespace:?}; the collector starts once it does",
                        r.name, r.key
                    ),
                });
            }
            found
        });
    let objects = build::build(&collector, user_config.as_ref());
    let workload = build::workload_name(&name);
    let config_map = ctx
        .apply_or_remove(
            &stores.config_maps,
            &uid,
            (&namespace, &workload),
            objects.config_map,
        )
        .await;
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
        ("ConfigMap", config_map),
        (
            "Deployment",
            ctx.apply(&stores.deployments, &uid, objects.deployment)
                .await,
        ),
    ];
    let mut changes = Vec::new();
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(&ctx, collector.as_ref(), &changes).await;

    let status = WorkloadStatus {
        selector: Some(selector_string(&build::pod_selector(&name))),
        backend: Some(target.grpc_address(&namespace)),
        ..WorkloadStatus::default()
    };
    let rollout = stores.deployment_rollout(&namespace, &workload, collector.spec.replicas);
    report(
        &ctx,
        collector.as_ref(),
        collector.status.as_ref(),
        status,
        rollout,
        &problems,
    )
    .await?;
    Ok(next_look(&problems))
}
