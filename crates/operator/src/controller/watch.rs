//! One watch per kind, feeding a cache and telling the right reconciler what changed.
//!
//! kube-runtime's shared streams only pass on applied objects; here every event, deletions
//! included, is routed: a generated object to the resource that controls it, a pod to every
//! pool whose upstream selector matches it (or that publishes it), an OAPServer to the
//! Satellites that refer to it.

use std::future::Future;

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use skylift_api::constants::labels;
use skylift_api::{OAPServer, Proxy, Satellite};

use super::cache::{OwnedCache, Watched, owned_cache};
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
        match owner.kind.as_str() {
            "OAPServer" => {
                let _ = self
                    .oapservers
                    .unbounded_send(ObjectRef::new(&owner.name).within(namespace));
            }
            "Satellite" => {
                let _ = self
                    .satellites
                    .unbounded_send(ObjectRef::new(&owner.name).within(namespace));
            }
            "Proxy" => {
                let _ = self
                    .proxies
                    .unbounded_send(ObjectRef::new(&owner.name).within(namespace));
            }
            _ => {}
        }
    }
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
            });
        }
        future::ready(())
    });
    (reader, task)
}

/// Routes OAPServer changes to the Satellites that name it (a Satellite waiting for a
/// missing OAPServer recovers as soon as it is created).
pub fn watch_oapserver_references(
    api: Api<OAPServer>,
    satellites: Store<Satellite>,
    triggers: Triggers,
) -> impl Future<Output = ()> + Send {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .for_each(move |event| {
            if let Ok(event) = event {
                for_each_object(&event, |oap: &OAPServer| {
                    let (name, namespace) = (oap.name_any(), oap.namespace().unwrap_or_default());
                    for sat in satellites.state() {
                        let refers = sat
                            .spec
                            .upstream
                            .oap_server_ref
                            .as_ref()
                            .is_some_and(|r| r.name == name);
                        if refers && sat.namespace().as_deref() == Some(namespace.as_str()) {
                            let _ = triggers
                                .satellites
                                .unbounded_send(ObjectRef::from_obj(sat.as_ref()));
                        }
                    }
                });
            }
            future::ready(())
        })
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
        annotations
            .retain(|k, _| k == labels::WEIGHT_ANNOTATION || k == labels::DRAINING_ANNOTATION);
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
