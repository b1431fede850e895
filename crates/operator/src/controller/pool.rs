//! Reconciling a `Satellite` or `Proxy` pool: resolve its upstream endpoints, apply its
//! objects (publishing the endpoints), and report its status.

use std::sync::Arc;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use skylift_api::constants::ports;
use skylift_api::pool::{HpaStatus, PoolStatus};
use skylift_api::{Proxy, Satellite, UpstreamEndpoints};

use super::cache::Watched;
use super::report::{
    next_look, now, publish, publish_changes, publish_problems, sort_results, write_status,
};
use super::{Context, Error};
use crate::build::oapserver::pod_selector as oap_pod_selector;
use crate::build::pool::{PoolView, UpstreamSource, build, proxy_upstream, satellite_upstream};
use crate::build::selector_string;
use crate::publish::{pod_endpoints, static_endpoints};
use crate::status::{Observed, Problem, conditions};

/// A resource that runs a skylift-proxy pool.
pub trait PoolResource: Watched + Resource<Scope = NamespaceResourceScope> {
    const KIND: &'static str;
    /// The pool, running `default_image` unless the resource names one.
    fn view(&self, default_image: &str) -> PoolView;
    /// Just the upstream source (cheaper than the whole view, for routing pod events).
    fn upstream(&self) -> UpstreamSource;
    fn pool_status(&self) -> Option<&PoolStatus>;
}

impl PoolResource for Satellite {
    const KIND: &'static str = "Satellite";
    fn view(&self, default_image: &str) -> PoolView {
        PoolView::of_satellite(self, default_image)
    }
    fn upstream(&self) -> UpstreamSource {
        satellite_upstream(self)
    }
    fn pool_status(&self) -> Option<&PoolStatus> {
        self.status.as_ref()
    }
}

impl PoolResource for Proxy {
    const KIND: &'static str = "Proxy";
    fn view(&self, default_image: &str) -> PoolView {
        PoolView::of_proxy(self, default_image)
    }
    fn upstream(&self) -> UpstreamSource {
        proxy_upstream(self)
    }
    fn pool_status(&self) -> Option<&PoolStatus> {
        self.status.as_ref()
    }
}

/// The endpoints a pool should publish now, or why it cannot know them.
pub(crate) fn resolve_endpoints(
    ctx: &Context,
    view: &PoolView,
) -> (UpstreamEndpoints, Option<Problem>) {
    let pods = ctx.stores.pods.state();
    let pods = pods.iter().map(|p| p.as_ref());
    match &view.upstream {
        UpstreamSource::Addresses(addresses) => (static_endpoints(addresses), None),
        UpstreamSource::Selector { labels, port } => {
            (pod_endpoints(pods, &view.namespace, labels, *port), None)
        }
        UpstreamSource::OapServer(name) => {
            let found = ctx
                .stores
                .oapservers
                .get(&ObjectRef::new(name).within(&view.namespace))
                .is_some();
            let endpoints =
                pod_endpoints(pods, &view.namespace, &oap_pod_selector(name), ports::GRPC);
            let problem = (!found).then(|| Problem {
                reason: "OAPServerNotFound",
                message: format!(
                    "OAPServer {name:?} does not exist in namespace {:?}; create it or fix spec.upstream.oapServerRef.name (the pool picks it up as soon as it exists)",
                    view.namespace
                ),
            });
            (endpoints, problem)
        }
    }
}

pub async fn reconcile<K: PoolResource>(pool: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(K::KIND);
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = pool.uid().unwrap_or_default();
    let view = pool.view(&ctx.proxy_image);
    let (endpoints, upstream_problem) = resolve_endpoints(&ctx, &view);
    let objects = build(pool.as_ref(), &view, &endpoints);
    let stores = &ctx.stores;
    let namespace = view.namespace.clone();
    let workload = view.workload_name();

    let mut problems: Vec<Problem> = upstream_problem.into_iter().collect();
    let mut changes = Vec::new();
    let hpa = objects.hpa.clone();
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
            "ConfigMap",
            ctx.apply(&stores.config_maps, &uid, objects.config_map)
                .await,
        ),
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.service).await,
        ),
        (
            "Deployment",
            ctx.apply(&stores.deployments, &uid, objects.deployment)
                .await,
        ),
        (
            "HorizontalPodAutoscaler",
            ctx.apply_or_remove(&stores.hpas, &uid, (&namespace, &workload), hpa)
                .await,
        ),
    ];
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(&ctx, pool.as_ref(), &changes).await;

    let previous = pool.pool_status().cloned().unwrap_or_default();
    if previous.upstreams != endpoints.endpoints && pool.pool_status().is_some() {
        let addresses: Vec<String> = endpoints
            .endpoints
            .iter()
            .map(|e| {
                if e.draining {
                    format!("{} (draining)", e.address)
                } else {
                    e.address.clone()
                }
            })
            .collect();
        publish(
            &ctx,
            pool.as_ref(),
            EventType::Normal,
            "UpstreamsChanged",
            format!(
                "{} upstream endpoints: {}",
                addresses.len(),
                addresses.join(", ")
            ),
        )
        .await;
    }
    publish_problems(&ctx, pool.as_ref(), &previous.conditions, &problems).await;

    // Draining endpoints take no new work: they do not count as upstreams.
    let serving = endpoints.endpoints.iter().filter(|e| !e.draining).count();
    let rollout = stores.deployment_rollout(&namespace, &workload, view.replicas);
    let hpa = view.autoscaling.as_ref().map(|_| {
        let current: Option<HorizontalPodAutoscaler> = stores
            .hpas
            .get(&namespace, &workload)
            .and_then(|cached| cached.typed());
        hpa_status(&workload, current.as_ref())
    });
    let conditions = conditions(
        &previous.conditions,
        &Observed {
            generation: pool.meta().generation,
            rollout,
            upstreams: Some(serving),
            problems: &problems,
        },
        now(),
    );
    let status = PoolStatus {
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        selector: Some(selector_string(&view.pod_selector())),
        address: Some(view.address()),
        upstream_count: i32::try_from(serving).unwrap_or(i32::MAX),
        upstreams: endpoints.endpoints,
        hpa,
        conditions,
        observed_generation: pool.meta().generation,
    };
    if pool.pool_status() != Some(&status) {
        write_status::<K>(&ctx, &pool.name_any(), &namespace, json!(status)).await?;
    }
    Ok(next_look(&problems))
}

fn hpa_status(name: &str, hpa: Option<&HorizontalPodAutoscaler>) -> HpaStatus {
    let status = hpa.and_then(|h| h.status.clone()).unwrap_or_default();
    let current_value = status
        .current_metrics
        .iter()
        .flatten()
        .filter_map(|m| m.external.as_ref())
        .find_map(|e| {
            e.current
                .value
                .clone()
                .or_else(|| e.current.average_value.clone())
        })
        .map(|q| q.0);
    HpaStatus {
        name: name.into(),
        current_replicas: status.current_replicas.unwrap_or(0),
        desired_replicas: status.desired_replicas,
        current_value,
        last_scale_time: status.last_scale_time,
    }
}
