//! What a cluster gives skylift-adapter, written into an API-server double: the
//! `skylift-system` namespace, `kube-system/extension-apiserver-authentication` trusting a
//! test front-proxy CA, the `v1beta1.external.metrics.k8s.io` APIService pointing at the
//! adapter's Service (without a caBundle: the adapter writes it), and the bootstrap
//! permissions of discovery (every authenticated user) and of the HPA controller (reading
//! external metrics).

use serde_json::{Value, json};

use crate::apiserver::State;

pub const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The name the aggregator reaches the adapter by.
pub const ADAPTER_HOST: &str = "skylift-adapter.skylift-system.svc";
/// The HPA controller's identity.
pub const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

/// The arguments skylift-adapter runs with in this cluster: serving on `listen`, named as the
/// APIService's Service, keeping its certificate in `skylift-system/skylift-adapter-tls` and
/// its CA in the APIService, reading OAP at `oap_url` every `refresh` (`1s`). The process
/// also needs `KUBECONFIG` naming the API-server double.
pub fn adapter_args(listen: std::net::SocketAddr, oap_url: &str, refresh: &str) -> Vec<String> {
    vec![
        format!("--secure-listen={listen}"),
        "--namespace=skylift-system".into(),
        "--service-name=skylift-adapter".into(),
        "--tls-secret=skylift-system/skylift-adapter-tls".into(),
        format!("--apiservice-name={APISERVICE}"),
        format!("--oap-url={oap_url}"),
        format!("--refresh-interval={refresh}"),
    ]
}

fn create(state: &State, group: &str, plural: &str, namespace: Option<&str>, object: Value) {
    if let Err(err) = state.create(group, plural, namespace, object) {
        panic!("creating {plural}: {}", err.message);
    }
}

/// The ConfigMap kube-apiserver publishes, trusting `front_proxy_ca` (PEM) for the CN
/// `front-proxy-client`.
pub fn authentication_configmap(front_proxy_ca: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": front_proxy_ca,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        },
    })
}

/// Writes the objects above into `state`.
pub fn install(state: &State, front_proxy_ca: &str) {
    create(
        state,
        "",
        "namespaces",
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "skylift-system"}}),
    );
    create(
        state,
        "",
        "configmaps",
        Some("kube-system"),
        authentication_configmap(front_proxy_ca),
    );
    create(
        state,
        "apiregistration.k8s.io",
        "apiservices",
        None,
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                     "service": {"name": "skylift-adapter", "namespace": "skylift-system", "port": 443},
                     "groupPriorityMinimum": 100, "versionPriority": 100},
        }),
    );
    // kube-apiserver's bootstrap policy: every authenticated user may read discovery and
    // OpenAPI (the aggregator's availability checks and discovery merge rely on it), and
    // the HPA controller may read external metrics.
    bootstrap_role(
        state,
        "system:discovery",
        json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz",
            "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
            "verbs": ["get"]}]),
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}),
    );
    bootstrap_role(
        state,
        "system:controller:horizontal-pod-autoscaler",
        json!([{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]),
        json!({"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}),
    );
}

/// A ClusterRole `name` with `rules`, bound to `subject` by a ClusterRoleBinding of the
/// same name, as kube-apiserver's bootstrap policy names them.
fn bootstrap_role(state: &State, name: &str, rules: Value, subject: Value) {
    create(
        state,
        "rbac.authorization.k8s.io",
        "clusterroles",
        None,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules}),
    );
    create(
        state,
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        None,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [subject]}),
    );
}
