//! Patch semantics: JSON merge patch (RFC 7386) and server-side apply.
//!
//! Server-side apply is modelled per field manager: the object keeps what others set, a
//! manager's applied configuration is merged in, and fields that manager applied before
//! but no longer does are removed. Lists are atomic (replaced whole); kube-apiserver merges
//! some lists by key, which gives the same object when one manager owns the list.

use serde_json::Value;

use super::state::ApiError;

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces (the
/// `json-patch` crate's implementation; kube-apiserver's is `jsonpatch.MergePatch`).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON Patch, all or nothing: a failed `test`, or a path that does not exist,
/// fails the whole patch with 422, as kube-apiserver's `jsonPatcher.applyJSPatch`
/// (apiserver/pkg/endpoints/handlers/patch.go) reports any `jsonpatch` Apply error.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let mut operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("the JSON patch cannot be read: {e}")))?;
    // kube-apiserver's JSON Patch (evanphx/json-patch, `test`) reads a missing member as
    // null, so `test` of `null` holds where the path is absent (kube-runtime's finalizer
    // helper adds the first finalizer that way); RFC 6902 alone would fail it.
    operations.0.retain(|operation| match operation {
        json_patch::PatchOperation::Test(test) => {
            !(test.value.is_null() && target.pointer(test.path.as_str()).is_none())
        }
        _ => true,
    });
    let mut patched = target.clone();
    match json_patch::patch(&mut patched, &operations) {
        Ok(()) => {
            *target = patched;
            Ok(())
        }
        Err(err) => Err(ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {err}"),
        )),
    }
}

/// Removes from `target` the fields present in `before` but absent from `now`: what a
/// manager stopped applying.
pub fn remove_dropped_fields(target: &mut Value, before: &Value, now: &Value) {
    let (Value::Object(target), Value::Object(before)) = (target, before) else {
        return;
    };
    for (key, old) in before {
        match now.get(key) {
            None => {
                target.remove(key);
            }
            Some(new) if old.is_object() && new.is_object() => {
                if let Some(inner) = target.get_mut(key) {
                    remove_dropped_fields(inner, old, new);
                }
            }
            Some(_) => {}
        }
    }
}

/// Applies `applied` as a manager whose previous applied configuration was `previous`.
pub fn server_side_apply(current: &Value, previous: Option<&Value>, applied: &Value) -> Value {
    let mut result = current.clone();
    if let Some(previous) = previous {
        remove_dropped_fields(&mut result, previous, applied);
    }
    deep_merge(&mut result, applied);
    result
}

/// Merges `applied` into `target`: objects recursively, everything else replaced.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// The leaf paths of `value` with their values (lists are leaves, as they are atomic).
pub fn leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, inner) in fields {
                leaves(inner, &format!("{prefix}.{key}"), out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_keeps_other_writers_fields_and_drops_what_the_manager_stopped_applying() {
        let current = json!({"metadata": {"labels": {"a": "1", "user": "x"}}, "spec": {"replicas": 2, "paused": false}});
        let previous =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2, "paused": false}});
        let applied = json!({"metadata": {"labels": {"a": "2"}}, "spec": {"replicas": 3}});
        let result = server_side_apply(&current, Some(&previous), &applied);
        assert_eq!(
            result,
            json!({"metadata": {"labels": {"a": "2", "user": "x"}}, "spec": {"replicas": 3}})
        );
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut target, &json!({"a": {"b": null}, "d": [2, 3]}));
        assert_eq!(target, json!({"a": {"c": 2}, "d": [2, 3]}));
    }
}
