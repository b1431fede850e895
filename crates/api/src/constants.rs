//! Values that cross a process boundary. Each is defined once here and used by both sides.

/// API group of every skylift resource.
pub const GROUP: &str = "skylift.io";
/// API version of every skylift resource.
pub const VERSION: &str = "v1alpha1";
/// The one server-side apply field manager the operator writes with.
pub const FIELD_MANAGER: &str = "skylift-operator";

/// skylift's release; the image tag everything defaults to.
pub const SKYLIFT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Repository of the one skylift image holding all three binaries.
pub const SKYLIFT_IMAGE_REPOSITORY: &str = "ghcr.io/skylift-io/skylift";

/// The image Satellites and Proxies run unless `spec.image` says otherwise.
pub fn default_proxy_image() -> String {
    format!("{SKYLIFT_IMAGE_REPOSITORY}:{SKYLIFT_VERSION}")
}

/// The image an OAPServer runs unless `spec.image` says otherwise.
pub fn default_oap_image(version: &str) -> String {
    format!("apache/skywalking-oap-server:{version}")
}

/// Ports, as OAP and skylift-proxy listen on them.
pub mod ports {
    /// SkyWalking gRPC (agents, Envoy ALS, Satellite traffic).
    pub const GRPC: i32 = 11800;
    /// OAP HTTP: GraphQL, REST receivers, `/healthcheck`.
    pub const OAP_HTTP: i32 = 12800;
    /// OAP's Prometheus telemetry and skylift-proxy's admin server (`/metrics`, health).
    pub const ADMIN: i32 = 1234;
}

/// Label and annotation keys.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const VERSION: &str = "app.kubernetes.io/version";
    /// `MANAGED_BY` value on every object the operator creates.
    pub const MANAGED_BY_VALUE: &str = "skylift-operator";
    pub const PART_OF_VALUE: &str = "skylift";
    /// Pod annotation giving an upstream endpoint's weight for weighted round-robin.
    pub const WEIGHT_ANNOTATION: &str = "skylift.io/weight";
    /// Pod annotation (`"true"`) that drains an upstream endpoint: published as draining,
    /// so proxies send it no new work, while the pod keeps running (before maintenance).
    pub const DRAINING_ANNOTATION: &str = "skylift.io/draining";
    /// Annotation holding the hash of the configuration the operator last applied.
    pub const APPLIED_HASH_ANNOTATION: &str = "skylift.io/applied-hash";
    /// Pod-template annotation with the hash of the configuration files a workload mounts
    /// (OAP's files, a collector's configuration): a change to them rolls the pods.
    pub const CONFIG_HASH_ANNOTATION: &str = "skylift.io/config-hash";
}

/// The published upstream list.
pub mod upstreams {
    /// Key of the endpoint list inside the `<name>-upstreams` ConfigMap.
    pub const CONFIGMAP_KEY: &str = "endpoints.json";
    /// Suffix of the ConfigMap name (`<resource name>-upstreams`).
    pub const CONFIGMAP_SUFFIX: &str = "-upstreams";
    /// Weight of an endpoint that has no `skylift.io/weight` annotation.
    pub const DEFAULT_WEIGHT: u32 = 1;
}

/// Metric names shared by the proxy (which reports), OAP (which aggregates) and the
/// adapter and operator (which read and scale on them).
pub mod metrics {
    /// Default metric-name prefix of the external metrics adapter (SWCK's form).
    pub const EXTERNAL_METRIC_PREFIX: &str = "skywalking.apache.org";
    /// OAP metric (stock `satellite` meter rules) of open connections per proxy instance.
    pub const SATELLITE_CONNECTION_COUNT: &str = "satellite_service_grpc_connect_count";
    /// The OAP service name the stock `satellite` rules give to a proxy's telemetry service.
    pub fn satellite_oap_service(telemetry_service: &str) -> String {
        format!("satellite::{telemetry_service}")
    }
    /// The external metric name an HPA asks for, e.g.
    /// `skywalking.apache.org|satellite_service_grpc_connect_count`.
    pub fn external_metric_name(prefix: &str, oap_metric: &str) -> String {
        format!("{prefix}|{oap_metric}")
    }
}

/// Where a pool's volumes are mounted in the proxy container.
pub mod proxy_paths {
    pub const QUEUE_DIR: &str = "/var/lib/skylift/queue";
    pub const TLS_DIR: &str = "/etc/skylift/tls";
    pub const UPSTREAM_TLS_DIR: &str = "/etc/skylift/upstream-tls";
    pub const AUTHENTICATION_DIR: &str = "/etc/skylift/authentication";
    /// The federation OAP's CA and token (`spec.federation`).
    pub const FEDERATION_TLS_DIR: &str = "/etc/skylift/federation-tls";
    pub const FEDERATION_AUTHENTICATION_DIR: &str = "/etc/skylift/federation-authentication";
    /// The file the token is mounted as, inside `AUTHENTICATION_DIR` (and
    /// `FEDERATION_AUTHENTICATION_DIR`).
    pub const AUTHENTICATION_FILE: &str = "token";
}
