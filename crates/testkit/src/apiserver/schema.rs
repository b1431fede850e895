//! What kube-apiserver does with a custom resource against its CRD's structural schema:
//! apply defaults, prune unknown fields, validate (OpenAPI constraints, then CEL rules).

use regex::Regex;
use serde_json::{Map, Value};

/// One validation failure, in kube-apiserver's words.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    /// `field: message`, as kube-apiserver prints a cause inside an Invalid error.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Fills in `default`s and removes fields the schema does not know, recursively.
pub fn default_and_prune(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (key, property) in properties {
                    if !fields.contains_key(key)
                        && let Some(default) = property.get("default")
                    {
                        fields.insert(key.clone(), default.clone());
                    }
                }
                if !preserves_unknown(schema) && schema.get("additionalProperties").is_none() {
                    fields.retain(|key, _| {
                        properties.contains_key(key)
                            || (root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"))
                    });
                }
                for (key, inner) in fields.iter_mut() {
                    if let Some(property) = properties.get(key) {
                        default_and_prune(property, inner, false);
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for inner in fields.values_mut() {
                    default_and_prune(additional, inner, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    default_and_prune(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// Checks the OpenAPI constraints of `schema` on `value` at `path`.
pub fn validate_openapi(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |causes: &mut Vec<Cause>, detail: String| {
        causes.push(Cause {
            field: path.to_string(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {detail}", shown(value)),
        })
    };
    // A value of the wrong type is its own error type (it keeps CEL rules from running),
    // shown by the name of its type.
    let wrong_type = |causes: &mut Vec<Cause>, detail: String| {
        causes.push(Cause {
            field: path.to_string(),
            reason: "FieldValueTypeInvalid",
            message: format!("Invalid value: \"{}\": {detail}", type_name(value)),
        })
    };
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            wrong_type(
                causes,
                format!(
                    "{path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            );
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !matches!(type_name(value), "integer" | "string") {
            wrong_type(
                causes,
                format!("{path} in body must be of type integer or string"),
            );
        }
        return;
    }
    if let Some(expected) = schema["type"].as_str() {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            wrong_type(
                causes,
                format!("{path} in body must be of type {expected}: \"{actual}\""),
            );
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        causes.push(Cause {
            field: path.to_string(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                value,
                supported.join(", ")
            ),
        });
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && number < min
        {
            invalid(
                causes,
                format!("{path} in body should be greater than or equal to {min}"),
            );
        }
        if let Some(max) = schema["maximum"].as_f64()
            && number > max
        {
            invalid(
                causes,
                format!("{path} in body should be less than or equal to {max}"),
            );
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64()
            && length < min
        {
            invalid(
                causes,
                format!("{path} in body should be at least {min} chars long"),
            );
        }
        if let Some(max) = schema["maxLength"].as_u64()
            && length > max
        {
            causes.push(Cause {
                field: path.to_string(),
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than {max} bytes"),
            });
        }
        if let Some(pattern) = schema["pattern"].as_str()
            && Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
        {
            invalid(causes, format!("{path} in body should match '{pattern}'"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema["minItems"].as_u64()
            && (items.len() as u64) < min
        {
            invalid(
                causes,
                format!("{path} in body should have at least {min} items"),
            );
        }
        if let Some(max) = schema["maxItems"].as_u64()
            && (items.len() as u64) > max
        {
            causes.push(Cause {
                field: path.to_string(),
                reason: "FieldValueTooMany",
                message: format!("Too many: {}: must have at most {max} items", items.len()),
            });
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_openapi(item_schema, item, &format!("{path}[{i}]"), causes);
            }
        }
    }
    if let Some(fields) = value.as_object() {
        validate_object(schema, fields, path, causes);
    }
}

fn validate_object(
    schema: &Value,
    fields: &Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    for required in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !fields.contains_key(required) {
            causes.push(Cause {
                field: join(path, required),
                reason: "FieldValueRequired",
                message: "Required value".into(),
            });
        }
    }
    let count = fields.len() as u64;
    if let Some(min) = schema["minProperties"].as_u64()
        && count < min
    {
        causes.push(Cause {
            field: path.to_string(),
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {count}: {path} in body should have at least {min} properties"
            ),
        });
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, inner) in fields {
        match (
            properties.and_then(|p| p.get(key)),
            schema.get("additionalProperties"),
        ) {
            (Some(property), _) => validate_openapi(property, inner, &join(path, key), causes),
            (None, Some(additional)) if additional.is_object() => {
                validate_openapi(additional, inner, &join(path, key), causes)
            }
            _ => {}
        }
    }
}

/// The schema of the node at `path` (`spec.config[0].path`, `spec.data[key]`).
fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(at) => (&part[..at], part[at..].matches('[').count()),
            None => (part, 0),
        };
        if !key.is_empty() {
            node = node["properties"]
                .get(key)
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
        for _ in 0..indexes {
            node = node
                .get("items")
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
    }
    Some(node)
}

/// Evaluates the CEL rules (`x-kubernetes-validations`) with Kubernetes' CEL library, each
/// failure reported as apiextensions-apiserver's `fieldErrorForReason` reports it: the
/// rule's reason decides the error type, and an Invalid value is the node's schema type.
pub fn validate_cel(schema: &Value, object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Err(errors) = kube_cel::Validator::new().validate(schema, object, old) {
        for error in errors.into_vec() {
            let field = error.field_path.clone();
            let (reason, message) = match error.reason.as_deref() {
                Some("FieldValueRequired") => (
                    "FieldValueRequired",
                    format!("Required value: {}", error.message),
                ),
                Some("FieldValueForbidden") => (
                    "FieldValueForbidden",
                    format!("Forbidden: {}", error.message),
                ),
                Some("FieldValueDuplicate") => (
                    "FieldValueDuplicate",
                    format!("Duplicate value: {}", Value::String(error.message.clone())),
                ),
                _ => {
                    let type_ = schema_at(schema, &field)
                        .and_then(|s| s["type"].as_str())
                        .unwrap_or("object");
                    (
                        "FieldValueInvalid",
                        format!("Invalid value: \"{type_}\": {}", error.message),
                    )
                }
            };
            causes.push(Cause {
                field,
                reason,
                message,
            });
        }
    }
}

/// Whether `causes` stop CEL rules from being evaluated: apiextensions-apiserver's
/// `hasBlockingErr` (unsupported value, required, too long, too many, wrong type). Other
/// failures (a pattern, a minimum) leave the rules to run.
fn blocks_rules(causes: &[Cause]) -> bool {
    causes.iter().any(|c| {
        matches!(
            c.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    })
}

/// The full admission of a custom resource: defaults and pruning, then every check.
pub fn admit(schema: &Value, object: &mut Value, old: Option<&Value>) -> Vec<Cause> {
    default_and_prune(schema, object, true);
    let mut causes = Vec::new();
    // metadata is validated by the generic object rules, not by the CRD schema.
    let mut body = object.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.remove("metadata");
    }
    validate_openapi(schema, &body, "", &mut causes);
    if blocks_rules(&causes) {
        causes.push(Cause {
            field: "<nil>".into(),
            reason: "FieldValueInvalid",
            message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
        });
    } else {
        validate_cel(schema, object, old, &mut causes);
    }
    causes
}
