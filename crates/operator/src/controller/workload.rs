//! What the reconcilers of the components (UI, BanyanDB, OTelCollector, Rover) share:
//! checking the resources they refer to, and writing their `WorkloadStatus`.

use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skylift_api::WorkloadStatus;

use super::report::{now, publish_problems, write_status};
use super::{Context, Error};
use crate::build::backend::BackendTarget;
use crate::status::{Observed, Problem, Rollout, conditions};

/// Why a reference cannot be followed yet, if it cannot. `field` names the spec field.
pub(crate) fn missing_backend(
    ctx: &Context,
    namespace: &str,
    target: &BackendTarget,
    field: &str,
) -> Option<Problem> {
    let (kind, name, found) = match target {
        BackendTarget::OapServer(name) => (
            "OAPServer",
            name,
            ctx.stores
                .oapservers
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        ),
        BackendTarget::Satellite(name) => (
            "Satellite",
            name,
            ctx.stores
                .satellites
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        ),
        BackendTarget::Address(_) => return None,
    };
    (!found).then(|| Problem {
        reason: if kind == "OAPServer" {
            "OAPServerNotFound"
        } else {
            "SatelliteNotFound"
        },
        message: format!(
            "{kind} {name:?} does not exist in namespace {namespace:?}; create it or fix {field} (picked up as soon as it exists)"
        ),
    })
}

/// Completes `status` with conditions from the rollout and problems, and writes it when
/// it changed.
pub(crate) async fn report<K>(
    ctx: &Context,
    resource: &K,
    previous: Option<&WorkloadStatus>,
    mut status: WorkloadStatus,
    rollout: Rollout,
    problems: &[Problem],
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let generation = resource.meta().generation;
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    publish_problems(ctx, resource, previous_conditions, problems).await;
    status.replicas = rollout.replicas;
    status.ready_replicas = rollout.ready;
    status.observed_generation = generation;
    status.conditions = conditions(
        previous
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default(),
        &Observed {
            generation,
            rollout,
            upstreams: None,
            problems,
        },
        now(),
    );
    if previous != Some(&status) {
        write_status::<K>(
            ctx,
            &resource.name_any(),
            &resource.namespace().unwrap_or_default(),
            json!(status),
        )
        .await?;
    }
    Ok(())
}
