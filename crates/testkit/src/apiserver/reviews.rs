//! The review APIs delegating servers call: `TokenReview` (tokens registered with
//! [`State::add_token`]) and `SubjectAccessReview`, decided as kube-apiserver's authorizers
//! do: members of `system:masters` may do anything, everyone else what the stored RBAC
//! objects (ClusterRoles, Roles and their bindings) grant.

use serde_json::{Value, json};

use super::selector::{FieldSelector, LabelSelector};
use super::state::State;

/// Answers a TokenReview.
pub fn review_token(state: &State, review: &Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status = match state.token_user(token) {
        Some((user, groups)) => json!({
            "authenticated": true,
            "user": {"username": user, "uid": format!("uid-{user}"), "groups": groups},
            "audiences": ["https://kubernetes.default.svc"],
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status,
    })
}

/// The request a SubjectAccessReview asks about.
struct Ask<'a> {
    user: &'a str,
    groups: Vec<&'a str>,
    verb: &'a str,
    /// (group, resource, namespace, name) of a resource request.
    resource: Option<(&'a str, &'a str, &'a str, &'a str)>,
    /// The path of a non-resource request.
    path: Option<&'a str>,
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn has(list: &[&str], wanted: &str) -> bool {
    list.iter().any(|item| *item == "*" || *item == wanted)
}

fn rule_allows(rule: &Value, ask: &Ask<'_>) -> bool {
    if !has(&strings(&rule["verbs"]), ask.verb) {
        return false;
    }
    match (ask.resource, ask.path) {
        (Some((group, resource, _, name)), _) => {
            let names = strings(&rule["resourceNames"]);
            has(&strings(&rule["apiGroups"]), group)
                && has(&strings(&rule["resources"]), resource)
                && (names.is_empty() || names.contains(&name))
        }
        (None, Some(path)) => strings(&rule["nonResourceURLs"]).iter().any(|url| {
            *url == path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        }),
        (None, None) => false,
    }
}

fn subject_matches(subject: &Value, ask: &Ask<'_>) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str().unwrap_or_default() {
        "User" => name == ask.user,
        "Group" => ask.groups.contains(&name),
        "ServiceAccount" => {
            let namespace = subject["namespace"].as_str().unwrap_or_default();
            ask.user == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

fn all(state: &State, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    let labels = LabelSelector::parse("").expect("the empty selector");
    let fields = FieldSelector::parse("").expect("the empty selector");
    state
        .list(group, plural, namespace, &labels, &fields)
        .map(|(items, _)| items)
        .unwrap_or_default()
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// The binding that grants `ask`, as RBAC's reason names it.
fn granted_by(state: &State, ask: &Ask<'_>) -> Option<String> {
    let namespace = ask.resource.map(|r| r.2).filter(|ns| !ns.is_empty());
    let mut bindings: Vec<(Value, &str)> = all(state, RBAC, "clusterrolebindings", None)
        .into_iter()
        .map(|b| (b, "ClusterRoleBinding"))
        .collect();
    if let Some(namespace) = namespace {
        bindings.extend(
            all(state, RBAC, "rolebindings", Some(namespace))
                .into_iter()
                .map(|b| (b, "RoleBinding")),
        );
    }
    for (binding, binding_kind) in bindings {
        let Some(subject) = binding["subjects"]
            .as_array()
            .and_then(|subjects| subjects.iter().find(|s| subject_matches(s, ask)))
        else {
            continue;
        };
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let role = match role_kind {
            "ClusterRole" => all(state, RBAC, "clusterroles", None),
            "Role" => all(state, RBAC, "roles", namespace),
            _ => continue,
        }
        .into_iter()
        .find(|r| r["metadata"]["name"] == role_name);
        let Some(role) = role else { continue };
        let rules = role["rules"].as_array().cloned().unwrap_or_default();
        if rules.iter().any(|rule| rule_allows(rule, ask)) {
            return Some(format!(
                "RBAC: allowed by {binding_kind} \"{}\" of {role_kind} \"{role_name}\" to {} \"{}\"",
                binding["metadata"]["name"].as_str().unwrap_or_default(),
                subject["kind"].as_str().unwrap_or_default(),
                subject["name"].as_str().unwrap_or_default(),
            ));
        }
    }
    None
}

/// Answers a SubjectAccessReview.
pub fn review_access(state: &State, review: &Value) -> Value {
    let spec = &review["spec"];
    let resource = &spec["resourceAttributes"];
    let non_resource = &spec["nonResourceAttributes"];
    let ask = Ask {
        user: text(&spec["user"]),
        groups: strings(&spec["groups"]),
        verb: if resource.is_object() {
            text(&resource["verb"])
        } else {
            text(&non_resource["verb"])
        },
        resource: resource.is_object().then(|| {
            (
                text(&resource["group"]),
                text(&resource["resource"]),
                text(&resource["namespace"]),
                text(&resource["name"]),
            )
        }),
        path: non_resource
            .is_object()
            .then(|| text(&non_resource["path"])),
    };
    let status = if ask.groups.contains(&"system:masters") {
        json!({"allowed": true})
    } else {
        match granted_by(state, &ask) {
            Some(reason) => json!({"allowed": true, "reason": reason}),
            None => json!({"allowed": false}),
        }
    };
    json!({
        "kind": "SubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}
