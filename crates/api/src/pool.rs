//! Pieces shared by the two proxy-pool resources, `Satellite` and `Proxy`.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::common::ServiceAddress;
use crate::endpoints::UpstreamEndpoint;

/// Upstream pods chosen by label, in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSelectorUpstream {
    /// Labels the upstream pods carry (all must match).
    #[schemars(extend("minProperties" = 1))]
    pub match_labels: BTreeMap<String, String>,
    /// Port the upstream pods serve gRPC / HTTP/2 on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Per-replica connection limit.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimit {
    /// Client connections one replica accepts; more are sent away with an HTTP/2 GOAWAY
    /// so the client reconnects (through the Service) to another replica.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
}

/// Horizontal autoscaling of the pool on its open client connections.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas").reason(Reason::FieldValueInvalid))]
pub struct Autoscaling {
    /// Fewest replicas the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler creates.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Open client connections per replica the autoscaler aims for.
    #[schemars(range(min = 1, max = 1000000))]
    pub target_connections_per_replica: i32,
    /// HPA scaling behavior (`autoscaling/v2`), passed through unchanged. Default: scale up
    /// after a 60 s stabilization window, choosing the smallest step (`selectPolicy: Min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    1
}

/// Buffering between receiving a report and sending it upstream.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.batchSize) || !has(self.capacityPerPartition) || self.batchSize <= self.capacityPerPartition").message("queue.batchSize must not be greater than queue.capacityPerPartition").reason(Reason::FieldValueInvalid))]
pub struct QueueSpec {
    /// Independent queues, each sending in parallel. Default: the proxy's (one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub partitions: Option<i32>,
    /// Events each partition holds before the overflow policy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub capacity_per_partition: Option<i32>,
    /// Longest time an event waits for its batch, e.g. `500ms`, `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"))]
    pub flush_interval: Option<String>,
    /// Events sent upstream in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<i32>,
    /// What happens when a partition is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<OverflowPolicy>,
}

/// What a full queue does with a new event.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OverflowPolicy {
    /// Answer the client `RESOURCE_EXHAUSTED`, so it keeps (and retries) the data.
    Reject,
    /// Acknowledge and drop, counting the drop.
    Drop,
}

impl OverflowPolicy {
    pub fn as_flag_value(self) -> &'static str {
        match self {
            OverflowPolicy::Reject => "reject",
            OverflowPolicy::Drop => "drop",
        }
    }
}

/// The pool's HorizontalPodAutoscaler as last observed.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaStatus {
    /// Name of the HorizontalPodAutoscaler.
    pub name: String,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub desired_replicas: i32,
    /// Last metric value the autoscaler read (a Quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// Observed state of a Satellite or Proxy pool.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Pods of the Deployment (the `/scale` status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pool's pods, for `/scale` and the HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where clients reach the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<ServiceAddress>,
    /// The upstream endpoints currently published to the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamEndpoint>,
    /// Number of published upstream endpoints that take new work (draining ones excluded).
    #[serde(default)]
    pub upstream_count: i32,
    /// The autoscaler, when `spec.autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
