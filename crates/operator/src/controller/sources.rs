//! ConfigMaps users name in their resources (OAP's configuration files, a collector's
//! configuration), cached as their keys and a hash of their content: a change to one
//! rolls the pods that mount it, and the operator never holds the content itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::build::oapserver::ConfigSource;

/// Annotation the pruned cache copy keeps the content hash in (never written anywhere).
pub const CONTENT_HASH: &str = "skylift.io/content-hash";

/// Replaces a ConfigMap's content by its keys and a hash of it.
pub fn prune(config_map: &mut ConfigMap) {
    let data = config_map.data.take().unwrap_or_default();
    let binary = config_map.binary_data.take().unwrap_or_default();
    let hash = crate::diff::config_hash(&json!({
        "data": data,
        "binaryData": binary.iter().map(|(k, v)| (k.clone(), v.0.len())).collect::<BTreeMap<_, _>>(),
        "binaryHash": binary.iter().map(|(k, v)| (k.clone(), crate::diff::config_hash(&json!(v.0)))).collect::<BTreeMap<_, _>>(),
    }));
    let mut keys: BTreeMap<String, String> = data.into_keys().map(|k| (k, String::new())).collect();
    keys.extend(binary.into_keys().map(|k| (k, String::new())));
    config_map.data = Some(keys);
    config_map.metadata.managed_fields = None;
    config_map.metadata.annotations = Some(BTreeMap::from([(CONTENT_HASH.to_string(), hash)]));
}

/// The named ConfigMap of `namespace`, if it exists.
pub fn lookup(store: &Store<ConfigMap>, namespace: &str, name: &str) -> Option<ConfigSource> {
    let config_map = store.get(&ObjectRef::new(name).within(namespace))?;
    Some(ConfigSource {
        keys: config_map
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect(),
        hash: config_map
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONTENT_HASH))
            .cloned()
            .unwrap_or_default(),
    })
}
