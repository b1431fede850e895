//! One watch per kind, feeding a cache and telling the right reconciler what changed.
//!
//! kube-runtime's shared streams only pass on applied objects; here every event, deletions
//! included, is routed: a generated object to the resource that controls it, a pod to every
//! pool whose upstream selector matches it (or that publishes it), a referenced resource
//! (OAPServer, Satellite, BanyanDB, ConfigMap) to the resources that refer to it.
//!
//! A route fires only after the watch's own cache has taken the change, and that cache is
//! the one the reconcilers read: a reconcile a change starts always sees that change.

use std::future::Future;

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use skylift_api::constants::labels;
use skylift_api::{BanyanDB, OAPServer, OTelCollector, Proxy, Rover, Satellite, SwAgent, UI};

use super::cache::{OwnedCache, Watched, owned_cache, scoped_api};
use super::pool::PoolResource;
use crate::build::oapserver::pod_selector as oap_pod_selector;
use crate::build::pool::UpstreamSource;
use crate::publish::matches;

/// Where reconcile requests go, one channel per controller.
#[derive(Clone)]
pub struct Triggers {
    pub oapservers: UnboundedSender<ObjectRef<OAPServer>>,
    pub satellites: UnboundedSender<ObjectRef<Satellite>>,
    pub proxies: UnboundedSender<ObjectRef<Proxy>>,
    pub uis: UnboundedSender<ObjectRef<UI>>,
    pub banyandbs: UnboundedSender<ObjectRef<BanyanDB>>,
    pub collectors: UnboundedSender<ObjectRef<OTelCollector>>,
    pub rovers: UnboundedSender<ObjectRef<Rover>>,
    pub swagents: UnboundedSender<ObjectRef<SwAgent>>,
}

impl Triggers {
    /// Asks the controller of the object's owner to look at it again.
    fn owner_of(&self, meta: &ObjectMeta) {
        use crate::build::ObjectMetaExt;
        let (Some(owner), Some(namespace)) = (meta.controller(), meta.namespace.as_deref()) else {
            return;
        };
        if !owner.api_version.starts_with(skylift_api::constants::GROUP) {
            return;
        }
        // A closed channel means the controller is shutting down; nothing to tell.
        fn send<K: kube::Resource<DynamicType = ()>>(
            to: &UnboundedSender<ObjectRef<K>>,
            name: &str,
            namespace: &str,
        ) {
            let _ = to.unbounded_send(ObjectRef::new(name).within(namespace));
        }
        let name = owner.name.as_str();
        match owner.kind.as_str() {
            "OAPServer" => send(&self.oapservers, name, namespace),
            "Satellite" => send(&self.satellites, name, namespace),
            "Proxy" => send(&self.proxies, name, namespace),
            "UI" => send(&self.uis, name, namespace),
            "BanyanDB" => send(&self.banyandbs, name, namespace),
            "OTelCollector" => send(&self.collectors, name, namespace),
            "Rover" => send(&self.rovers, name, namespace),
            "SwAgent" => send(&self.swagents, name, namespace),
            _ => {}
        }
    }
}

/// The stores reference routing reads: who refers to a changed resource.
#[derive(Clone)]
pub struct Referrers {
    pub oapservers: Store<OAPServer>,
    pub satellites: Store<Satellite>,
    pub uis: Store<UI>,
    pub collectors: Store<OTelCollector>,
    pub rovers: Store<Rover>,
    pub swagents: Store<SwAgent>,
}

/// Sends every resource of `store` in `namespace` for which `refers` holds to `to`.
fn route<K: kube::Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
    to: &UnboundedSender<ObjectRef<K>>,
    refers: impl Fn(&K) -> bool,
) {
    for resource in store.state() {
        if resource.meta().namespace.as_deref() == Some(namespace) && refers(&resource) {
            let _ = to.unbounded_send(ObjectRef::from_obj(resource.as_ref()));
        }
    }
}

fn names(reference: Option<&skylift_api::LocalRef>, name: &str) -> bool {
    reference.is_some_and(|r| r.name == name)
}

