//! Which pods a pool sends to: the pure selection of upstream endpoints from pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use skylift_api::constants::labels::{DRAINING_ANNOTATION, WEIGHT_ANNOTATION};
use skylift_api::constants::upstreams::DEFAULT_WEIGHT;
use skylift_api::endpoints::socket_address;
use skylift_api::{UpstreamEndpoint, UpstreamEndpoints};

/// Whether `pod` may receive traffic: Ready, not being deleted, and with an IP.
pub fn is_serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && pod_ip(pod).is_some() && is_ready(pod)
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether `pod` is going away while still reachable: terminating with its IP, or
/// serving and annotated `skylift.io/draining: "true"`. Published as draining, so proxies
/// let its work in flight finish but send it nothing new (a pod that just disappeared
/// from the list looks the same as one that was never there).
pub fn is_draining(pod: &Pod) -> bool {
    if pod_ip(pod).is_none() {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRAINING_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    annotated && is_serving(pod)
}

/// Whether the pod's labels contain every `selector` label.
pub fn matches(pod: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The weight of a pod from its `skylift.io/weight` annotation (default 1; an unreadable
/// value also counts as 1 rather than taking the pod out of rotation).
pub fn weight(pod: &Pod) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHT_ANNOTATION))
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(DEFAULT_WEIGHT)
}

/// The endpoints of the serving (and draining) pods among `pods` that match `selector`,
/// in a stable order (by pod name), so the published list only changes when the set of
/// pods does.
pub fn pod_endpoints<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    namespace: &str,
    selector: &BTreeMap<String, String>,
    port: i32,
) -> UpstreamEndpoints {
    let mut endpoints: Vec<UpstreamEndpoint> = pods
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(namespace))
        .filter(|pod| matches(pod, selector))
        .filter_map(|pod| {
            let draining = is_draining(pod);
            (draining || is_serving(pod)).then(|| UpstreamEndpoint {
                address: socket_address(pod_ip(pod).unwrap_or_default(), port),
                weight: weight(pod),
                pod: pod.metadata.name.clone(),
                zone: None,
                draining,
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.pod, &a.address).cmp(&(&b.pod, &b.address)));
    UpstreamEndpoints { endpoints }
}

/// Fixed addresses, as given.
pub fn static_endpoints(addresses: &[String]) -> UpstreamEndpoints {
    UpstreamEndpoints {
        endpoints: addresses
            .iter()
            .map(|address| UpstreamEndpoint {
                address: address.clone(),
                weight: DEFAULT_WEIGHT,
                pod: None,
                zone: None,
                draining: false,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("obs".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "oap".to_string())])),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn selector() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), "oap".to_string())])
    }

    #[test]
    fn ready_pods_with_an_ip_are_published_in_name_order_and_terminating_ones_as_draining() {
        let mut terminating = pod("oap-d", "10.0.0.4", true);
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut other_app = pod("web-1", "10.0.0.9", true);
        other_app.metadata.labels = Some(BTreeMap::from([("app".to_string(), "web".to_string())]));
        let mut other_namespace = pod("oap-x", "10.0.1.1", true);
        other_namespace.metadata.namespace = Some("elsewhere".into());
        let pods = [
            pod("oap-c", "10.0.0.3", true),
            pod("oap-a", "10.0.0.1", true),
            pod("oap-b", "10.0.0.2", false),
            pod("oap-e", "", true),
            terminating,
            other_app,
            other_namespace,
        ];
        let published = pod_endpoints(&pods, "obs", &selector(), 11800);
        let addresses: Vec<_> = published
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(
            addresses,
            vec!["10.0.0.1:11800", "10.0.0.3:11800", "10.0.0.4:11800"]
        );
        assert_eq!(published.endpoints[0].pod.as_deref(), Some("oap-a"));
        let draining: Vec<bool> = published.endpoints.iter().map(|e| e.draining).collect();
        assert_eq!(draining, [false, false, true], "oap-d is terminating");
    }

    #[test]
    fn an_annotated_pod_drains_while_it_keeps_running() {
        let annotate = |mut pod: Pod, value: &str| {
            pod.metadata.annotations = Some(BTreeMap::from([(
                DRAINING_ANNOTATION.to_string(),
                value.to_string(),
            )]));
            pod
        };
        let pods = [
            annotate(pod("oap-a", "10.0.0.1", true), "true"),
            annotate(pod("oap-b", "10.0.0.2", true), "false"),
            // Not ready and not terminating: not published, annotation or not.
            annotate(pod("oap-c", "10.0.0.3", false), "True"),
        ];
        let published = pod_endpoints(&pods, "obs", &selector(), 11800);
        let draining: Vec<(&str, bool)> = published
            .endpoints
            .iter()
            .map(|e| (e.pod.as_deref().unwrap(), e.draining))
            .collect();
        assert_eq!(draining, [("oap-a", true), ("oap-b", false)]);
    }

    #[test]
    fn weight_comes_from_the_pod_annotation() {
        let mut heavy = pod("oap-a", "10.0.0.1", true);
        heavy.metadata.annotations = Some(BTreeMap::from([(
            WEIGHT_ANNOTATION.to_string(),
            "3".to_string(),
        )]));
        let mut garbled = pod("oap-b", "10.0.0.2", true);
        garbled.metadata.annotations = Some(BTreeMap::from([(
            WEIGHT_ANNOTATION.to_string(),
            "lots".to_string(),
        )]));
        let published = pod_endpoints(
            &[heavy, garbled, pod("oap-c", "10.0.0.3", true)],
            "obs",
            &selector(),
            11800,
        );
        let weights: Vec<u32> = published.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights, vec![3, 1, 1]);
    }
}
