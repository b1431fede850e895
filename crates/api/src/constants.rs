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

/// Command-line flags of `skylift-proxy` that the operator sets. The proxy defines its
/// flags with these names; the operator derives the arguments from a resource's spec.
pub mod proxy_flags {
    pub const LISTEN: &str = "--listen";
    pub const ADMIN_LISTEN: &str = "--admin-listen";
    pub const UPSTREAM: &str = "--upstream";
    pub const UPSTREAMS_CONFIGMAP: &str = "--upstreams-configmap";
    pub const MAX_CONNECTIONS: &str = "--max-connections";
    pub const QUEUE_PARTITIONS: &str = "--queue-partitions";
    pub const QUEUE_CAPACITY: &str = "--queue-capacity";
    pub const QUEUE_MAX_BYTES: &str = "--queue-max-bytes";
    pub const BATCH_SIZE: &str = "--batch-size";
    pub const FLUSH_INTERVAL: &str = "--flush-interval";
    pub const OVERFLOW: &str = "--overflow";
    pub const ROUTING: &str = "--routing";
    pub const METER_ROUTING: &str = "--meter-routing";
    pub const HASH_HEADER: &str = "--hash-header";
    pub const TELEMETRY_SERVICE: &str = "--telemetry-service";
    pub const TELEMETRY_INSTANCE: &str = "--telemetry-instance";
    pub const TELEMETRY_UPSTREAM: &str = "--telemetry-upstream";
    pub const LOG_FORMAT: &str = "--log-format";
    pub const QUEUE: &str = "--queue";
    pub const QUEUE_DIR: &str = "--queue-dir";
    pub const QUEUE_MAX_DISK_BYTES: &str = "--queue-max-disk-bytes";
    pub const FSYNC: &str = "--fsync";
    pub const FSYNC_INTERVAL: &str = "--fsync-interval";
    pub const TLS_CERT_FILE: &str = "--tls-cert-file";
    pub const TLS_KEY_FILE: &str = "--tls-key-file";
    pub const TLS_CLIENT_CA_FILE: &str = "--tls-client-ca-file";
    pub const UPSTREAM_TLS_CA_FILE: &str = "--upstream-tls-ca-file";
    pub const UPSTREAM_TLS_SERVER_NAME: &str = "--upstream-tls-server-name";
    pub const UPSTREAM_TLS_CERT_FILE: &str = "--upstream-tls-cert-file";
    pub const UPSTREAM_TLS_KEY_FILE: &str = "--upstream-tls-key-file";
    pub const AUTHENTICATION_FILE: &str = "--authentication-file";
    pub const MAX_CONNECTION_AGE: &str = "--max-connection-age";
    pub const MAX_CONNECTION_AGE_GRACE: &str = "--max-connection-age-grace";
    pub const HEALTH_CHECK_INTERVAL: &str = "--health-check-interval";
    pub const HEALTH_CHECK_TIMEOUT: &str = "--health-check-timeout";
    pub const HEALTH_CHECK_FAILURES: &str = "--health-check-failures";
    pub const OUTLIER_LATENCY_FACTOR: &str = "--outlier-latency-factor";
    pub const OUTLIER_MIN_LATENCY: &str = "--outlier-min-latency";
    pub const OUTLIER_EJECTION: &str = "--outlier-ejection";
}

/// Where a pool's volumes are mounted in the proxy container.
pub mod proxy_paths {
    pub const QUEUE_DIR: &str = "/var/lib/skylift/queue";
    pub const TLS_DIR: &str = "/etc/skylift/tls";
    pub const UPSTREAM_TLS_DIR: &str = "/etc/skylift/upstream-tls";
    pub const AUTHENTICATION_DIR: &str = "/etc/skylift/authentication";
    /// The file the token is mounted as, inside `AUTHENTICATION_DIR`.
    pub const AUTHENTICATION_FILE: &str = "token";
}