impl Referrers {
    /// An OAPServer changed: the Satellites, UIs, collectors and Rovers naming it, and the
    /// SwAgents of its namespace (whose default backend may be it).
    fn oapserver(&self, triggers: &Triggers, oap: &OAPServer) {
        let (name, ns) = (oap.name_any(), oap.namespace().unwrap_or_default());
        route(&self.satellites, &ns, &triggers.satellites, |s| {
            s.spec
                .upstream
                .oap_server_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        });
        route(&self.uis, &ns, &triggers.uis, |u| {
            names(u.spec.oap.oap_server_ref.as_ref(), &name)
        });
        route(&self.collectors, &ns, &triggers.collectors, |c| {
            names(c.spec.backend.oap_server_ref.as_ref(), &name)
        });
        route(&self.rovers, &ns, &triggers.rovers, |r| {
            names(r.spec.backend.oap_server_ref.as_ref(), &name)
        });
        route(&self.swagents, &ns, &triggers.swagents, |_| true);
    }

    /// A Satellite changed: the collectors and Rovers naming it, and the SwAgents of its
    /// namespace.
    fn satellite(&self, triggers: &Triggers, sat: &Satellite) {
        let (name, ns) = (sat.name_any(), sat.namespace().unwrap_or_default());
        route(&self.collectors, &ns, &triggers.collectors, |c| {
            names(c.spec.backend.satellite_ref.as_ref(), &name)
        });
        route(&self.rovers, &ns, &triggers.rovers, |r| {
            names(r.spec.backend.satellite_ref.as_ref(), &name)
        });
        route(&self.swagents, &ns, &triggers.swagents, |_| true);
    }

    /// A BanyanDB changed (its address is in its status): the OAPServers storing in it.
    fn banyandb(&self, triggers: &Triggers, db: &BanyanDB) {
        let (name, ns) = (db.name_any(), db.namespace().unwrap_or_default());
        route(&self.oapservers, &ns, &triggers.oapservers, |o| {
            names(
                o.spec
                    .storage
                    .as_ref()
                    .and_then(|s| s.banyandb_ref.as_ref()),
                &name,
            )
        });
    }

    /// A ConfigMap changed: the OAPServers mounting it and the collectors configured by it.
    fn config_map(&self, triggers: &Triggers, config_map: &ConfigMap) {
        let (name, ns) = (
            config_map.name_any(),
            config_map.namespace().unwrap_or_default(),
        );
        route(&self.oapservers, &ns, &triggers.oapservers, |o| {
            o.spec.config.iter().any(|c| c.config_map_name == name)
        });
        route(&self.collectors, &ns, &triggers.collectors, |c| {
            c.spec
                .config_map_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        });
    }
}

/// A watch task, run until the operator stops.
pub type WatchTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The caches of the resources others refer to, which the reconcilers read.
pub struct Referenced {
    pub oapservers: Store<OAPServer>,
    pub satellites: Store<Satellite>,
    pub banyandbs: Store<BanyanDB>,
    /// ConfigMaps, keys and a content hash only ([`crate::controller::sources`]).
    pub config_maps: Store<ConfigMap>,
}

/// Watches the resources others refer to into the caches reconcilers read, and routes
/// each change to the referrers once it is in the cache.
pub fn watch_references(
    client: &kube::Client,
    namespace: Option<&str>,
    referrers: Referrers,
    triggers: Triggers,
) -> (Referenced, Vec<WatchTask>) {
    let mut tasks: Vec<WatchTask> = Vec::new();
    let (r, t) = (referrers.clone(), triggers.clone());
    let (oapservers, task) = cached_and_routed(
        scoped_api::<OAPServer>(client, namespace),
        |_| {},
        move |o| r.oapserver(&t, o),
    );
    tasks.push(Box::pin(task));
    let (r, t) = (referrers.clone(), triggers.clone());
    let (satellites, task) = cached_and_routed(
        scoped_api::<Satellite>(client, namespace),
        |_| {},
        move |s| r.satellite(&t, s),
    );
    tasks.push(Box::pin(task));
    let (r, t) = (referrers.clone(), triggers.clone());
    let (banyandbs, task) = cached_and_routed(
        scoped_api::<BanyanDB>(client, namespace),
        |_| {},
        move |d| r.banyandb(&t, d),
    );
    tasks.push(Box::pin(task));
    let (config_maps, task) = cached_and_routed(
        scoped_api::<ConfigMap>(client, namespace),
        crate::controller::sources::prune,
        move |c| referrers.config_map(&triggers, c),
    );
    tasks.push(Box::pin(task));
    (
        Referenced {
            oapservers,
            satellites,
            banyandbs,
            config_maps,
        },
        tasks,
    )
}

