//! The objects a `Satellite` or `Proxy` pool is made of. Both kinds are first reduced to a
//! [`PoolView`], so the two share one builder.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EmptyDirVolumeSource, HTTPGetAction, KeyToPath, PodSpec, Probe,
    ResourceRequirements, SecretVolumeSource, Service, ServiceAccount, ServicePort, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use skylift_api::common::ServiceAddress;
use skylift_api::constants::proxy_paths as path;
use skylift_api::constants::{self, metrics, ports, upstreams};
use skylift_api::duration;
use skylift_api::pool::{
    Autoscaling, Federation, HttpListener, PoolHardening, QueueSpec, quantity_bytes,
};
use skylift_api::proxy::{OtlpLogsRouting, OtlpRouting};
use skylift_api::proxy_args::{MeterRoutingArg, OtlpLogsArg, ProxyArgs, QueueArg, RoutingArg};
use skylift_api::{PodTemplateOverrides, Proxy, Satellite, ServiceOptions, UpstreamEndpoints};

use super::meta::{Labels, child_meta};
use super::oapserver::{container_port, field_ref, service_for, service_port};
use super::podspec::{Hardening, PodParts, deployment_spec, pod_template};
use super::rbac::{read_rule, workload_identity};

/// Which resource a pool comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Satellite,
    Proxy,
}

impl PoolKind {
    /// `app.kubernetes.io/name` of the pool's pods, and the suffix of its object names.
    pub fn app_name(self) -> &'static str {
        match self {
            PoolKind::Satellite => "satellite",
            PoolKind::Proxy => "proxy",
        }
    }
}

/// Where a pool's upstream endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum UpstreamSource {
    /// The ready pods of an OAPServer in the same namespace.
    OapServer(String),
    /// Ready pods with these labels, on this port.
    Selector {
        labels: BTreeMap<String, String>,
        port: i32,
    },
    /// Fixed addresses.
    Addresses(Vec<String>),
}

/// Self-telemetry settings of a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryView {
    /// Service name the proxies report as (OAP shows `satellite::<service>`).
    pub service: String,
    /// A separate OAP address for telemetry, instead of the pool's upstreams.
    pub upstream: Option<String>,
}

/// What the builder needs from a Satellite or a Proxy.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub kind: PoolKind,
    pub name: String,
    pub namespace: String,
    pub image: String,
    pub replicas: i32,
    pub upstream: UpstreamSource,
    pub max_connections: Option<i32>,
    pub autoscaling: Option<Autoscaling>,
    pub queue: Option<QueueSpec>,
    /// Balancing of messages without a routing key.
    pub routing: RoutingArg,
    /// With `routing: hash`: the request header hashed.
    pub hash_header: Option<String>,
    pub meter_routing: MeterRoutingArg,
    pub telemetry: Option<TelemetryView>,
    pub service: Option<ServiceOptions>,
    pub resources: Option<ResourceRequirements>,
    pub pod_template: Option<PodTemplateOverrides>,
    /// TLS, authentication, rebalancing and upstream health.
    pub hardening: PoolHardening,
    /// The federation pool copies of some reports also go to.
    pub federation: Option<Federation>,
    /// HTTP served beside gRPC, and where it goes.
    pub http: Option<HttpView>,
    /// OTLP exports routed by affinity (a Proxy's `routing.otlp`).
    pub otlp: Option<OtlpRouting>,
}

/// HTTP beside gRPC: the upstreams' HTTP port and the Service port clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpView {
    pub upstream_port: i32,
    pub service_port: i32,
}

impl HttpView {
    /// `listener`'s ports, the upstream port defaulting to `default_upstream_port`.
    fn of(listener: &HttpListener, default_upstream_port: Option<i32>) -> Option<HttpView> {
        let upstream_port = listener.upstream_port.or(default_upstream_port)?;
        Some(HttpView {
            upstream_port,
            service_port: listener.service_port.unwrap_or(upstream_port),
        })
    }
}

/// Where a Satellite's upstreams come from.
pub fn satellite_upstream(sat: &Satellite) -> UpstreamSource {
    let upstream = &sat.spec.upstream;
    match (
        &upstream.oap_server_ref,
        &upstream.selector,
        &upstream.addresses,
    ) {
        (Some(oap), _, _) => UpstreamSource::OapServer(oap.name.clone()),
        (None, Some(selector), _) => UpstreamSource::Selector {
            labels: selector.match_labels.clone(),
            port: selector.port,
        },
        (None, None, addresses) => UpstreamSource::Addresses(addresses.clone().unwrap_or_default()),
    }
}

/// Where a Proxy's upstreams come from.
pub fn proxy_upstream(proxy: &Proxy) -> UpstreamSource {
    match (
        &proxy.spec.upstream.selector,
        &proxy.spec.upstream.addresses,
    ) {
        (Some(selector), _) => UpstreamSource::Selector {
            labels: selector.match_labels.clone(),
            port: selector.port,
        },
        (None, addresses) => UpstreamSource::Addresses(addresses.clone().unwrap_or_default()),
    }
}

impl From<&Satellite> for PoolView {
    /// With skylift's own image as the default.
    fn from(sat: &Satellite) -> Self {
        PoolView::of_satellite(sat, &constants::default_proxy_image())
    }
}

impl From<&Proxy> for PoolView {
    /// With skylift's own image as the default.
    fn from(proxy: &Proxy) -> Self {
        PoolView::of_proxy(proxy, &constants::default_proxy_image())
    }
}

impl PoolView {
    /// A Satellite's pool; `default_image` runs unless `spec.image` is set.
    pub fn of_satellite(sat: &Satellite, default_image: &str) -> Self {
        let spec = &sat.spec;
        let upstream = satellite_upstream(sat);
        let routing = spec.routing.clone().unwrap_or_default();
        PoolView {
            kind: PoolKind::Satellite,
            name: sat.metadata.name.clone().unwrap_or_default(),
            namespace: sat.metadata.namespace.clone().unwrap_or_default(),
            image: spec.image.clone().unwrap_or_else(|| default_image.into()),
            replicas: spec.replicas,
            upstream,
            max_connections: spec.connection_limit.as_ref().map(|l| l.max_connections),
            autoscaling: spec.autoscaling.clone(),
            queue: spec.queue.clone(),
            routing: routing.default.into(),
            hash_header: None,
            meter_routing: routing.meter.into(),
            telemetry: Some(TelemetryView {
                service: sat.telemetry_service(),
                upstream: None,
            }),
            service: spec.service.clone(),
            resources: spec.resources.clone(),
            pod_template: spec.pod_template.clone(),
            hardening: spec.hardening.clone(),
            federation: spec.federation.clone(),
            http: spec
                .listeners
                .as_ref()
                .and_then(|l| l.http.as_ref())
                .and_then(|http| HttpView::of(http, Some(ports::OAP_HTTP))),
            otlp: None,
        }
    }

