//! Holding the requests a program made (recorded by the API-server double) against RBAC
//! rules, as kube-apiserver's RBAC authorizer does: apiGroups, resources (with
//! `/subresource`), verbs and resourceNames, a Role only in its namespace.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;
use skylift_testkit::apiserver::RequestAttributes;

/// A rule and where it applies (`None`: every namespace).
pub struct Grant {
    pub rule: PolicyRule,
    pub namespace: Option<String>,
}

impl Grant {
    /// A rule of Kubernetes' own (a built-in role a bundle binds to).
    pub fn builtin(rule: Value, namespace: Option<&str>) -> Grant {
        Grant {
            rule: serde_json::from_value(rule).expect("a PolicyRule"),
            namespace: namespace.map(String::from),
        }
    }

    pub fn allows(&self, request: &RequestAttributes) -> bool {
        let rule = &self.rule;
        let any = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref()
                .is_some_and(|l| l.iter().any(|v| v == "*" || v == value))
        };
        let in_namespace = match (&self.namespace, &request.namespace) {
            (None, _) => true,
            (Some(granted), Some(asked)) => granted == asked,
            (Some(_), None) => false,
        };
        let named = match &rule.resource_names {
            None => true,
            Some(names) if names.is_empty() => true,
            Some(names) => request.name.as_ref().is_some_and(|n| names.contains(n)),
        };
        in_namespace
            && any(&rule.api_groups, &request.group)
            && any(&rule.resources, &request.resource)
            && rule.verbs.iter().any(|v| v == "*" || *v == request.verb)
            && named
    }
}

/// The rules of the Roles and ClusterRoles named `<prefix>...` in a bundle (path from
/// the repository root).
pub fn bundle_grants(bundle: &str, prefix: &str) -> Vec<Grant> {
    grants_in(&crate::repo_file(bundle), bundle, prefix)
}

/// The rules of the Roles and ClusterRoles named `<prefix>...` in the manifests `yaml`
/// (`origin` names them in a panic).
pub fn grants_in(yaml: &str, origin: &str, prefix: &str) -> Vec<Grant> {
    let mut grants = Vec::new();
    for value in crate::yaml_documents(yaml, origin) {
        let kind = value["kind"].as_str().unwrap_or_default();
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if !(kind == "ClusterRole" || kind == "Role") || !name.starts_with(prefix) {
            continue;
        }
        let namespace = value["metadata"]["namespace"].as_str().map(String::from);
        for rule in value["rules"].as_array().into_iter().flatten() {
            grants.push(Grant {
                rule: serde_json::from_value(rule.clone()).expect("a PolicyRule"),
                namespace: namespace.clone(),
            });
        }
    }
    grants
}

/// Least privilege, both ways, for the requests `user` made (of all those `requests`
/// recorded): each is allowed by `grants`, and each grant was used but those `excused`
/// (`(group, resource, verb)`). `who` names the program in a failure.
pub fn assert_least_privilege(
    who: &str,
    requests: Vec<RequestAttributes>,
    user: &str,
    grants: &[Grant],
    excused: &[(&str, &str, &str)],
) {
    let used: Vec<RequestAttributes> = requests
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(user))
        .collect();
    let refused = refused(&used, grants);
    assert!(
        refused.is_empty(),
        "{who} made requests its RBAC does not allow:\n{refused:#?}"
    );
    let unused = unused(&used, grants, excused);
    assert!(
        unused.is_empty(),
        "{who}: granted but never used (least privilege): {unused:?}"
    );
}

/// Requests no grant allows.
fn refused<'a>(requests: &'a [RequestAttributes], grants: &[Grant]) -> Vec<&'a RequestAttributes> {
    requests
        .iter()
        .filter(|r| !grants.iter().any(|g| g.allows(r)))
        .collect()
}

/// `verb group/resource` of every grant that no request used, but those `excused`
/// (`(group, resource, verb)`).
fn unused(
    requests: &[RequestAttributes],
    grants: &[Grant],
    excused: &[(&str, &str, &str)],
) -> Vec<String> {
    let mut unused = Vec::new();
    for grant in grants {
        let rule = &grant.rule;
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let called = requests
                        .iter()
                        .any(|r| r.group == *group && r.resource == *resource && r.verb == *verb);
                    let excused = excused
                        .iter()
                        .any(|(g, res, v)| g == group && res == resource && v == verb);
                    if !called && !excused {
                        unused.push(format!("{verb} {group}/{resource}"));
                    }
                }
            }
        }
    }
    unused
}

/// The args of the container of Deployment `name` in a bundle, each `--flag=value` whose
/// flag is in `replaced` swapped for the given value (addresses of this test machine).
pub fn bundle_args(bundle: &str, name: &str, replaced: &[(&str, String)]) -> Vec<String> {
    args_in(&crate::repo_file(bundle), bundle, name, replaced)
}

/// As [`bundle_args`], of the Deployment `name` in the manifests `yaml`.
pub fn args_in(yaml: &str, origin: &str, name: &str, replaced: &[(&str, String)]) -> Vec<String> {
    let deployment: Value = crate::yaml_documents(yaml, origin)
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{origin} has no Deployment {name}"));
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the container's args")
        .iter()
        .map(|arg| {
            let arg = arg.as_str().expect("a string");
            let flag = arg.split('=').next().unwrap_or_default();
            match replaced.iter().find(|(f, _)| *f == flag) {
                Some((f, value)) => format!("{f}={value}"),
                None => arg.to_string(),
            }
        })
        .collect()
}
