//! The published upstream list: the JSON the operator writes under `endpoints.json` in the
//! `<name>-upstreams` ConfigMap and into `status.upstreams`, and that skylift-proxy reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One upstream endpoint a proxy pool sends to.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamEndpoint {
    /// `ip:port` (IPv6 as `[ip]:port`), or a `host:port` given in `spec.upstream.addresses`.
    pub address: String,
    /// Relative weight for weighted round-robin (pod annotation `skylift.io/weight`).
    pub weight: u32,
    /// The pod behind the address, when it is a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Topology zone of the pod's node, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Going away (its pod is terminating, or annotated `skylift.io/draining: "true"`):
    /// proxies send it no new work and let what it has in flight finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// The document stored under `endpoints.json`:
/// `{"endpoints":[{"address":"10.1.2.3:11800","weight":1,"pod":"oap-7c9f-x2"}]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamEndpoints {
    pub endpoints: Vec<UpstreamEndpoint>,
}

impl UpstreamEndpoints {
    /// The canonical serialized form (the operator compares and writes this).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("endpoint list serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Formats a pod IP and port as an address, bracketing IPv6.
pub fn socket_address(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_document_matches_the_published_format() {
        let doc = UpstreamEndpoints {
            endpoints: vec![UpstreamEndpoint {
                address: "10.1.2.3:11800".into(),
                weight: 1,
                pod: Some("oap-7c9f-x2".into()),
                zone: None,
                draining: false,
            }],
        };
        assert_eq!(
            doc.to_json(),
            r#"{"endpoints":[{"address":"10.1.2.3:11800","weight":1,"pod":"oap-7c9f-x2"}]}"#
        );
        assert_eq!(UpstreamEndpoints::from_json(&doc.to_json()).unwrap(), doc);
        let mut draining = doc.clone();
        draining.endpoints[0].draining = true;
        assert_eq!(
            draining.to_json(),
            r#"{"endpoints":[{"address":"10.1.2.3:11800","weight":1,"pod":"oap-7c9f-x2","draining":true}]}"#
        );
        assert_eq!(
            UpstreamEndpoints::from_json(&draining.to_json()).unwrap(),
            draining
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(socket_address("fd00::1", 11800), "[fd00::1]:11800");
        assert_eq!(socket_address("10.0.0.1", 11800), "10.0.0.1:11800");
    }
}