    /// A Proxy's pool; `default_image` runs unless `spec.image` is set.
    pub fn of_proxy(proxy: &Proxy, default_image: &str) -> Self {
        let spec = &proxy.spec;
        let upstream = proxy_upstream(proxy);
        let routing = spec.routing.clone().unwrap_or_default();
        PoolView {
            kind: PoolKind::Proxy,
            name: proxy.metadata.name.clone().unwrap_or_default(),
            namespace: proxy.metadata.namespace.clone().unwrap_or_default(),
            image: spec.image.clone().unwrap_or_else(|| default_image.into()),
            replicas: spec.replicas,
            upstream,
            max_connections: spec.connection_limit.as_ref().map(|l| l.max_connections),
            autoscaling: spec.autoscaling.clone(),
            queue: spec.queue.clone(),
            routing: routing.default.into(),
            hash_header: routing.hash_header,
            // A Proxy carries no meter data of its own to pin: the proxy's default.
            meter_routing: MeterRoutingArg::Fixed,
            telemetry: spec.telemetry.as_ref().map(|t| TelemetryView {
                service: t.service.clone(),
                upstream: t.oap_address.clone(),
            }),
            service: spec.service.clone(),
            resources: spec.resources.clone(),
            pod_template: spec.pod_template.clone(),
            hardening: spec.hardening.clone(),
            federation: spec.federation.clone(),
            // The CRD requires a Proxy's upstream port.
            http: spec
                .listeners
                .as_ref()
                .and_then(|l| l.http.as_ref())
                .and_then(|http| HttpView::of(http, None)),
            otlp: spec.routing.as_ref().and_then(|r| r.otlp.clone()),
        }
    }
}

impl PoolView {
    /// Name of the Deployment, Service, ServiceAccount, Role, RoleBinding and HPA.
    pub fn workload_name(&self) -> String {
        workload_name(self.kind, &self.name)
    }

    /// Name of the ConfigMap the endpoints are published in.
    pub fn configmap_name(&self) -> String {
        configmap_name(&self.name)
    }

    fn labels(&self) -> Labels {
        Labels {
            name: self.kind.app_name(),
            instance: self.name.clone(),
            component: "proxy",
            version: constants::SKYLIFT_VERSION.into(),
        }
    }

    /// Labels selecting the pool's own pods.
    pub fn pod_selector(&self) -> BTreeMap<String, String> {
        self.labels().selector()
    }

    /// Where clients reach the pool.
    pub fn address(&self) -> ServiceAddress {
        ServiceAddress {
            grpc: format!(
                "{}.{}.svc:{}",
                self.workload_name(),
                self.namespace,
                ports::GRPC
            ),
            http: None,
        }
    }

    /// The arguments skylift-proxy runs with.
    pub fn proxy_args(&self) -> Vec<String> {
        self.proxy_settings().to_args()
    }

    /// skylift-proxy's settings for this pool; [`ProxyArgs::to_args`] renders them.
    pub fn proxy_settings(&self) -> ProxyArgs {
        let mut args = ProxyArgs::defaults();
        args.listen = ([0, 0, 0, 0], port(ports::GRPC)).into();
        args.admin_listen = ([0, 0, 0, 0], port(ports::ADMIN)).into();
        args.upstreams_configmap = Some(format!("{}/{}", self.namespace, self.configmap_name()));
        if let Some(max) = self.max_connections {
            args.max_connections = count(max);
        }
        if let Some(queue) = &self.queue {
            if let Some(partitions) = queue.partitions {
                args.queue_partitions = Some(count(partitions));
            }
            if let Some(capacity) = queue.capacity_per_partition {
                args.queue_capacity = count(capacity);
            }
            if let Some(bytes) = byte_count(&queue.max_bytes_per_partition) {
                args.queue_max_bytes = bytes;
            }
            if let Some(batch) = queue.batch_size {
                args.batch_size = count(batch);
            }
            set_duration(&mut args.flush_interval, &queue.flush_interval);
            if let Some(overflow) = queue.overflow {
                args.overflow = overflow.into();
            }
            if let Some(attempts) = queue.delivery_attempts {
                args.delivery_attempts = u16::try_from(attempts).unwrap_or(0);
            }
            if let Some(disk) = &queue.disk {
                args.queue = QueueArg::Disk;
                args.queue_dir = Some(path::QUEUE_DIR.into());
                // A margin below the volume's limit: the kubelet evicts a pod whose
                // emptyDir outgrows it.
                args.queue_max_disk_bytes = quantity_bytes(&disk.size_limit).map(|b| b / 10 * 9);
                if let Some(fsync) = disk.fsync {
                    args.fsync = fsync.into();
                }
                set_duration(&mut args.fsync_interval, &disk.fsync_interval);
            }
        }
        args.routing = self.routing;
        args.hash_header = self.hash_header.clone();
        args.meter_routing = self.meter_routing;
        args.upstream_http_port = self.http.map(|http| port(http.upstream_port));
        if let Some(otlp) = &self.otlp {
            args.otlp_affinity = true;
            if let Some(attribute) = &otlp.metrics_attribute {
                args.otlp_metrics_attribute = attribute.clone();
            }
            args.otlp_logs_routing = match otlp.logs {
                OtlpLogsRouting::RoundRobin => OtlpLogsArg::RoundRobin,
                OtlpLogsRouting::TraceId => OtlpLogsArg::TraceId,
            };
        }
        self.set_hardening(&mut args);
        if let Some(federation) = &self.federation {
            self.set_federation(federation, &mut args);
        }
        if let Some(telemetry) = &self.telemetry {
            args.telemetry_service = Some(telemetry.service.clone());
            args.telemetry_instance = Some("$(POD_NAME)".into());
            args.telemetry_upstream = telemetry.upstream.clone();
        }
        args.log_format = skylift_api::logging::LogFormat::Json;
        args
    }

