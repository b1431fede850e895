//! What the adapter answers, in the aggregated API's JSON: discovery documents, the
//! `ExternalMetricValueList` the HPA reads, and `meta/v1` `Status` errors.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
/// Where metric reads are: `<prefix><namespace>/<metric>`.
pub const READ_PATH_PREFIX: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/";

/// `GET /apis`.
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group_body()]})
}

fn api_group_body() -> Value {
    let version = json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [version], "preferredVersion": version})
}

/// `GET /apis/external.metrics.k8s.io`.
pub fn api_group() -> Value {
    let mut group = api_group_body();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`.
pub fn api_resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": "externalmetrics",
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    })
}

/// One value read for the HPA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricValue {
    pub metric_name: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub window_seconds: i64,
    /// A Quantity string.
    pub value: String,
}

/// The answer to a metric read; no values is an empty list (the HPA reports "no metrics
/// returned").
pub fn value_list(values: &[MetricValue]) -> Value {
    let items: Vec<Value> = values
        .iter()
        .map(|v| {
            json!({
                "metricName": v.metric_name,
                "metricLabels": v.labels,
                "timestamp": v.timestamp,
                "window": v.window_seconds,
                "value": v.value,
            })
        })
        .collect();
    json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    })
}

/// A failure as Kubernetes writes it; `code` is also the HTTP status.
pub fn status(code: u16, message: &str) -> Value {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        APIGroup, APIGroupList, APIResourceList, Status,
    };

    #[test]
    fn discovery_documents_read_as_the_typed_kubernetes_objects() {
        let list: APIGroupList = serde_json::from_value(api_group_list()).unwrap();
        assert_eq!(list.groups[0].name, GROUP);
        let group: APIGroup = serde_json::from_value(api_group()).unwrap();
        assert_eq!(
            group.preferred_version.unwrap().group_version,
            GROUP_VERSION
        );
        let resources: APIResourceList = serde_json::from_value(api_resource_list()).unwrap();
        assert_eq!(resources.resources[0].kind, "ExternalMetricValueList");
        assert_eq!(
            READ_PATH_PREFIX,
            format!("/apis/{GROUP_VERSION}/namespaces/")
        );
        assert!(resources.resources[0].namespaced);
    }

    #[test]
    fn values_and_errors_have_the_wire_shape() {
        let answer = value_list(&[MetricValue {
            metric_name: "skywalking.apache.org|service_cpm".into(),
            labels: BTreeMap::from([("service".into(), "checkout".into())]),
            timestamp: "2026-10-01T12:00:00Z".into(),
            window_seconds: 60,
            value: "1500m".into(),
        }]);
        assert_eq!(answer["kind"], "ExternalMetricValueList");
        assert_eq!(answer["apiVersion"], GROUP_VERSION);
        assert_eq!(answer["items"][0]["value"], "1500m");
        assert_eq!(answer["items"][0]["metricLabels"]["service"], "checkout");
        assert_eq!(value_list(&[])["items"], json!([]));
        let status: Status = serde_json::from_value(status(404, "no such metric")).unwrap();
        assert_eq!(status.code, Some(404));
        assert_eq!(status.reason.as_deref(), Some("NotFound"));
    }
}
