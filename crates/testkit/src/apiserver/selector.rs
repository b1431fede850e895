//! Label and field selectors as kube-apiserver parses them (label selectors with
//! `skylift_api::label_selector`, shared with the adapter).

use serde_json::Value;
use skylift_api::label_selector::{self, Requirement};

/// A parsed label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_requirements(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

impl LabelSelector {
    /// Parses with skylift's one selector parser, which reads what kube-apiserver reads.
    pub fn parse(text: &str) -> Result<Self, String> {
        label_selector::parse(text)
            .map(LabelSelector)
            .map_err(|err| err.to_string())
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`) as
    /// `metav1.LabelSelectorAsSelector` reads it; a missing one selects everything.
    pub fn from_object(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector["matchLabels"].as_object().into_iter().flatten() {
            let value = value.as_str().ok_or("matchLabels values are strings")?;
            requirements.push(Requirement::Equals(key.clone(), value.into()));
        }
        for expression in selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = expression["key"].as_str().unwrap_or_default().to_string();
            let values: Vec<String> = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            requirements.push(match expression["operator"].as_str().unwrap_or_default() {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            });
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0
            .iter()
            .all(|r| r.matches(|key| labels.get(key).and_then(Value::as_str)))
    }
}

/// A field selector; kube-apiserver supports `metadata.name` and `metadata.namespace` for
/// every kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in split_requirements(text) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector {part:?}"));
            };
            if !matches!(field.trim(), "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {}", field.trim()));
            }
            terms.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => object["metadata"]["name"].as_str(),
                _ => object["metadata"]["namespace"].as_str(),
            };
            (actual == Some(value.as_str())) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_operator_is_understood() {
        let pod = json!({"metadata": {"labels": {"app": "oap", "tier": "backend"}}});
        for (selector, expected) in [
            ("app=oap", true),
            ("app==oap,tier=backend", true),
            ("app!=oap", false),
            ("tier in (backend, frontend)", true),
            ("tier notin (backend)", false),
            ("app", true),
            ("!app", false),
            ("!zone", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(selector).unwrap().matches(&pod),
                expected,
                "{selector}"
            );
        }
        assert!(LabelSelector::parse("app in oap").is_err());
        assert!(
            FieldSelector::parse("metadata.name=x")
                .unwrap()
                .matches(&json!({"metadata": {"name": "x"}}))
        );
        assert!(FieldSelector::parse("spec.nodeName=x").is_err());
    }
}
