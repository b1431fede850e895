//! Who is calling, as k8s.io/apiserver delegates it, without I/O: the front-proxy settings
//! from `kube-system/extension-apiserver-authentication`, the identity a trusted proxy
//! puts in `X-Remote-*` headers, the `SubjectAccessReview` a metric read needs, and which
//! paths an anonymous caller may reach.

use std::collections::BTreeMap;

use http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

use crate::answer::{GROUP, READ_PATH_PREFIX, VERSION};

/// The ConfigMap the apiserver publishes for extension servers.
pub const AUTHENTICATION_CONFIGMAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// The group of every authenticated user, and of anonymous ones.
const ALL_AUTHENTICATED: &str = "system:authenticated";
const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";

/// How to trust an authenticating front proxy (the kube-aggregator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontProxy {
    /// PEM of the CA that signs front-proxy client certificates.
    pub client_ca: String,
    /// Common names a front-proxy certificate may carry; empty: any.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_headers_prefixes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} in {}/{} is not a JSON list of strings: {reason}", AUTHENTICATION_CONFIGMAP.0, AUTHENTICATION_CONFIGMAP.1)]
    NotAList { key: &'static str, reason: String },
}

fn list(data: &BTreeMap<String, String>, key: &'static str) -> Result<Vec<String>, ConfigError> {
    match data.get(key) {
        None => Ok(Vec::new()),
        Some(text) if text.trim().is_empty() => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| ConfigError::NotAList {
            key,
            reason: e.to_string(),
        }),
    }
}

/// The front-proxy settings in the ConfigMap's data; `None` when it has no
/// requestheader CA (no front proxy is trusted then).
pub fn front_proxy(data: &BTreeMap<String, String>) -> Result<Option<FrontProxy>, ConfigError> {
    let Some(client_ca) = data
        .get("requestheader-client-ca-file")
        .filter(|ca| !ca.trim().is_empty())
    else {
        return Ok(None);
    };
    Ok(Some(FrontProxy {
        client_ca: client_ca.clone(),
        allowed_names: list(data, "requestheader-allowed-names")?,
        username_headers: list(data, "requestheader-username-headers")?,
        group_headers: list(data, "requestheader-group-headers")?,
        // Header names arrive lower-cased; the prefixes are matched against them as such.
        extra_headers_prefixes: list(data, "requestheader-extra-headers-prefix")?
            .into_iter()
            .map(|prefix| prefix.to_ascii_lowercase())
            .collect(),
    }))
}