    fn set_hardening(&self, args: &mut ProxyArgs) {
        let hardening = &self.hardening;
        if let Some(tls) = &hardening.tls {
            args.tls_cert_file = Some(format!("{}/tls.crt", path::TLS_DIR).into());
            args.tls_key_file = Some(format!("{}/tls.key", path::TLS_DIR).into());
            if tls.require_client_certificates {
                args.tls_client_ca_file = Some(format!("{}/ca.crt", path::TLS_DIR).into());
            }
        }
        if let Some(tls) = &hardening.upstream_tls {
            let dir = path::UPSTREAM_TLS_DIR;
            args.upstream_tls_ca_file = Some(format!("{dir}/ca.crt").into());
            args.upstream_tls_server_name = tls.server_name.clone();
            if tls.client_certificate {
                args.upstream_tls_cert_file = Some(format!("{dir}/tls.crt").into());
                args.upstream_tls_key_file = Some(format!("{dir}/tls.key").into());
            }
        }
        if hardening.authentication.is_some() {
            args.authentication_file =
                Some(format!("{}/{}", path::AUTHENTICATION_DIR, path::AUTHENTICATION_FILE).into());
        }
        if let Some(rebalancing) = &hardening.rebalancing {
            set_duration(
                &mut args.max_connection_age,
                &Some(rebalancing.max_connection_age.clone()),
            );
            set_duration(&mut args.max_connection_age_grace, &rebalancing.grace);
        }
        if let Some(health) = &hardening.upstream_health {
            set_duration(&mut args.health_check_interval, &health.check_interval);
            set_duration(&mut args.health_check_timeout, &health.check_timeout);
            if let Some(failures) = health.check_failures {
                args.health_check_failures = u32::try_from(failures).unwrap_or(0);
            }
            if let Some(factor) = health.slow_factor {
                args.outlier_latency_factor = f64::from(factor);
            }
            set_duration(&mut args.outlier_min_latency, &health.slow_min_latency);
            set_duration(&mut args.outlier_ejection, &health.slow_ejection);
            set_duration(&mut args.upstream_timeout, &health.call_timeout);
            set_duration(&mut args.upstream_answer_timeout, &health.answer_timeout);
            if let Some(percent) = health.max_ejection_percent {
                args.max_ejection_percent = u32::try_from(percent).unwrap_or(0);
            }
        }
    }

    fn set_federation(&self, federation: &Federation, args: &mut ProxyArgs) {
        args.federation_upstreams = match (&federation.oap_server_ref, &federation.addresses) {
            // Its gRPC Service: kube-proxy spreads the proxy's connections over its pods.
            (Some(oap), _) => vec![format!(
                "{}.{}.svc:{}",
                super::oapserver::workload_name(&oap.name),
                oap.namespace.as_deref().unwrap_or(&self.namespace),
                ports::GRPC
            )],
            (None, addresses) => addresses.clone().unwrap_or_default(),
        };
        if let Some(protocols) = &federation.protocols {
            args.federation_protocols = protocols.iter().map(|p| p.name().to_string()).collect();
        }
        if let Some(tls) = &federation.tls {
            args.federation_tls_ca_file =
                Some(format!("{}/ca.crt", path::FEDERATION_TLS_DIR).into());
            args.federation_tls_server_name = tls.server_name.clone();
            if tls.client_certificate {
                let dir = path::FEDERATION_TLS_DIR;
                args.federation_tls_cert_file = Some(format!("{dir}/tls.crt").into());
                args.federation_tls_key_file = Some(format!("{dir}/tls.key").into());
            }
        }
        if federation.authentication.is_some() {
            args.federation_authentication_file = Some(
                format!(
                    "{}/{}",
                    path::FEDERATION_AUTHENTICATION_DIR,
                    path::AUTHENTICATION_FILE
                )
                .into(),
            );
        }
        if let Some(queue) = &federation.queue {
            if let Some(capacity) = queue.capacity_per_partition {
                args.federation_queue_capacity = count(capacity);
            }
            if let Some(bytes) = byte_count(&queue.max_bytes_per_partition) {
                args.federation_queue_max_bytes = bytes;
            }
        }
        if let Some(compression) = federation.compression {
            args.federation_compression = compression.into();
        }
    }

    /// The volumes the proxy needs (journal, TLS and token Secrets) and where they are
    /// mounted.
    pub fn proxy_volumes(&self) -> (Vec<Volume>, Vec<VolumeMount>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let mut mount = |name: &str, at: &str, read_only: bool| {
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: at.into(),
                read_only: Some(read_only),
                ..VolumeMount::default()
            })
        };
        if let Some(disk) = self.queue.as_ref().and_then(|q| q.disk.as_ref()) {
            volumes.push(Volume {
                name: "queue".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(disk.size_limit.clone())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            });
            mount("queue", path::QUEUE_DIR, false);
        }
        let hardening = &self.hardening;
        if let Some(tls) = &hardening.tls {
            volumes.push(secret_volume("tls", &tls.secret_name, None));
            mount("tls", path::TLS_DIR, true);
        }
        if let Some(tls) = &hardening.upstream_tls {
            volumes.push(secret_volume("upstream-tls", &tls.secret_name, None));
            mount("upstream-tls", path::UPSTREAM_TLS_DIR, true);
        }
        if let Some(authentication) = &hardening.authentication {
            volumes.push(secret_volume(
                "authentication",
                &authentication.secret_name,
                Some((&authentication.key, path::AUTHENTICATION_FILE)),
            ));
            mount("authentication", path::AUTHENTICATION_DIR, true);
        }
        if let Some(federation) = &self.federation {
            if let Some(tls) = &federation.tls {
                volumes.push(secret_volume("federation-tls", &tls.secret_name, None));
                mount("federation-tls", path::FEDERATION_TLS_DIR, true);
            }
            if let Some(authentication) = &federation.authentication {
                volumes.push(secret_volume(
                    "federation-authentication",
                    &authentication.secret_name,
                    Some((&authentication.key, path::AUTHENTICATION_FILE)),
                ));
                mount(
                    "federation-authentication",
                    path::FEDERATION_AUTHENTICATION_DIR,
                    true,
                );
            }
        }
        (volumes, mounts)
    }
}

