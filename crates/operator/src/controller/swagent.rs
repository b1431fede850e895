//! A `SwAgent`'s status: how many pods of its namespace run with its agent, and where
//! they report. Injection itself is the admission webhook's ([`crate::webhook`]).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skylift_api::common::condition;
use skylift_api::{OAPServer, Satellite, SwAgent, SwAgentStatus};

use super::cache::names_in;
use super::report::{RESYNC, now, write_status};
use super::workload::missing_backend;
use super::{Context, Error};
use crate::build::backend::BackendTarget;
use crate::build::inject::{INJECTED_ANNOTATION, default_backend};
use crate::status::Problem;

/// Where agents of `namespace` report when nothing names a backend: its Satellite (the
/// first by name), else its OAPServer.
pub fn default_backend_in(
    satellites: &Store<Satellite>,
    oapservers: &Store<OAPServer>,
    namespace: &str,
) -> Option<String> {
    default_backend(
        namespace,
        &names_in(satellites, namespace),
        &names_in(oapservers, namespace),
    )
}

/// Where the SwAgent's agents report, or why that cannot be known.
pub fn resolve_backend(ctx: &Context, agent: &SwAgent) -> Result<String, Problem> {
    let namespace = agent.namespace().unwrap_or_default();
    match &agent.spec.backend {
        Some(backend) => {
            let target = BackendTarget::of(backend);
            match missing_backend(ctx, &namespace, &target, "spec.backend") {
                Some(problem) => Err(problem),
                None => Ok(target.grpc_address(&namespace)),
            }
        }
        None => default_backend_in(&ctx.stores.satellites, &ctx.stores.oapservers, &namespace)
        .ok_or_else(|| Problem {
            reason: "NoBackend",
            message: format!(
                "spec.backend is unset and namespace {namespace:?} has no Satellite or OAPServer; pods are admitted without the agent until one exists"
            ),
        }),
    }
}

pub async fn reconcile(agent: Arc<SwAgent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("SwAgent");
    if agent.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = agent.namespace().unwrap_or_default();
    let name = agent.name_any();
    let injected = ctx
        .stores
        .pods
        .state()
        .iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|pod| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INJECTED_ANNOTATION))
                == Some(&name)
        })
        .count();
    let backend = resolve_backend(&ctx, &agent);
    let previous = agent.status.clone().unwrap_or_default();
    let (status, reason, message) = match &backend {
        Ok(address) => (
            "True",
            "BackendResolved",
            format!("pods it selects get the agent, reporting to {address}"),
        ),
        Err(problem) => ("False", problem.reason, problem.message.clone()),
    };
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    let next = SwAgentStatus {
        injected_pods: i32::try_from(injected).unwrap_or(i32::MAX),
        backend: backend.ok(),
        conditions: vec![Condition {
            type_: condition::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: agent.metadata.generation,
            last_transition_time,
        }],
        observed_generation: agent.metadata.generation,
    };
    if agent.status.as_ref() != Some(&next) {
        write_status::<SwAgent>(&ctx, &name, &namespace, json!(next)).await?;
    }
    Ok(Action::requeue(RESYNC))
}
