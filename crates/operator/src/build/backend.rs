//! Where a component (UI, collector, Rover, injected agents) sends its data, resolved
//! from a reference to the address the referenced resource's Service answers at.

use skylift_api::Backend;
use skylift_api::constants::ports;

use super::oapserver::workload_name as oap_workload;
use super::pool::{PoolKind, workload_name as pool_workload};

/// What a backend reference points at, for checking that it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    OapServer(String),
    Satellite(String),
    Address(String),
}

impl BackendTarget {
    pub fn of(backend: &Backend) -> BackendTarget {
        if let Some(oap) = &backend.oap_server_ref {
            BackendTarget::OapServer(oap.name.clone())
        } else if let Some(sat) = &backend.satellite_ref {
            BackendTarget::Satellite(sat.name.clone())
        } else {
            BackendTarget::Address(backend.address.clone().unwrap_or_default())
        }
    }

    /// The gRPC `host:port` (SkyWalking's 11800: agents, OTLP, Rover).
    pub fn grpc_address(&self, namespace: &str) -> String {
        match self {
            BackendTarget::OapServer(name) => {
                format!("{}.{namespace}.svc:{}", oap_workload(name), ports::GRPC)
            }
            BackendTarget::Satellite(name) => format!(
                "{}.{namespace}.svc:{}",
                pool_workload(PoolKind::Satellite, name),
                ports::GRPC
            ),
            BackendTarget::Address(address) => address.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_to_the_services_of_the_referenced_resources() {
        let backend = |json| serde_json::from_value::<Backend>(json).unwrap();
        let oap = BackendTarget::of(&backend(
            serde_json::json!({"oapServerRef": {"name": "sw"}}),
        ));
        assert_eq!(oap.grpc_address("obs"), "sw-oap.obs.svc:11800");
        let sat = BackendTarget::of(&backend(
            serde_json::json!({"satelliteRef": {"name": "in"}}),
        ));
        assert_eq!(sat.grpc_address("obs"), "in-satellite.obs.svc:11800");
        let fixed = BackendTarget::of(&backend(
            serde_json::json!({"address": "oap.example:11800"}),
        ));
        assert_eq!(fixed.grpc_address("obs"), "oap.example:11800");
    }
}