/// A Secret as a volume, readable by the proxy's group only; `item`: one key, mounted
/// under another name. Not a `subPath` mount, so renewals reach the files.
fn secret_volume(name: &str, secret: &str, item: Option<(&str, &str)>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            items: item.map(|(key, file)| {
                vec![KeyToPath {
                    key: key.into(),
                    path: file.into(),
                    mode: None,
                }]
            }),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

pub fn workload_name(kind: PoolKind, name: &str) -> String {
    format!("{name}-{}", kind.app_name())
}

pub fn configmap_name(name: &str) -> String {
    format!("{name}{}", upstreams::CONFIGMAP_SUFFIX)
}

/// Every object of one pool.
#[derive(Clone, Debug)]
pub struct PoolObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// Present when `spec.autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
}

impl PoolObjects {
    /// The Deployment's pod spec.
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        self.deployment.spec.as_ref()?.template.spec.as_ref()
    }

    /// The arguments the Deployment runs skylift-proxy with.
    pub fn proxy_container_args(&self) -> &[String] {
        self.pod_spec()
            .and_then(|pod| pod.containers.first())
            .and_then(|container| container.args.as_deref())
            .unwrap_or_default()
    }
}

/// Builds the pool's objects; `endpoints` is what the ConfigMap publishes.
pub fn build<K: Resource<DynamicType = ()>>(
    owner: &K,
    pool: &PoolView,
    endpoints: &UpstreamEndpoints,
) -> PoolObjects {
    let labels = pool.labels();
    let workload = pool.workload_name();
    let meta = |name: String| child_meta(owner, name, labels.all());

    // The proxies read their own upstream list and nothing else: no pod access at all.
    // (`list` is needed, with a metadata.name field selector, to start a watch.)
    let identity = workload_identity(
        meta(workload.clone()),
        vec![read_rule("configmaps", Some(vec![pool.configmap_name()]))],
    );
    let config_map = ConfigMap {
        metadata: meta(pool.configmap_name()),
        data: Some(BTreeMap::from([(
            upstreams::CONFIGMAP_KEY.to_string(),
            endpoints.to_json(),
        )])),
        ..ConfigMap::default()
    };

    let (volumes, volume_mounts) = pool.proxy_volumes();
    let container = Container {
        name: "proxy".into(),
        image: Some(pool.image.clone()),
        args: Some(pool.proxy_args()),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        env: Some(vec![field_ref("POD_NAME", "metadata.name")]),
        ports: Some(vec![
            container_port("grpc", ports::GRPC),
            container_port("admin", ports::ADMIN),
        ]),
        resources: Some(
            pool.resources
                .clone()
                .unwrap_or_else(default_proxy_resources),
        ),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        ..Container::default()
    };
    let template = pod_template(
        PodParts {
            labels: pool.labels(),
            service_account: Some(workload.clone()),
            container,
            annotations: BTreeMap::new(),
            hardening: Hardening::SkyliftImage,
            // Time to stop accepting, send GOAWAY and flush the queues.
            termination_grace_period_seconds: 30,
            volumes,
        },
        pool.pod_template.as_ref(),
    );
    let deployment = Deployment {
        metadata: meta(workload.clone()),
        spec: Some(deployment_spec(pool.replicas, labels.selector(), template)),
        status: None,
    };
    let mut service_ports = vec![
        service_port("grpc", ports::GRPC),
        service_port("admin", ports::ADMIN),
    ];
    if let Some(http) = pool.http {
        // HTTP is served on the gRPC port; its own Service port keeps the port clients
        // know (12800 for OAP's HTTP receivers, 4318 for OTLP/HTTP).
        service_ports.push(ServicePort {
            name: Some("http".into()),
            port: http.service_port,
            target_port: Some(IntOrString::String("grpc".into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    let service = service_for(
        meta(workload.clone()),
        pool.service.as_ref(),
        labels.selector(),
        service_ports,
    );
    let hpa =
        pool.autoscaling
            .as_ref()
            .zip(pool.telemetry.as_ref())
            .map(|(autoscaling, telemetry)| HorizontalPodAutoscaler {
                metadata: meta(workload.clone()),
                spec: Some(hpa_spec::<K>(pool, autoscaling, telemetry)),
                status: None,
            });

    PoolObjects {
        service_account: identity.service_account,
        role: identity.role,
        role_binding: identity.role_binding,
        config_map,
        deployment,
        service,
        hpa,
    }
}

/// The autoscaler: it scales the resource itself (through `/scale`) on the connection
/// count the pool reports to OAP, read through skylift-adapter as an External metric.
fn hpa_spec<K: Resource<DynamicType = ()>>(
    pool: &PoolView,
    autoscaling: &Autoscaling,
    telemetry: &TelemetryView,
) -> HorizontalPodAutoscalerSpec {
    let oap_service = metrics::satellite_oap_service(&telemetry.service);
    HorizontalPodAutoscalerSpec {
        scale_target_ref: CrossVersionObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: K::kind(&()).into_owned(),
            name: pool.name.clone(),
        },
        min_replicas: Some(autoscaling.min_replicas),
        max_replicas: autoscaling.max_replicas,
        metrics: Some(vec![MetricSpec {
            type_: "External".into(),
            external: Some(ExternalMetricSource {
                metric: MetricIdentifier {
                    name: metrics::external_metric_name(
                        metrics::EXTERNAL_METRIC_PREFIX,
                        metrics::SATELLITE_CONNECTION_COUNT,
                    ),
                    selector: Some(LabelSelector {
                        match_labels: Some(metric_selector(pool, telemetry, &oap_service)),
                        ..LabelSelector::default()
                    }),
                },
                target: MetricTarget {
                    type_: "Value".into(),
                    value: Some(Quantity(
                        autoscaling.target_connections_per_replica.to_string(),
                    )),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        }]),
        behavior: Some(
            autoscaling
                .behavior
                .clone()
                .unwrap_or_else(default_behavior),
        ),
    }
}

/// The HPA's metric selector: the pool's telemetry service, and, when the pool reports it
/// to an OAPServer (its upstream, no separate telemetry address), that OAPServer, so the
/// adapter reads the OAP that has the metric however many OAPs the cluster runs (`oap`,
/// SWCK-escaped: a label value cannot hold the `/` of `<namespace>/<name>`).
fn metric_selector(
    pool: &PoolView,
    telemetry: &TelemetryView,
    oap_service: &str,
) -> BTreeMap<String, String> {
    let mut labels = skylift_api::metric_selector::escape("service", oap_service);
    if let (UpstreamSource::OapServer(oap), None) = (&pool.upstream, &telemetry.upstream) {
        labels.extend(skylift_api::metric_selector::escape(
            "oap",
            &format!("{}/{oap}", pool.namespace),
        ));
    }
    labels
}

/// Scale up only after connections stayed high for a minute, by the smallest step the
/// policies allow: new replicas only get new connections, so overshooting is costly.
fn default_behavior() -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(60),
            select_policy: Some("Min".into()),
            ..HPAScalingRules::default()
        }),
        scale_down: None,
    }
}

fn default_proxy_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// One of skylift's own ports.
fn port(number: i32) -> u16 {
    u16::try_from(number).expect("skylift's ports are TCP ports")
}

/// A count from the spec (the schema keeps it at 0 or more).
/// The bytes of a quantity setting, as the proxy takes them (the schema only lets
/// quantities through).
fn byte_count(quantity: &Option<String>) -> Option<usize> {
    quantity
        .as_deref()
        .and_then(quantity_bytes)
        .map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX))
}

fn count(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

/// Sets a duration the spec gives; the schema only lets durations the proxy reads through.
fn set_duration(setting: &mut std::time::Duration, spec: &Option<String>) {
    if let Some(value) = spec.as_deref().and_then(|d| duration::parse(d).ok()) {
        *setting = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;
    use kube::api::ObjectMeta;
    use skylift_api::{ProxySpec, SatelliteSpec, UpstreamEndpoint};

    fn meta(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("obs".into()),
            uid: Some(uid.into()),
            generation: Some(1),
            ..ObjectMeta::default()
        }
    }

    fn satellite(spec: serde_json::Value) -> Satellite {
        let mut sat = Satellite::new(
            "ingest",
            serde_json::from_value::<SatelliteSpec>(spec).unwrap(),
        );
        sat.metadata = meta("ingest", "uid-sat");
        sat
    }

    fn proxy(spec: serde_json::Value) -> Proxy {
        let mut proxy = Proxy::new("otlp", serde_json::from_value::<ProxySpec>(spec).unwrap());
        proxy.metadata = meta("otlp", "uid-proxy");
        proxy
    }

    fn endpoints() -> UpstreamEndpoints {
        UpstreamEndpoints {
            endpoints: vec![UpstreamEndpoint {
                address: "10.1.2.3:11800".into(),
                weight: 1,
                pod: Some("skywalking-oap-7c9f-x2".into()),
                zone: None,
                draining: false,
            }],
        }
    }

    fn build_satellite(spec: serde_json::Value) -> PoolObjects {
        let sat = satellite(spec);
        build(&sat, &PoolView::from(&sat), &endpoints())
    }

    fn args(objects: &PoolObjects) -> Vec<String> {
        objects.proxy_container_args().to_vec()
    }

    /// The hardened Satellite of the docs: disk queue, mutual TLS both ways, the OAP
    /// token, rebalancing and upstream health settings.
    pub(crate) fn hardened_spec() -> serde_json::Value {
        serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "queue": {"partitions": 2, "maxBytesPerPartition": "32Mi",
                      "disk": {"sizeLimit": "1Gi", "fsync": "always"}},
            "tls": {"secretName": "ingest-tls", "requireClientCertificates": true},
            "upstreamTls": {"secretName": "oap-tls", "serverName": "skywalking-oap.obs.svc",
                            "clientCertificate": true},
            "authentication": {"secretName": "oap-token"},
            "rebalancing": {"maxConnectionAge": "10m"},
            "upstreamHealth": {"checkInterval": "2s", "checkFailures": 3, "slowFactor": 4,
                               "slowEjection": "30s", "callTimeout": "20s", "answerTimeout": "1m"}
        })
    }

    #[test]
    fn hardening_settings_become_flags_and_volumes() {
        let objects = build_satellite(hardened_spec());
        let args = args(&objects);
        let expected = [
            "--queue-max-bytes=33554432",
            "--queue=disk",
            "--queue-dir=/var/lib/skylift/queue",
            // 90 % of 1 GiB.
            "--queue-max-disk-bytes=966367638",
            "--fsync=always",
            "--tls-cert-file=/etc/skylift/tls/tls.crt",
            "--tls-key-file=/etc/skylift/tls/tls.key",
            "--tls-client-ca-file=/etc/skylift/tls/ca.crt",
            "--upstream-tls-ca-file=/etc/skylift/upstream-tls/ca.crt",
            "--upstream-tls-server-name=skywalking-oap.obs.svc",
            "--upstream-tls-cert-file=/etc/skylift/upstream-tls/tls.crt",
            "--upstream-tls-key-file=/etc/skylift/upstream-tls/tls.key",
            "--authentication-file=/etc/skylift/authentication/token",
            "--max-connection-age=10m",
            "--health-check-interval=2s",
            "--health-check-failures=3",
            "--outlier-latency-factor=4",
            "--outlier-ejection=30s",
            "--upstream-timeout=20s",
            "--upstream-answer-timeout=1m",
        ];
        for flag in expected {
            assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
        }
        let settings = PoolView::from(&satellite(hardened_spec())).proxy_settings();
        assert_eq!(settings.queue_capacity, 5000, "the proxy's default");
        let pod = objects.pod_spec().unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["queue", "tls", "upstream-tls", "authentication"]);
        assert_eq!(
            volumes[0].empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("1Gi".into()))
        );
        let token = volumes[3].secret.as_ref().unwrap();
        assert_eq!(token.secret_name.as_deref(), Some("oap-token"));
        let item = &token.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str()), ("token", "token"));
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        let writable: Vec<&str> = mounts
            .iter()
            .filter(|m| m.read_only != Some(true))
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(writable, ["/var/lib/skylift/queue"], "only the journal");
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));

        // Nothing of it by default.
        let plain = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}}
        }));
        let pod = plain.deployment.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn http_listeners_and_otlp_routing_become_flags_and_a_service_port() {
        let http_port = |objects: &PoolObjects| {
            objects
                .service
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .map(|p| (p.port, p.target_port.clone()))
        };
        let parses = |args: Vec<String>| {
            let parsed = <ProxyArgs as clap::Parser>::try_parse_from(
                std::iter::once("skylift-proxy".to_string()).chain(args),
            )
            .unwrap();
            assert_eq!(parsed.check(), Ok(()));
            parsed
        };
        // A Satellite for the browser agent: OAP's REST port by default, on 12800.
        let satellite = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "listeners": {"http": {}},
        }));
        let parsed = parses(args(&satellite));
        assert_eq!(parsed.upstream_http_port, Some(12800));
        assert!(!parsed.otlp_affinity);
        assert_eq!(
            http_port(&satellite),
            Some((12800, Some(IntOrString::String("grpc".into()))))
        );
        // Without listeners: gRPC only, no HTTP Service port.
        let plain = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
        }));
        assert_eq!(parses(args(&plain)).upstream_http_port, None);
        assert_eq!(http_port(&plain), None);
        // A Proxy of collectors: OTLP/HTTP to 4318, clients on 80, traces by affinity.
        let collectors = proxy(serde_json::json!({
            "upstream": {"selector": {"matchLabels": {"app": "collector"}, "port": 4317}},
            "listeners": {"http": {"upstreamPort": 4318, "servicePort": 80}},
            "routing": {"otlp": {"metricsAttribute": "k8s.pod.name", "logs": "traceID"}},
        }));
        let objects = build(&collectors, &PoolView::from(&collectors), &endpoints());
        let parsed = parses(args(&objects));
        assert_eq!(parsed.upstream_http_port, Some(4318));
        assert!(parsed.otlp_affinity);
        assert_eq!(parsed.otlp_metrics_attribute, "k8s.pod.name");
        assert_eq!(parsed.otlp_logs_routing, OtlpLogsArg::TraceId);
        assert_eq!(http_port(&objects).map(|(port, _)| port), Some(80));
        // routing.otlp alone: affinity over gRPC with the defaults.
        let grpc_only = proxy(serde_json::json!({
            "upstream": {"addresses": ["collector:4317"]},
            "routing": {"otlp": {}},
        }));
        let objects = build(&grpc_only, &PoolView::from(&grpc_only), &endpoints());
        let parsed = parses(args(&objects));
        assert!(parsed.otlp_affinity);
        assert_eq!(parsed.otlp_metrics_attribute, "service.name");
        assert_eq!(parsed.otlp_logs_routing, OtlpLogsArg::RoundRobin);
        assert_eq!(parsed.upstream_http_port, None);
    }

    #[test]
    fn a_federation_becomes_the_proxys_federation_flags_and_volumes() {
        // A central OAP over the WAN, with TLS, a token and traces too.
        let remote = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "federation": {
                "addresses": ["central-oap.example.com:11800"],
                "protocols": ["meter", "jvm", "segment"],
                "tls": {"secretName": "central-ca", "serverName": "oap.central.example.com",
                        "clientCertificate": true},
                "authentication": {"secretName": "central-token", "key": "oap-token"},
                "queue": {"capacityPerPartition": 50000, "maxBytesPerPartition": "64Mi"},
            }
        }));
        let args = args(&remote);
        for flag in [
            "--federation-upstream=central-oap.example.com:11800",
            "--federation-protocols=meter",
            "--federation-protocols=jvm",
            "--federation-protocols=segment",
            "--federation-queue-capacity=50000",
            "--federation-queue-max-bytes=67108864",
            "--federation-tls-ca-file=/etc/skylift/federation-tls/ca.crt",
            "--federation-tls-server-name=oap.central.example.com",
            "--federation-tls-cert-file=/etc/skylift/federation-tls/tls.crt",
            "--federation-tls-key-file=/etc/skylift/federation-tls/tls.key",
            "--federation-authentication-file=/etc/skylift/federation-authentication/token",
        ] {
            assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
        }
        let pod = remote.pod_spec().unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["federation-tls", "federation-authentication"]);
        let token = volumes[1].secret.as_ref().unwrap();
        assert_eq!(token.secret_name.as_deref(), Some("central-token"));
        let item = &token.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("oap-token", "token")
        );
        // The proxy takes what the operator renders.
        let parsed = <ProxyArgs as clap::Parser>::try_parse_from(
            std::iter::once("skylift-proxy".to_string()).chain(args),
        )
        .unwrap();
        assert_eq!(parsed.check(), Ok(()));

        // An OAPServer of another namespace, at its gRPC Service; the default protocols.
        let central = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "federation": {"oapServerRef": {"name": "central", "namespace": "observability"}}
        }));
        let args = self::args(&central);
        assert!(
            args.contains(&"--federation-upstream=central-oap.observability.svc:11800".to_string()),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--federation-protocols")),
            "{args:?}"
        );
        let same_namespace = PoolView::from(&satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "federation": {"oapServerRef": {"name": "central"}, "compression": "none"}
        })))
        .proxy_settings();
        assert_eq!(
            same_namespace.federation_upstreams,
            ["central-oap.obs.svc:11800"].map(String::from).to_vec()
        );
        assert_eq!(
            same_namespace.federation_compression,
            skylift_api::proxy_args::CompressionArg::None
        );
    }

    #[test]
    fn satellite_runs_skylift_proxy_with_flags_from_the_spec() {
        let objects = build_satellite(serde_json::json!({
            "replicas": 2,
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "connectionLimit": {"maxConnections": 11},
            "queue": {"partitions": 4, "capacityPerPartition": 5000, "flushInterval": "500ms",
                      "batchSize": 200, "overflow": "reject"},
            "routing": {"default": "weightedRoundRobin", "meter": "fixed"}
        }));
        let deployment = &objects.deployment;
        assert_eq!(
            deployment.metadata.name.as_deref(),
            Some("ingest-satellite")
        );
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
        let container = &deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(constants::default_proxy_image().as_str())
        );
        assert_eq!(
            args(&objects),
            // The listen addresses, a capacity of 5000, batches of 200, `reject` and fixed
            // meter routing are the proxy's defaults: rendered as no flag.
            vec![
                "--upstreams-configmap=obs/ingest-upstreams",
                "--max-connections=11",
                "--queue-partitions=4",
                "--flush-interval=500ms",
                "--routing=weighted-round-robin",
                "--telemetry-service=obs-ingest",
                "--telemetry-instance=$(POD_NAME)",
                "--log-format=json",
            ]
        );
        let probe = container
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn proxies_may_read_their_own_upstream_configmap_and_nothing_else() {
        let objects = build_satellite(
            serde_json::json!({"upstream": {"oapServerRef": {"name": "skywalking"}}}),
        );
        let rules = objects.role.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["configmaps".to_string()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["ingest-upstreams".to_string()][..])
        );
        assert!(
            rules[0]
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        );
        let pod = objects.pod_spec().unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("ingest-satellite")
        );
        assert_eq!(
            objects.role_binding.subjects.as_ref().unwrap()[0].name,
            "ingest-satellite"
        );
    }

    #[test]
    fn configmap_publishes_the_endpoints_document() {
        let objects = build_satellite(
            serde_json::json!({"upstream": {"oapServerRef": {"name": "skywalking"}}}),
        );
        assert_eq!(
            objects.config_map.metadata.name.as_deref(),
            Some("ingest-upstreams")
        );
        assert_eq!(
            objects.config_map.data.as_ref().unwrap()["endpoints.json"],
            r#"{"endpoints":[{"address":"10.1.2.3:11800","weight":1,"pod":"skywalking-oap-7c9f-x2"}]}"#
        );
        assert!(objects.config_map.metadata.is_controlled_by("uid-sat"));
    }

    #[test]
    fn autoscaling_creates_an_hpa_on_the_satellite_itself_with_the_swck_selector() {
        let objects = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "telemetry": {"service": "satellite-service"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": 10}
        }));
        let hpa = objects.hpa.expect("autoscaling makes an HPA");
        let spec = hpa.spec.clone().unwrap();
        assert_eq!(
            spec.scale_target_ref.api_version.as_deref(),
            Some("skylift.io/v1alpha1")
        );
        assert_eq!(spec.scale_target_ref.kind, "Satellite");
        assert_eq!(spec.scale_target_ref.name, "ingest");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 3));
        let metrics = spec.metrics.unwrap();
        let external = metrics[0].external.as_ref().unwrap();
        assert_eq!(
            external.metric.name,
            "skywalking.apache.org|satellite_service_grpc_connect_count"
        );
        // Exactly the selector of SWCK's walk-through for `satellite::satellite-service`,
        // and the OAPServer the pool reports to, `obs/skywalking`, escaped.
        let selector = |hpa: &HorizontalPodAutoscaler| {
            hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap()[0]
                .external
                .as_ref()
                .unwrap()
                .metric
                .selector
                .as_ref()
                .unwrap()
                .match_labels
                .clone()
                .unwrap()
        };
        let swck = [
            ("service.str.0", "satellite"),
            ("service.byte.1", "3a"),
            ("service.byte.2", "3a"),
            ("service.str.3", "satellite"),
            ("service.byte.4", "2d"),
            ("service.str.5", "service"),
        ];
        let oap = [
            ("oap.str.0", "obs"),
            ("oap.byte.1", "2f"),
            ("oap.str.2", "skywalking"),
        ];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(selector(&hpa), labels(&[&swck[..], &oap[..]].concat()));
        // Upstreams that are no OAPServer: the adapter's routing by namespace decides.
        let hpa = build_satellite(serde_json::json!({
            "upstream": {"addresses": ["oap-0.obs:11800"]},
            "telemetry": {"service": "satellite-service"},
            "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 10}
        }))
        .hpa
        .unwrap();
        assert_eq!(selector(&hpa), labels(&swck));
        assert_eq!(external.target.type_, "Value");
        assert_eq!(external.target.value, Some(Quantity("10".into())));
        let scale_up = spec.behavior.unwrap().scale_up.unwrap();
        assert_eq!(scale_up.stabilization_window_seconds, Some(60));
        assert_eq!(scale_up.select_policy.as_deref(), Some("Min"));
    }

    #[test]
    fn user_behavior_is_passed_through_and_no_autoscaling_means_no_hpa() {
        let objects = build_satellite(serde_json::json!({
            "upstream": {"oapServerRef": {"name": "skywalking"}},
            "autoscaling": {"maxReplicas": 5, "targetConnectionsPerReplica": 100,
                            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}
        }));
        let behavior = objects.hpa.unwrap().spec.unwrap().behavior.unwrap();
        assert_eq!(
            behavior.scale_down.unwrap().stabilization_window_seconds,
            Some(600)
        );
        assert!(behavior.scale_up.is_none());
        let objects = build_satellite(
            serde_json::json!({"upstream": {"oapServerRef": {"name": "skywalking"}}}),
        );
        assert!(objects.hpa.is_none());
    }

    /// Every combination of the spec's proxy settings renders to a command line that the
    /// proxy's own parser reads back as exactly the settings built, each setting visible.
    #[test]
    fn every_combination_of_settings_renders_and_parses_back() {
        use clap::Parser;
        use serde_json::{Value, json};
        fn parse_back(view: &PoolView) -> ProxyArgs {
            let argv = std::iter::once("skylift-proxy".to_string()).chain(view.proxy_args());
            let parsed = ProxyArgs::try_parse_from(argv).unwrap();
            assert_eq!(parsed, view.proxy_settings(), "{:?}", view.proxy_args());
            // And the proxy would start with them.
            parsed.check().unwrap();
            parsed
        }
        let queues = [
            Value::Null,
            json!({"partitions": 3, "capacityPerPartition": 700, "flushInterval": "250ms",
                   "maxBytesPerPartition": "16Mi", "batchSize": 50, "overflow": "drop",
                   "deliveryAttempts": 3}),
            json!({"partitions": 2, "disk": {"sizeLimit": "2Gi", "fsync": "interval",
                                             "fsyncInterval": "2s"}}),
        ];
        let tls = [
            Value::Null,
            json!({"secretName": "t"}),
            json!({"secretName": "t", "requireClientCertificates": true}),
        ];
        let upstream_tls = [
            Value::Null,
            json!({"secretName": "u", "serverName": "oap.obs.svc"}),
            json!({"secretName": "u", "clientCertificate": true}),
        ];
        let rebalancing = [
            Value::Null,
            json!({"maxConnectionAge": "10m"}),
            json!({"maxConnectionAge": "1h", "grace": "45s"}),
        ];
        let health = [
            Value::Null,
            json!({"checkInterval": "2s", "checkTimeout": "500ms", "checkFailures": 3,
                   "slowFactor": 5, "slowMinLatency": "50ms", "slowEjection": "1m",
                   "callTimeout": "25s", "answerTimeout": "90s", "maxEjectionPercent": 34}),
        ];
        let mut combinations = 0;
        for queue in &queues {
            for tls in &tls {
                for upstream_tls in &upstream_tls {
                    for rebalancing in &rebalancing {
                        for health in &health {
                            for (authentication, limit, routing) in [
                                (
                                    false,
                                    false,
                                    json!({"default": "roundRobin", "meter": "fixed"}),
                                ),
                                (
                                    true,
                                    true,
                                    json!({"default": "weightedRoundRobin",
                                                    "meter": "roundRobin"}),
                                ),
                            ] {
                                let mut spec = json!({
                                    "upstream": {"oapServerRef": {"name": "skywalking"}},
                                    "routing": routing,
                                });
                                let fields = [
                                    ("queue", queue),
                                    ("tls", tls),
                                    ("upstreamTls", upstream_tls),
                                    ("rebalancing", rebalancing),
                                    ("upstreamHealth", health),
                                ];
                                for (name, value) in fields {
                                    if !value.is_null() {
                                        spec[name] = value.clone();
                                    }
                                }
                                if authentication {
                                    spec["authentication"] = json!({"secretName": "token"});
                                }
                                if limit {
                                    spec["connectionLimit"] = json!({"maxConnections": 11});
                                }
                                let parsed = parse_back(&PoolView::from(&satellite(spec)));
                                assert_eq!(
                                    parsed.queue == QueueArg::Disk,
                                    queue.get("disk").is_some()
                                );
                                assert_eq!(parsed.tls_cert_file.is_some(), !tls.is_null());
                                assert_eq!(
                                    parsed.tls_client_ca_file.is_some(),
                                    tls.get("requireClientCertificates").is_some()
                                );
                                assert_eq!(
                                    parsed.upstream_tls_cert_file.is_some(),
                                    upstream_tls.get("clientCertificate").is_some()
                                );
                                assert_eq!(parsed.authentication_file.is_some(), authentication);
                                assert_eq!(parsed.max_connections == 11, limit);
                                assert_eq!(
                                    parsed.max_connection_age.is_zero(),
                                    rebalancing.is_null()
                                );
                                assert_eq!(parsed.health_check_failures == 3, !health.is_null());
                                assert_eq!(
                                    parsed.meter_routing == MeterRoutingArg::RoundRobin,
                                    authentication
                                );
                                combinations += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(combinations, 324);
        for (routing, telemetry) in [
            (json!({"default": "roundRobin"}), Value::Null),
            (
                json!({"default": "weightedRoundRobin"}),
                json!({"service": "gw"}),
            ),
            (
                json!({"default": "hash", "hashHeader": "x-tenant"}),
                json!({"service": "gw", "oapAddress": "oap.obs:11800"}),
            ),
        ] {
            let mut spec = json!({
                "upstream": {"addresses": ["collector.obs:4317"]},
                "routing": routing,
            });
            if !telemetry.is_null() {
                spec["telemetry"] = telemetry.clone();
            }
            let parsed = parse_back(&PoolView::from(&proxy(spec)));
            assert_eq!(
                parsed.hash_header.is_some(),
                parsed.routing == RoutingArg::Hash
            );
            assert_eq!(parsed.telemetry_service.is_some(), !telemetry.is_null());
            assert_eq!(
                parsed.telemetry_upstream.is_some(),
                telemetry.get("oapAddress").is_some()
            );
        }
    }

    #[test]
    fn proxy_hashes_on_a_header_and_reports_telemetry_only_when_asked() {
        let plain = proxy(serde_json::json!({
            "upstream": {"selector": {"matchLabels": {"app": "otel-collector"}, "port": 4317}},
            "routing": {"default": "hash", "hashHeader": "x-tenant"}
        }));
        let objects = build(
            &plain,
            &PoolView::from(&plain),
            &UpstreamEndpoints::default(),
        );
        let args = args(&objects);
        assert!(args.contains(&"--routing=hash".to_string()));
        assert!(args.contains(&"--hash-header=x-tenant".to_string()));
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--telemetry") || a.starts_with("--meter-routing"))
        );
        assert_eq!(
            objects.deployment.metadata.name.as_deref(),
            Some("otlp-proxy")
        );

        let scaled = proxy(serde_json::json!({
            "upstream": {"addresses": ["collector.obs:4317"]},
            "telemetry": {"service": "otlp-gw", "oapAddress": "oap.obs:11800"},
            "autoscaling": {"maxReplicas": 4, "targetConnectionsPerReplica": 50}
        }));
        let objects = build(
            &scaled,
            &PoolView::from(&scaled),
            &UpstreamEndpoints::default(),
        );
        let args = self::args(&objects);
        assert!(args.contains(&"--telemetry-service=otlp-gw".to_string()));
        assert!(args.contains(&"--telemetry-upstream=oap.obs:11800".to_string()));
        assert_eq!(
            objects.hpa.unwrap().spec.unwrap().scale_target_ref.kind,
            "Proxy"
        );
    }

    #[test]
    fn pool_service_exposes_grpc_and_admin_to_the_pool_pods() {
        let objects = build_satellite(serde_json::json!({
            "upstream": {"addresses": ["oap.example.com:11800"]},
            "service": {"type": "NodePort"}
        }));
        let spec = objects.service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let ports: Vec<(i32, Option<&str>)> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port, p.app_protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            vec![(11800, Some("kubernetes.io/h2c")), (1234, None)]
        );
        let selector = spec.selector.as_ref().unwrap();
        let pod_labels = objects
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(selector["app.kubernetes.io/name"], "satellite");
    }
}
