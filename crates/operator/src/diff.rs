//! Whether an object needs to be written: the operator writes nothing when what it would
//! apply is already in place, so a cluster at rest sees no API writes from it.

use serde_json::Value;

/// A stable hash of the configuration an object is applied with (FNV-1a over its JSON),
/// recorded in the `skylift.io/applied-hash` annotation. A change of the desired object,
/// including a field removed from it, changes the hash.
pub fn config_hash(desired: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in desired.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Whether every field of `desired` is present with the same value in `current`.
/// Fields the API server or other controllers add (defaults, status, metadata) are
/// ignored; lists must have the same length, element by element.
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    match (desired, current) {
        (Value::Null, _) => true,
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(current) => is_subset(value, current),
                // The API server drops empty lists and maps it was given.
                None => is_empty(value),
            })
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h))
        }
        (Value::Array(want), Value::Null) => want.is_empty(),
        (Value::Object(want), Value::Null) => want.is_empty(),
        (Value::Number(want), Value::Number(have)) => want.as_f64() == have.as_f64(),
        // The API server keeps int-or-string values as written; a number given as a
        // string (or the reverse) still means the same.
        (Value::Number(want), Value::String(have)) | (Value::String(have), Value::Number(want)) => {
            have.parse::<f64>().ok() == want.as_f64()
        }
        (want, have) => want == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

/// Whether an object must be (re)applied: it is missing, its desired configuration
/// changed since the last apply, or someone changed a field the operator owns.
pub fn needs_apply(
    desired: &Value,
    hash: &str,
    current: Option<&Value>,
    hash_annotation: &str,
) -> bool {
    let Some(current) = current else { return true };
    let recorded = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(hash_annotation))
        .and_then(Value::as_str);
    recorded != Some(hash) || !is_subset(desired, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "skylift.io/applied-hash";

    #[test]
    fn defaults_added_by_the_server_do_not_count_as_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "proxy"}]}}}});
        let current = json!({
            "metadata": {"annotations": {KEY: config_hash(&desired)}, "resourceVersion": "7"},
            "spec": {"replicas": 2, "revisionHistoryLimit": 10,
                     "template": {"spec": {"containers": [{"name": "proxy", "terminationMessagePath": "/dev/termination-log"}]}}},
            "status": {"readyReplicas": 2}
        });
        assert!(!needs_apply(
            &desired,
            &config_hash(&desired),
            Some(&current),
            KEY
        ));
    }

    #[test]
    fn changed_owned_fields_and_new_configuration_are_reapplied() {
        let desired = json!({"spec": {"replicas": 2}});
        let hash = config_hash(&desired);
        let drifted =
            json!({"metadata": {"annotations": {KEY: hash.clone()}}, "spec": {"replicas": 5}});
        assert!(needs_apply(&desired, &hash, Some(&drifted), KEY));
        let old_config =
            json!({"metadata": {"annotations": {KEY: "0000"}}, "spec": {"replicas": 2}});
        assert!(needs_apply(&desired, &hash, Some(&old_config), KEY));
        assert!(needs_apply(&desired, &hash, None, KEY));
    }

    #[test]
    fn list_length_and_int_or_string_are_compared_by_meaning() {
        assert!(!is_subset(
            &json!({"env": [1, 2]}),
            &json!({"env": [1, 2, 3]})
        ));
        assert!(is_subset(&json!({"port": 1234}), &json!({"port": "1234"})));
        assert!(is_subset(&json!({"args": [], "labels": {}}), &json!({})));
        assert!(!is_subset(&json!({"args": ["--x"]}), &json!({})));
    }
}
