//! Starting the operator: caches, routing, controllers.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use skylift_api::{BanyanDB, OAPServer, OTelCollector, Proxy, Rover, Satellite, SwAgent, UI};

use crate::controller::cache::scoped_api;
use crate::controller::pool as pool_controller;
use crate::controller::ui as ui_controller_fn;
use crate::controller::watch::{Referrers, Triggers, watch_owned, watch_pods, watch_references};
use crate::controller::{
    Context, Error, FailureKey, ReportedFailures, Stores, banyandb, collector, oapserver, rover,
    swagent,
};
use crate::metrics::Metrics;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Only watch this namespace (None: all namespaces).
    pub namespace: Option<String>,
    /// Reconciles run at once per kind.
    pub concurrency: u16,
    /// Name reported on Events.
    pub instance: String,
    /// The image Satellites and Proxies run unless `spec.image` is set.
    pub proxy_image: String,
    /// The ClusterRole each Rover's ServiceAccount is bound to; empty: Rovers are not
    /// managed (an operator without cluster-wide RBAC).
    pub rover_cluster_role: String,
    /// The namespaces Rovers may run in (a Rover is root on every node); elsewhere a Rover
    /// is reported `NamespaceNotAllowed`. None by default.
    pub rover_namespaces: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: None,
            concurrency: 16,
            instance: "skylift-operator".into(),
            proxy_image: skylift_api::constants::default_proxy_image(),
            rover_cluster_role: crate::build::rover::DEFAULT_CLUSTER_ROLE.into(),
            rover_namespaces: Vec::new(),
        }
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.as_deref();
    let (oap_tx, oap_rx) = mpsc::unbounded();
    let (sat_tx, sat_rx) = mpsc::unbounded();
    let (proxy_tx, proxy_rx) = mpsc::unbounded();
    let (ui_tx, ui_rx) = mpsc::unbounded();
    let (db_tx, db_rx) = mpsc::unbounded();
    let (collector_tx, collector_rx) = mpsc::unbounded();
    let (rover_tx, rover_rx) = mpsc::unbounded();
    let (agent_tx, agent_rx) = mpsc::unbounded();
    let triggers = Triggers {
        oapservers: oap_tx,
        satellites: sat_tx,
        proxies: proxy_tx,
        uis: ui_tx,
        banyandbs: db_tx,
        collectors: collector_tx,
        rovers: rover_tx,
        swagents: agent_tx,
    };
    let config = controller::Config::default().concurrency(settings.concurrency);
    let shutdown = shutdown.shared();

    let oap_controller = Controller::new(
        scoped_api::<OAPServer>(&client, ns),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .reconcile_on(oap_rx)
    .graceful_shutdown_on(shutdown.clone());
    let sat_controller = Controller::new(
        scoped_api::<Satellite>(&client, ns),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .reconcile_on(sat_rx)
    .graceful_shutdown_on(shutdown.clone());
    let proxy_controller =
        Controller::new(scoped_api::<Proxy>(&client, ns), watcher::Config::default())
            .with_config(config.clone())
            .reconcile_on(proxy_rx)
            .graceful_shutdown_on(shutdown.clone());
    macro_rules! controller {
        ($kind:ty, $rx:expr) => {
            Controller::new(scoped_api::<$kind>(&client, ns), watcher::Config::default())
                .with_config(config.clone())
                .reconcile_on($rx)
                .graceful_shutdown_on(shutdown.clone())
        };
    }
    let ui_controller = controller!(UI, ui_rx);
    let db_controller = controller!(BanyanDB, db_rx);
    let collector_controller = controller!(OTelCollector, collector_rx);
    let rover_controller = controller!(Rover, rover_rx);
    let agent_controller = controller!(SwAgent, agent_rx);

    let mut tasks = Vec::new();
    macro_rules! owned {
        ($kind:ty) => {{
            let (store, task) = watch_owned(scoped_api::<$kind>(&client, ns), triggers.clone());
            tasks.push(tokio::spawn(task));
            store
        }};
    }
    let deployments = owned!(Deployment);
    let stateful_sets = owned!(StatefulSet);
    let daemon_sets = owned!(DaemonSet);
    let ingresses = owned!(Ingress);
    // Rovers run only where allowed, and only with a ClusterRole to bind them to.
    let rover_namespaces = if settings.rover_cluster_role.is_empty() {
        Vec::new()
    } else {
        settings.rover_namespaces.clone()
    };
    // Cluster-scoped, so watched across the cluster even when the operator watches one
    // namespace (only Rovers make them).
    let cluster_role_bindings = if !rover_namespaces.is_empty() {
        let (cache, task) = watch_owned(
            Api::<ClusterRoleBinding>::all(client.clone()),
            triggers.clone(),
        );
        tasks.push(tokio::spawn(task));
        cache
    } else {
        crate::controller::cache::OwnedCache::empty()
    };
    let services = owned!(Service);
    let service_accounts = owned!(ServiceAccount);
    let roles = owned!(Role);
    let role_bindings = owned!(RoleBinding);
    let config_maps = owned!(ConfigMap);
    let hpas = owned!(HorizontalPodAutoscaler);
    let (pods, pod_task) = watch_pods(
        scoped_api::<Pod>(&client, ns),
        sat_controller.store(),
        proxy_controller.store(),
        triggers.clone(),
    );
    tasks.push(tokio::spawn(pod_task));
    let (referenced, reference_tasks) = watch_references(
        &client,
        ns,
        Referrers {
            oapservers: oap_controller.store(),
            satellites: sat_controller.store(),
            uis: ui_controller.store(),
            collectors: collector_controller.store(),
            rovers: rover_controller.store(),
            swagents: agent_controller.store(),
        },
        triggers.clone(),
    );
    tasks.extend(reference_tasks.into_iter().map(tokio::spawn));

    let stores = Stores {
        // The caches reference routing fills before it routes: a reconcile started by a
        // change to one of these reads that change.
        oapservers: referenced.oapservers,
        satellites: referenced.satellites,
        proxies: proxy_controller.store(),
        uis: ui_controller.store(),
        banyandbs: referenced.banyandbs,
        collectors: collector_controller.store(),
        rovers: rover_controller.store(),
        swagents: agent_controller.store(),
        pods,
        config_sources: referenced.config_maps,
        deployments,
        stateful_sets,
        daemon_sets,
        ingresses,
        cluster_role_bindings,
        services,
        service_accounts,
        roles,
        role_bindings,
        config_maps,
        hpas,
    };
    // Reconciling before the caches are filled would re-apply objects that already exist.
    let owned_ready = {
        let s = stores.clone();
        async move {
            let _ = futures::join!(
                s.deployments.wait_until_ready(),
                s.stateful_sets.wait_until_ready(),
                s.daemon_sets.wait_until_ready(),
                s.ingresses.wait_until_ready(),
                s.cluster_role_bindings.wait_until_ready(),
                s.config_sources.wait_until_ready(),
                s.oapservers.wait_until_ready(),
                s.satellites.wait_until_ready(),
                s.banyandbs.wait_until_ready(),
                s.services.wait_until_ready(),
                s.service_accounts.wait_until_ready(),
                s.roles.wait_until_ready(),
                s.role_bindings.wait_until_ready(),
                s.config_maps.wait_until_ready(),
                s.hpas.wait_until_ready(),
                s.pods.wait_until_ready(),
            );
        }
    };
    tokio::select! {
        _ = owned_ready => {}
        _ = shutdown.clone() => return,
    }
    metrics.set_ready();
    tracing::info!("caches filled; reconciling");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "skylift-operator".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let context = Arc::new(Context {
        proxy_image: settings.proxy_image.clone(),
        rover_cluster_role: settings.rover_cluster_role.clone(),
        rover_namespaces,
        client,
        stores,
        metrics: metrics.clone(),
        recorder,
        failures: ReportedFailures::default(),
    });

    // A reconcile that succeeds forgets the failure reported for its resource.
    macro_rules! drive {
        ($controller:expr, $kind:ty, $reconcile:path) => {
            $controller
                .run($reconcile, error_policy::<$kind>, context.clone())
                .for_each(|result| {
                    if let Ok((object, _)) = &result {
                        context.failures.forget(&failure_key::<$kind>(
                            object.namespace.as_deref(),
                            &object.name,
                        ));
                    }
                    futures::future::ready(())
                })
        };
    }
    let oap = drive!(oap_controller, OAPServer, oapserver::reconcile);
    let sat = drive!(
        sat_controller,
        Satellite,
        pool_controller::reconcile::<Satellite>
    );
    let proxy = drive!(proxy_controller, Proxy, pool_controller::reconcile::<Proxy>);
    let ui = drive!(ui_controller, UI, ui_controller_fn::reconcile);
    let db = drive!(db_controller, BanyanDB, banyandb::reconcile);
    let collector = drive!(collector_controller, OTelCollector, collector::reconcile);
    // Always driven: a Rover the operator may not run is still told why.
    let rover = drive!(rover_controller, Rover, rover::reconcile);
    let agent = drive!(agent_controller, SwAgent, swagent::reconcile);
    futures::join!(oap, sat, proxy, ui, db, collector, rover, agent);
    for task in tasks {
        task.abort();
    }
}

/// Failed reconciles are retried after a pause, counted by reason, and reported in the
/// resource's status and Events (not only in the log).
fn error_policy<K>(resource: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&());
    ctx.metrics.record_error(&kind, error.category());
    tracing::warn!(%kind, name = %resource.name_any(), namespace = ?resource.namespace(), error = %error, "reconcile failed");
    let (reason, message) = (error.category(), error.explain());
    let key = failure_key::<K>(resource.namespace().as_deref(), &resource.name_any());
    if !ctx.failures.is_new(key, reason, &message) {
        return Action::requeue(Duration::from_secs(5));
    }
    tokio::spawn(async move {
        crate::controller::report_failure(&ctx, resource.as_ref(), reason, &message).await;
    });
    Action::requeue(Duration::from_secs(5))
}

/// How a resource is known to [`ReportedFailures`].
fn failure_key<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> FailureKey {
    (
        K::kind(&()).into_owned(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}