/// A caller, as authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl FrontProxy {
    /// Whether a verified client certificate's common name may act as the front proxy.
    pub fn allows(&self, common_name: &str) -> bool {
        self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == common_name)
    }

    /// The identity the front proxy asserts; `None` without a user name.
    pub fn identity(&self, headers: &HeaderMap) -> Option<Identity> {
        let user = self
            .username_headers
            .iter()
            .find_map(|h| headers.get(h.as_str())?.to_str().ok())
            .filter(|u| !u.is_empty())?
            .to_string();
        let mut groups: Vec<String> = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect();
        // As k8s.io/apiserver's AuthenticatedGroupAdder: every authenticated user is in
        // `system:authenticated` unless its groups already say (un)authenticated. The
        // aggregator's own discovery and OpenAPI calls are allowed through that group
        // (`system:discovery` is bound to it), not through their user names.
        if !groups
            .iter()
            .any(|g| g == ALL_AUTHENTICATED || g == ALL_UNAUTHENTICATED)
        {
            groups.push(ALL_AUTHENTICATED.to_string());
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            for prefix in &self.extra_headers_prefixes {
                let Some(key) = name.as_str().strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if let Ok(value) = value.to_str() {
                    // Extra keys are percent-encoded in header names.
                    extra
                        .entry(percent_decode(key))
                        .or_default()
                        .push(value.to_string());
                }
            }
        }
        Some(Identity {
            user,
            groups,
            extra,
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Paths open to anyone (probes).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz")
}

/// What a request asks to do, as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// Reading an external metric: verb list on resource `<metric>` of
    /// external.metrics.k8s.io in `namespace`: k8s.io/apiserver's RequestInfo reads a GET of
    /// `namespaces/<ns>/<resource>` without a name as a list, and RBAC rules for the HPA
    /// name it so.
    Metric { namespace: String, metric: String },
    /// Anything else (discovery, OpenAPI, `/metrics`): a non-resource URL.
    Path(String),
}

/// The attributes of a GET of `path` (as received, percent-encoded).
pub fn attributes(path: &str) -> Attributes {
    if let Some(rest) = path.strip_prefix(READ_PATH_PREFIX)
        && let Some((namespace, metric)) = rest.split_once('/')
        && !namespace.is_empty()
        && !metric.is_empty()
        && !metric.contains('/')
    {
        return Attributes::Metric {
            namespace: percent_decode(namespace),
            metric: percent_decode(metric),
        };
    }
    Attributes::Path(path.to_string())
}

/// The review that decides whether `identity` may do what `attributes` say.
pub fn access_review(identity: &Identity, attributes: &Attributes) -> SubjectAccessReview {
    let (resource_attributes, non_resource_attributes) = match attributes {
        Attributes::Metric { namespace, metric } => (
            Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(metric.clone()),
                namespace: Some(namespace.clone()),
                verb: Some("list".into()),
                ..ResourceAttributes::default()
            }),
            None,
        ),
        Attributes::Path(path) => (
            None,
            Some(NonResourceAttributes {
                path: Some(path.clone()),
                verb: Some("get".into()),
            }),
        ),
    };
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(identity.user.clone()),
            groups: Some(identity.groups.clone()),
            extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
            resource_attributes,
            non_resource_attributes,
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// The message of a 403, in kube-apiserver's words, with the authorizer's reason if any.
pub fn forbidden_message(identity: &Identity, attributes: &Attributes, reason: &str) -> String {
    let what = match attributes {
        Attributes::Metric { namespace, metric } => format!(
            "externalmetrics.{GROUP} \"{metric}\" is forbidden: User \"{}\" cannot list resource \"{metric}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"",
            identity.user
        ),
        Attributes::Path(path) => format!(
            "forbidden: User \"{}\" cannot get path \"{path}\"",
            identity.user
        ),
    };
    if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn configmap() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("client-ca-file".into(), "CLIENT CA".into()),
            (
                "requestheader-client-ca-file".into(),
                "FRONT PROXY CA".into(),
            ),
            (
                "requestheader-allowed-names".into(),
                r#"["front-proxy-client"]"#.into(),
            ),
            (
                "requestheader-username-headers".into(),
                r#"["X-Remote-User"]"#.into(),
            ),
            (
                "requestheader-group-headers".into(),
                r#"["X-Remote-Group"]"#.into(),
            ),
            (
                "requestheader-extra-headers-prefix".into(),
                r#"["X-Remote-Extra-"]"#.into(),
            ),
        ])
    }

    #[test]
    fn the_apiservers_front_proxy_settings_are_read() {
        let proxy = front_proxy(&configmap()).unwrap().unwrap();
        assert_eq!(proxy.client_ca, "FRONT PROXY CA");
        assert!(proxy.allows("front-proxy-client"));
        assert!(!proxy.allows("someone-else"));
        let mut any = configmap();
        any.insert("requestheader-allowed-names".into(), "[]".into());
        assert!(front_proxy(&any).unwrap().unwrap().allows("anyone"));
        let mut none = configmap();
        none.remove("requestheader-client-ca-file");
        assert_eq!(front_proxy(&none).unwrap(), None);
        let mut broken = configmap();
        broken.insert(
            "requestheader-group-headers".into(),
            "X-Remote-Group".into(),
        );
        assert!(matches!(
            front_proxy(&broken),
            Err(ConfigError::NotAList {
                key: "requestheader-group-headers",
                ..
            })
        ));
    }

    #[test]
    fn the_front_proxys_headers_name_user_groups_and_extras() {
        let proxy = front_proxy(&configmap()).unwrap().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-remote-user",
            HeaderValue::from_static("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        );
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:serviceaccounts"),
        );
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        headers.append("x-remote-extra-scopes%2fa", HeaderValue::from_static("s1"));
        let identity = proxy.identity(&headers).unwrap();
        assert_eq!(
            identity.user,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(
            identity.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(identity.extra["scopes/a"], ["s1"]);
        assert_eq!(
            proxy.identity(&HeaderMap::new()),
            None,
            "no user, no identity"
        );
    }

    #[test]
    fn a_front_proxy_user_is_in_the_authenticated_group_as_the_aggregator_expects() {
        // kube-aggregator's discovery calls carry the user and no group at all; RBAC lets
        // them read discovery only through system:authenticated (system:discovery).
        let proxy = front_proxy(&configmap()).unwrap().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-remote-user",
            HeaderValue::from_static("system:kube-aggregator"),
        );
        assert_eq!(
            proxy.identity(&headers).unwrap().groups,
            ["system:authenticated"]
        );
        headers.append("x-remote-group", HeaderValue::from_static("system:masters"));
        assert_eq!(
            proxy.identity(&headers).unwrap().groups,
            ["system:masters", "system:authenticated"]
        );
        // Not added twice, and never to a request the proxy marks anonymous.
        headers.insert(
            "x-remote-user",
            HeaderValue::from_static("system:anonymous"),
        );
        headers.insert(
            "x-remote-group",
            HeaderValue::from_static("system:unauthenticated"),
        );
        assert_eq!(
            proxy.identity(&headers).unwrap().groups,
            ["system:unauthenticated"]
        );
    }

    #[test]
    fn a_metric_read_is_reviewed_as_list_on_the_metric_resource() {
        let identity = Identity {
            user: "hpa".into(),
            groups: vec!["g".into()],
            extra: BTreeMap::new(),
        };
        let read = attributes(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/skywalking/skywalking.apache.org%7Cservice_cpm",
        );
        assert_eq!(
            read,
            Attributes::Metric {
                namespace: "skywalking".into(),
                metric: "skywalking.apache.org|service_cpm".into()
            }
        );
        let review = access_review(&identity, &read);
        let resource = review.spec.resource_attributes.unwrap();
        assert_eq!(resource.group.as_deref(), Some("external.metrics.k8s.io"));
        assert_eq!(
            resource.resource.as_deref(),
            Some("skywalking.apache.org|service_cpm")
        );
        assert_eq!(resource.namespace.as_deref(), Some("skywalking"));
        assert_eq!(resource.verb.as_deref(), Some("list"));
        assert_eq!(review.spec.user.as_deref(), Some("hpa"));
        assert!(
            forbidden_message(&identity, &read, "").contains(
                "User \"hpa\" cannot list resource \"skywalking.apache.org|service_cpm\" in API group \"external.metrics.k8s.io\" in the namespace \"skywalking\""
            )
        );
    }

    #[test]
    fn other_paths_are_reviewed_as_non_resource_urls() {
        for path in [
            "/apis",
            "/apis/external.metrics.k8s.io/v1beta1",
            "/metrics",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns",
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m/extra",
        ] {
            assert_eq!(attributes(path), Attributes::Path(path.into()), "{path}");
        }
        let review = access_review(&Identity::default(), &Attributes::Path("/metrics".into()));
        let non_resource = review.spec.non_resource_attributes.unwrap();
        assert_eq!(non_resource.path.as_deref(), Some("/metrics"));
        assert!(review.spec.resource_attributes.is_none());
        assert!(is_public("/healthz") && !is_public("/apis") && !is_public("/metrics"));
    }
}
