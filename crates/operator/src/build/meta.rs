//! Metadata every generated object carries: names, recommended labels, owner references.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use skylift_api::constants::labels;

/// An owner reference marking `owner` as the controller of a generated object, so that
/// deleting the resource lets Kubernetes' garbage collector remove what it created.
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of an object generated for `owner`: same namespace, the recommended labels,
/// and the owner reference.
pub fn child_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(owner)]),
        ..ObjectMeta::default()
    }
}

/// `a=b,c=d` from a label map (the form of `status.selector`).
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reading the parts of an object's metadata the operator cares about.
pub trait ObjectMetaExt {
    /// Whether the object is controlled by the owner with this uid.
    fn is_controlled_by(&self, uid: &str) -> bool;
    /// The controller owner reference, if any.
    fn controller(&self) -> Option<&OwnerReference>;
}

impl ObjectMetaExt for ObjectMeta {
    fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
    }

    fn is_controlled_by(&self, uid: &str) -> bool {
        self.controller().is_some_and(|o| o.uid == uid)
    }
}

/// The recommended `app.kubernetes.io/*` labels. The first two form the pod selector.
#[derive(Clone, Debug)]
pub(crate) struct Labels {
    pub name: &'static str,
    pub instance: String,
    pub component: &'static str,
    pub version: String,
}

/// The labels that select the pods of `instance` of the app `name` (what a workload's
/// selector, and anything else finding its pods, match).
pub(crate) fn pod_selector_of(name: &'static str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), name.to_string()),
        (labels::INSTANCE.to_string(), instance.to_string()),
    ])
}

impl Labels {
    /// Labels that select the workload's pods. Never change for a resource (a Deployment's
    /// selector is immutable).
    pub fn selector(&self) -> BTreeMap<String, String> {
        pod_selector_of(self.name, &self.instance)
    }

    /// Labels of every generated object.
    pub fn all(&self) -> BTreeMap<String, String> {
        let mut all = self.selector();
        all.insert(labels::COMPONENT.into(), self.component.into());
        all.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        all.insert(labels::PART_OF.into(), labels::PART_OF_VALUE.into());
        if !self.version.is_empty()
            && skylift_api::metric_selector::is_legal_label_value(&self.version)
        {
            all.insert(labels::VERSION.into(), self.version.clone());
        }
        all
    }
}
