//! Server-side apply with one field manager, skipped when the object is already as desired.

use std::fmt::Debug;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skylift_api::constants::{FIELD_MANAGER, labels::APPLIED_HASH_ANNOTATION};

use super::cache::OwnedCache;
use super::{Context, Error};
use crate::diff::{config_hash, needs_apply};

/// What applying one object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Created,
    Updated,
    Deleted,
}

impl Context {
    /// Applies `desired` unless the cached object already matches it. `owner_uid` is the
    /// resource the object belongs to: an object of the same name that it does not control
    /// (controlled by anything else, or by nothing) is never taken over.
    pub(crate) async fn apply<K>(
        &self,
        cache: &OwnedCache,
        owner_uid: &str,
        desired: K,
    ) -> Result<Applied, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let kind = kind_of::<K>();
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let current = cache.get(&namespace, &name);
        // The cache holds only what carries the operator's label; an object of the name
        // it would use may still exist (made by hand, or by another tool). Looked up once,
        // before the first write.
        let controller = match &current {
            Some(cached) => Some(cached.controller.clone()),
            None => api
                .get_opt(&name)
                .await
                .map_err(|source| Error::Apply {
                    kind,
                    name: name.clone(),
                    source,
                })?
                .map(|existing| super::cache::Controller::of(existing.meta())),
        };
        if let Some(controller) = controller
            && controller.as_ref().map(|c| c.uid.as_str()) != Some(owner_uid)
        {
            return Err(Error::NameConflict {
                kind,
                name,
                owner: controller.map(|c| format!("{} {}", c.kind, c.name)),
            });
        }
        self.write(api, current.as_ref(), desired).await
    }

    /// Applies the cluster-scoped `desired` unless the cached object already matches it.
    /// Such objects have no owner reference (a namespaced resource cannot own them); they
    /// are found by their labels and removed by the owner's finalizer.
    pub(crate) async fn apply_cluster<K>(
        &self,
        cache: &OwnedCache,
        desired: K,
    ) -> Result<Applied, Error>
    where
        K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let current = cache.get("", &desired.name_any());
        self.write(Api::all(self.client.clone()), current.as_ref(), desired)
            .await
    }

    /// Server-side apply of `desired` through `api`, skipped when `current` matches.
    async fn write<K>(
        &self,
        api: Api<K>,
        current: Option<&super::cache::CachedObject>,
        desired: K,
    ) -> Result<Applied, Error>
    where
        K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    {
        let kind = kind_of::<K>();
        let name = desired.name_any();
        let mut value =
            serde_json::to_value(&desired).expect("Kubernetes objects serialize to JSON");
        let hash = config_hash(&value);
        value["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = hash.clone().into();
        let current_value = current.map(|c| c.value());
        if !needs_apply(
            &value,
            &hash,
            current_value.as_ref(),
            APPLIED_HASH_ANNOTATION,
        ) {
            return Ok(Applied::Unchanged);
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
        self.metrics.record_write(kind);
        Ok(if current.is_some() {
            Applied::Updated
        } else {
            Applied::Created
        })
    }

    /// Applies `desired` when the spec asks for the object; otherwise deletes the one
    /// `owner_uid` made before, at `namespace/name` (a field removed from the spec takes
    /// its object with it).
    pub(crate) async fn apply_or_remove<K>(
        &self,
        cache: &OwnedCache,
        owner_uid: &str,
        (namespace, name): (&str, &str),
        desired: Option<K>,
    ) -> Result<Applied, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        match desired {
            Some(desired) => self.apply(cache, owner_uid, desired).await,
            None => {
                let deleted = self
                    .delete_owned::<K>(cache, owner_uid, namespace, name)
                    .await?;
                Ok(if deleted {
                    Applied::Deleted
                } else {
                    Applied::Unchanged
                })
            }
        }
    }

    /// Deletes the cached object `namespace/name` if `owner_uid` controls it.
    pub(crate) async fn delete_owned<K>(
        &self,
        cache: &OwnedCache,
        owner_uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let controlled = cache
            .get(namespace, name)
            .and_then(|c| c.controller)
            .is_some_and(|c| c.uid == owner_uid);
        if !controlled {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: kind_of::<K>(),
                    name: name.into(),
                    source,
                });
            }
        }
        self.metrics.record_write(kind_of::<K>());
        Ok(true)
    }
}

pub(crate) fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are static strings in k8s-openapi and kube-derive types.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "Object",
    }
}
