//! A cache of the objects the operator generated, kept as their JSON text.
//!
//! The operator never reads a generated object field by field: it compares it with what it
//! would apply, and reads a few status numbers. Text is several times smaller than typed
//! objects (whose maps and optional fields each allocate), which keeps the operator's memory
//! flat as the number of resources grows.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, RwLock};

use futures::{StreamExt, future};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

/// The controller owner reference of a cached object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// One cached object.
#[derive(Clone, Debug)]
pub struct CachedObject {
    pub controller: Option<Controller>,
    json: Arc<str>,
}

impl Controller {
    /// The controller owner reference in `meta`, if any.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Self> {
        meta.owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| Controller {
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            })
    }
}

impl CachedObject {
    fn of<K: Resource + Serialize>(object: &K) -> Self {
        let controller = Controller::of(object.meta());
        let mut value = serde_json::to_value(object).expect("Kubernetes objects serialize to JSON");
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            // Bookkeeping the comparison never looks at.
            for field in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "selfLink",
            ] {
                meta.remove(field);
            }
        }
        CachedObject {
            controller,
            json: value.to_string().into(),
        }
    }

    /// The object as JSON.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).expect("the cache holds valid JSON")
    }

    /// The object typed, for reading its status.
    pub fn typed<K: DeserializeOwned>(&self) -> Option<K> {
        serde_json::from_str(&self.json).ok()
    }
}

type Key = (String, String);

/// Generated objects of one kind, by namespace and name.
#[derive(Clone)]
pub struct OwnedCache {
    objects: Arc<RwLock<HashMap<Key, CachedObject>>>,
    ready: watch::Receiver<bool>,
}

impl OwnedCache {
    pub fn get(&self, namespace: &str, name: &str) -> Option<CachedObject> {
        self.objects
            .read()
            .expect("cache lock is never poisoned")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// A cache that stays empty, for a kind the operator is told not to manage.
    pub fn empty() -> Self {
        let (_, ready) = watch::channel(true);
        OwnedCache {
            objects: Arc::default(),
            ready,
        }
    }

    pub fn len(&self) -> usize {
        self.objects
            .read()
            .expect("cache lock is never poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first full list has been loaded.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// The API of a namespaced kind in `namespace`, or across every namespace (`None`): where
/// the operator, told to watch one namespace or all, lists and watches.
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The names of the resources a store holds in `namespace`.
pub fn names_in<K: Resource<DynamicType = ()> + Clone>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: &str,
) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|r| r.meta().namespace.as_deref() == Some(namespace))
        .filter_map(|r| r.meta().name.clone())
        .collect()
}

/// What a watch over a kind of object needs of its type: a cluster-typed resource that
/// (de)serializes and moves between tasks.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Fills an [`OwnedCache`] from a watch; `on_change` sees every applied or deleted object
/// (typed, before it is stored as text).
pub fn owned_cache<K>(
    api: Api<K>,
    config: watcher::Config,
    on_change: impl Fn(&K) + Send + 'static,
) -> (OwnedCache, impl Future<Output = ()> + Send)
where
    K: Watched,
{
    let objects: Arc<RwLock<HashMap<Key, CachedObject>>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let cache = OwnedCache {
        objects: objects.clone(),
        ready,
    };
    let mut relist: Option<HashMap<Key, CachedObject>> = None;
    let task = watcher(api, config)
        .default_backoff()
        .for_each(move |event| {
            let key = |obj: &K| (obj.namespace().unwrap_or_default(), obj.name_any());
            match event {
                Ok(watcher::Event::Apply(obj)) => {
                    on_change(&obj);
                    let entry = CachedObject::of(&obj);
                    objects
                        .write()
                        .expect("cache lock is never poisoned")
                        .insert(key(&obj), entry);
                }
                Ok(watcher::Event::Delete(obj)) => {
                    on_change(&obj);
                    objects
                        .write()
                        .expect("cache lock is never poisoned")
                        .remove(&key(&obj));
                }
                // A (re)list: build the new content aside and swap it in whole, so objects that
                // vanished while the watch was down disappear too.
                Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(obj)) => {
                    on_change(&obj);
                    relist
                        .get_or_insert_default()
                        .insert(key(&obj), CachedObject::of(&obj));
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    *objects.write().expect("cache lock is never poisoned") = fresh;
                    let _ = ready_tx.send(true);
                }
                Err(err) => {
                    tracing::warn!(error = %err, kind = %K::kind(&()), "watch failed; retrying")
                }
            }
            future::ready(())
        });
    (cache, task)
}