/// A cache of one kind (each object passed through `modify` first) and a task that fills it
/// and then hands every applied or deleted object to `on_change`.
fn cached_and_routed<K>(
    api: Api<K>,
    modify: impl FnMut(&mut K) + Send + 'static,
    on_change: impl Fn(&K) + Send + 'static,
) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(modify);
    let task = reflector::reflector(writer, stream).for_each(move |event| {
        if let Ok(event) = event {
            for_each_object(&event, &on_change);
        }
        future::ready(())
    });
    (reader, task)
}

/// The list/watch settings for objects the operator generated.
pub fn managed_objects() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ))
}

/// Caches generated objects of one kind and routes their changes to their owners.
pub fn watch_owned<K>(
    api: Api<K>,
    triggers: Triggers,
) -> (OwnedCache, impl Future<Output = ()> + Send)
where
    K: Watched,
{
    owned_cache(api, managed_objects(), move |obj: &K| {
        triggers.owner_of(obj.meta())
    })
}

/// Caches pods (only the fields endpoint publication reads) and routes their changes to the
/// pools they are, or were, upstreams of.
pub fn watch_pods(
    api: Api<Pod>,
    satellites: Store<Satellite>,
    proxies: Store<Proxy>,
    triggers: Triggers,
) -> (Store<Pod>, impl Future<Output = ()> + Send) {
    use crate::build::inject::INJECTED_ANNOTATION;
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(prune_pod);
    let task = reflector::reflector(writer, stream).for_each(move |event| {
        if let Ok(event) = event {
            for_each_object(&event, |pod: &Pod| {
                for pool in pools_of_pod(&satellites, pod) {
                    let _ = triggers.satellites.unbounded_send(pool);
                }
                for pool in pools_of_pod(&proxies, pod) {
                    let _ = triggers.proxies.unbounded_send(pool);
                }
                // An injected pod counts towards its SwAgent's status.
                let injected_by = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(INJECTED_ANNOTATION));
                if let (Some(agent), Some(ns)) = (injected_by, pod.metadata.namespace.as_deref()) {
                    let _ = triggers
                        .swagents
                        .unbounded_send(ObjectRef::new(agent).within(ns));
                }
            });
        }
        future::ready(())
    });
    (reader, task)
}

fn for_each_object<K>(event: &watcher::Event<K>, mut f: impl FnMut(&K)) {
    match event {
        watcher::Event::Apply(obj)
        | watcher::Event::Delete(obj)
        | watcher::Event::InitApply(obj) => f(obj),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// The pools in the pod's namespace whose upstream selector matches the pod, or whose
/// published list names it (a pod relabelled out of a pool must leave it).
pub fn pools_of_pod<K: PoolResource>(pools: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    let namespace = pod.metadata.namespace.as_deref();
    let pod_name = pod.metadata.name.as_deref();
    pools
        .state()
        .into_iter()
        .filter(|pool| pool.meta().namespace.as_deref() == namespace)
        .filter(|pool| {
            let selected = match pool.upstream() {
                UpstreamSource::OapServer(name) => matches(pod, &oap_pod_selector(&name)),
                UpstreamSource::Selector { labels, .. } => matches(pod, &labels),
                UpstreamSource::Addresses(_) => false,
            };
            let published = pool
                .pool_status()
                .is_some_and(|s| s.upstreams.iter().any(|u| u.pod.as_deref() == pod_name));
            selected || published
        })
        .map(|pool| ObjectRef::from_obj(pool.as_ref()))
        .collect()
}

/// Keeps only what endpoint publication reads, so a cluster's pods cost little memory.
fn prune_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.generate_name = None;
    if let Some(annotations) = &mut pod.metadata.annotations {
        annotations.retain(|k, _| {
            k == labels::WEIGHT_ANNOTATION
                || k == labels::DRAINING_ANNOTATION
                || k == crate::build::inject::INJECTED_ANNOTATION
        });
    }
    pod.spec = None;
    if let Some(status) = &mut pod.status {
        let conditions = status
            .conditions
            .take()
            .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect());
        *status = k8s_openapi::api::core::v1::PodStatus {
            pod_ip: status.pod_ip.take(),
            conditions,
            ..Default::default()
        };
    }
}
