//! Reconciling an `OAPServer`: apply its objects, then report its status.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skylift_api::{OAPServer, OAPServerStatus};

use super::report::{
    next_look, now, publish_changes, publish_problems, sort_results, write_status,
};
use super::sources::lookup;
use super::{Applied, Context, Error};
use crate::build::oapserver::OapInputs;
use crate::build::{oapserver as build, selector_string};
use crate::status::{Observed, Problem, conditions};

/// Whether OAP's storage is ready for OAP's first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    /// Not a BanyanDB of this namespace, or one that answers.
    Ready,
    /// A BanyanDB with no address yet: OAP cannot be configured.
    NoAddress,
    /// A BanyanDB with an address but no ready replica: OAP would fail against it.
    NotReady,
}

/// What the OAPServer's objects are built from besides its spec: the targets of its
/// BanyanDB, and the ConfigMaps its `config` names. Each one missing is a problem.
fn inputs(oap: &OAPServer, ctx: &Context) -> (OapInputs, Storage, Vec<Problem>) {
    let namespace = oap.namespace().unwrap_or_default();
    let mut inputs = OapInputs::default();
    let mut storage = Storage::Ready;
    let mut problems = Vec::new();
    if let Some(reference) = oap
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.banyandb_ref.as_ref())
    {
        let db = ctx
            .stores
            .banyandbs
            .get(&ObjectRef::new(&reference.name).within(&namespace));
        inputs.banyandb_targets = db
            .as_ref()
            .and_then(|db| db.status.as_ref()?.address.as_ref())
            .map(|address| address.grpc.clone());
        let ready = db
            .as_ref()
            .and_then(|db| db.status.as_ref())
            .is_some_and(|status| status.ready_replicas > 0);
        if inputs.banyandb_targets.is_none() {
            storage = Storage::NoAddress;
            problems.push(Problem {
                reason: "BanyanDBNotFound",
                message: format!(
                    "BanyanDB {:?} {} in namespace {namespace:?}; OAP starts once it has an address (fix spec.storage.banyanDBRef.name if it is wrong)",
                    reference.name,
                    if db.is_some() { "has no address yet" } else { "does not exist" }
                ),
            });
        } else if !ready {
            storage = Storage::NotReady;
        }
    }
    for wanted in &oap.spec.config {
        match lookup(&ctx.stores.config_sources, &namespace, &wanted.config_map_name) {
            Some(source) => {
                inputs
                    .config_maps
                    .insert(wanted.config_map_name.clone(), source);
            }
            None => problems.push(Problem {
                reason: "ConfigMapNotFound",
                message: format!(
                    "ConfigMap {:?} of spec.config does not exist in namespace {namespace:?}; its files are mounted once it does",
                    wanted.config_map_name
                ),
            }),
        }
    }
    (inputs, storage, problems)
}

pub async fn reconcile(oap: Arc<OAPServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("OAPServer");
    if oap.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = oap.uid().unwrap_or_default();
    let namespace = oap.namespace().unwrap_or_default();
    let (inputs, storage, mut problems) = inputs(&oap, &ctx);
    let objects = build::build(&oap, &inputs);
    let stores = &ctx.stores;
    let deployment_name = objects.deployment.name_any();
    // OAP is not started against storage it cannot use: without the BanyanDB's address
    // there is nothing to configure, and before its first ready replica OAP would fail and
    // restart until it answers. Once OAP runs, a BanyanDB restart does not hold it back.
    let started = stores
        .deployments
        .get(&namespace, &deployment_name)
        .is_some();
    let hold_back = match storage {
        Storage::Ready => false,
        Storage::NoAddress => true,
        Storage::NotReady => !started,
    };
    if hold_back && storage == Storage::NotReady {
        let name = oap
            .spec
            .storage
            .as_ref()
            .and_then(|s| s.banyandb_ref.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_default();
        problems.push(Problem {
            reason: "BanyanDBNotReady",
            message: format!(
                "BanyanDB {name:?} has no ready replica yet; OAP starts once it has one"
            ),
        });
    }
    let dynamic_config_name = build::dynamic_config_name(&oap.name_any());
    let dynamic_config = ctx
        .apply_or_remove(
            &stores.config_maps,
            &uid,
            (&namespace, &dynamic_config_name),
            objects.dynamic_config,
        )
        .await;

    let mut changes = Vec::new();
    let results = [
        ("ConfigMap", dynamic_config),
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
            if hold_back {
                Ok(Applied::Unchanged)
            } else {
                ctx.apply(&stores.deployments, &uid, objects.deployment)
                    .await
            },
        ),
    ];
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(&ctx, oap.as_ref(), &changes).await;

    let rollout = stores.deployment_rollout(
        &oap.namespace().unwrap_or_default(),
        &deployment_name,
        oap.spec.replicas,
    );
    let previous = oap.status.clone().unwrap_or_default();
    publish_problems(&ctx, oap.as_ref(), &previous.conditions, &problems).await;
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
    Ok(next_look(&problems))
}
