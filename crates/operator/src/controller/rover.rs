//! Reconciling a `Rover`: its ServiceAccount, DaemonSet and ClusterRoleBinding, and its
//! status. The binding is cluster-scoped, so no owner reference can tie it to the Rover:
//! a finalizer deletes it before the Rover goes.
//!
//! A Rover is root on every node (privileged, the host's PID namespace and filesystem), so
//! it runs only in the namespaces a cluster administrator names (`--rover-namespaces`);
//! elsewhere it is reported `NamespaceNotAllowed` and nothing of it runs.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Resource, ResourceExt};
use skylift_api::{Rover, WorkloadStatus};

use super::report::{next_look, publish_changes, sort_results};
use super::workload::{missing_backend, report};
use super::{Context, Error};
use crate::build::backend::BackendTarget;
use crate::build::{rover as build, selector_string};
use crate::status::{Problem, Rollout};

pub async fn reconcile(rover: Arc<Rover>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("Rover");
    let namespace = rover.namespace().unwrap_or_default();
    if !ctx.rover_namespaces.contains(&namespace) {
        return withhold(&rover, &ctx).await;
    }
    let api: Api<Rover> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, build::FINALIZER, rover, |event| async {
        match event {
            Event::Apply(rover) => apply(&rover, &ctx).await,
            Event::Cleanup(rover) => cleanup(&rover, &ctx).await,
        }
    })
    .await
    .map_err(|err| match err {
        kube::runtime::finalizer::Error::ApplyFailed(err)
        | kube::runtime::finalizer::Error::CleanupFailed(err) => err,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn apply(rover: &Rover, ctx: &Context) -> Result<Action, Error> {
    let uid = rover.uid().unwrap_or_default();
    let namespace = rover.namespace().unwrap_or_default();
    let name = rover.name_any();
    let stores = &ctx.stores;
    let target = BackendTarget::of(&rover.spec.backend);
    let mut problems: Vec<Problem> = missing_backend(ctx, &namespace, &target, "spec.backend")
        .into_iter()
        .collect();
    let objects = build::build(rover, &ctx.rover_cluster_role);
    let results = [
        (
            "ServiceAccount",
            ctx.apply(&stores.service_accounts, &uid, objects.service_account)
                .await,
        ),
        (
            "ClusterRoleBinding",
            ctx.apply_cluster(&stores.cluster_role_bindings, objects.cluster_role_binding)
                .await,
        ),
        (
            "DaemonSet",
            ctx.apply(&stores.daemon_sets, &uid, objects.daemon_set)
                .await,
        ),
    ];
    let mut changes = Vec::new();
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(ctx, rover, &changes).await;

    let set: Option<DaemonSet> = stores
        .daemon_sets
        .get(&namespace, &build::workload_name(&name))
        .and_then(|cached| cached.typed());
    let status = WorkloadStatus {
        selector: Some(selector_string(&build::pod_selector(&name))),
        backend: Some(target.grpc_address(&namespace)),
        ..WorkloadStatus::default()
    };
    let rollout = Rollout::of_daemon_set(set.as_ref());
    report(
        ctx,
        rover,
        rover.status.as_ref(),
        status,
        rollout,
        &problems,
    )
    .await?;
    Ok(next_look(&problems))
}

/// Why a Rover outside the allowed namespaces does not run.
fn not_allowed(namespace: &str) -> Problem {
    Problem {
        reason: "NamespaceNotAllowed",
        message: format!(
            "Rovers run only in the namespaces a cluster administrator allows (the operator's --rover-namespaces, the chart's operator.rover.namespaces), and {namespace:?} is not one: a Rover is a privileged DaemonSet with the nodes' process IDs and root filesystem, so whoever may create one is root on every node"
        ),
    }
}

/// A Rover in a namespace that is not allowed (any more): nothing of it runs, and its
/// status says why. What it made while it was allowed goes.
async fn withhold(rover: &Rover, ctx: &Context) -> Result<Action, Error> {
    let uid = rover.uid().unwrap_or_default();
    let namespace = rover.namespace().unwrap_or_default();
    let name = rover.name_any();
    let stores = &ctx.stores;
    let workload = build::workload_name(&name);
    ctx.delete_owned::<DaemonSet>(&stores.daemon_sets, &uid, &namespace, &workload)
        .await?;
    ctx.delete_owned::<k8s_openapi::api::core::v1::ServiceAccount>(
        &stores.service_accounts,
        &uid,
        &namespace,
        &workload,
    )
    .await?;
    if rover.finalizers().iter().any(|f| f == build::FINALIZER) {
        // It was allowed once: its binding goes, then the finalizer that guarded it.
        cleanup(rover, ctx).await?;
        let remaining: Vec<&String> = rover
            .finalizers()
            .iter()
            .filter(|f| *f != build::FINALIZER)
            .collect();
        let api: Api<Rover> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({"metadata": {
            "finalizers": remaining,
            "resourceVersion": rover.resource_version(),
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Apply {
                kind: "Rover",
                name: name.clone(),
                source,
            })?;
        ctx.metrics.record_write("Rover");
    }
    if rover.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let status = WorkloadStatus {
        selector: Some(selector_string(&build::pod_selector(&name))),
        ..WorkloadStatus::default()
    };
    report(
        ctx,
        rover,
        rover.status.as_ref(),
        status,
        Rollout::default(),
        &[not_allowed(&namespace)],
    )
    .await?;
    Ok(Action::requeue(super::report::RESYNC))
}

/// Deletes the Rover's ClusterRoleBinding; the namespaced objects go with their owner.
async fn cleanup(rover: &Rover, ctx: &Context) -> Result<Action, Error> {
    let name =
        build::cluster_binding_name(&rover.namespace().unwrap_or_default(), &rover.name_any());
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => ctx.metrics.record_write("ClusterRoleBinding"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(source) => {
            return Err(Error::Delete {
                kind: "ClusterRoleBinding",
                name,
                source,
            });
        }
    }
    Ok(Action::await_change())
}
