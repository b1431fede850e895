//! The objects a `BanyanDB` is made of: a StatefulSet of one standalone node keeping its
//! data on a volume claim, and its gRPC and HTTP Services.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, Probe, Service,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skylift_api::BanyanDB;
use skylift_api::common::ServiceAddress;

use super::meta::{Labels, child_meta, pod_selector_of};
use super::oapserver::{container_port, service_for, service_port};
use super::podspec::{Hardening, PodParts, pod_template};

pub const BANYANDB_APP_NAME: &str = "banyandb";
/// BanyanDB's gRPC port (what OAP writes to).
pub const GRPC_PORT: i32 = 17912;
/// BanyanDB's HTTP port (its web console and `/api/healthz`).
pub const HTTP_PORT: i32 = 17913;
/// BanyanDB's Prometheus metrics.
pub const METRICS_PORT: i32 = 2121;
/// The claim's volume is mounted where a standalone BanyanDB keeps every kind of data by
/// default (`/tmp/measure`, `/tmp/stream`, `/tmp/property`, `/tmp/trace`), so every
/// version keeps all of it on the claim without version-specific flags.
pub const DATA_DIR: &str = "/tmp";
/// The user the image runs as; the claim's files are given to its group.
const BANYANDB_GROUP: i64 = 1000;

#[derive(Clone, Debug)]
pub struct BanyanDbObjects {
    pub stateful_set: StatefulSet,
    pub grpc_service: Service,
    pub http_service: Service,
}

pub fn workload_name(name: &str) -> String {
    format!("{name}-banyandb")
}

pub fn grpc_service_name(name: &str) -> String {
    format!("{name}-banyandb-grpc")
}

pub fn http_service_name(name: &str) -> String {
    format!("{name}-banyandb-http")
}

fn labels(db: &BanyanDB) -> Labels {
    Labels {
        name: BANYANDB_APP_NAME,
        instance: db.metadata.name.clone().unwrap_or_default(),
        component: "storage",
        version: db.spec.version.clone(),
    }
}

pub fn pod_selector(name: &str) -> BTreeMap<String, String> {
    pod_selector_of(BANYANDB_APP_NAME, name)
}

/// Where OAP (gRPC) and browsers (HTTP) reach the BanyanDB.
pub fn address(db: &BanyanDB) -> ServiceAddress {
    let name = db.metadata.name.as_deref().unwrap_or_default();
    let namespace = db.metadata.namespace.as_deref().unwrap_or("default");
    ServiceAddress {
        grpc: format!("{}.{namespace}.svc:{GRPC_PORT}", grpc_service_name(name)),
        http: Some(format!(
            "http://{}.{namespace}.svc:{HTTP_PORT}",
            http_service_name(name)
        )),
    }
}

pub fn build(db: &BanyanDB) -> BanyanDbObjects {
    let name = db.metadata.name.clone().unwrap_or_default();
    let labels = labels(db);
    let meta = |object_name: String| child_meta(db, object_name, labels.all());
    let health = |failure_threshold, period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/api/healthz".into()),
            port: IntOrString::Int(HTTP_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    };
    let container = Container {
        name: "banyandb".into(),
        image: Some(
            db.spec
                .image
                .clone()
                .unwrap_or_else(|| format!("apache/skywalking-banyandb:{}", db.spec.version)),
        ),
        args: Some(
            std::iter::once("standalone".to_string())
                .chain(db.spec.args.iter().cloned())
                .collect(),
        ),
        ports: Some(vec![
            container_port("grpc", GRPC_PORT),
            container_port("http", HTTP_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        resources: db.spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        // Opening a large data directory takes a while after a restart.
        startup_probe: Some(health(60, 5)),
        readiness_probe: Some(health(3, 5)),
        liveness_probe: Some(health(6, 10)),
        ..Container::default()
    };
    let mut template = pod_template(
        PodParts {
            labels: labels.clone(),
            service_account: None,
            container,
            annotations: BTreeMap::new(),
            hardening: Hardening::ThirdPartyImage,
            termination_grace_period_seconds: 60,
            volumes: Vec::new(),
        },
        db.spec.pod_template.as_ref(),
    );
    let user_context = db
        .spec
        .pod_template
        .as_ref()
        .and_then(|t| t.security_context.as_ref());
    if let (None, Some(pod)) = (user_context, template.spec.as_mut()) {
        // A fresh volume belongs to root; the group lets BanyanDB's user write to it.
        pod.security_context
            .get_or_insert_with(Default::default)
            .fs_group = Some(BANYANDB_GROUP);
    }
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(labels.selector()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: db.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(db.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    };
    let stateful_set = StatefulSet {
        metadata: meta(workload_name(&name)),
        spec: Some(StatefulSetSpec {
            replicas: Some(db.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.selector()),
                ..LabelSelector::default()
            },
            service_name: Some(grpc_service_name(&name)),
            template,
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    };
    let grpc_service = service_for(
        meta(grpc_service_name(&name)),
        db.spec.service.as_ref(),
        labels.selector(),
        vec![service_port("grpc", GRPC_PORT)],
    );
    let http_service = service_for(
        meta(http_service_name(&name)),
        db.spec.service.as_ref(),
        labels.selector(),
        vec![service_port("http", HTTP_PORT)],
    );
    BanyanDbObjects {
        stateful_set,
        grpc_service,
        http_service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ObjectMetaExt;

    fn db(spec: serde_json::Value) -> BanyanDB {
        let mut db = BanyanDB::new("storage", serde_json::from_value(spec).unwrap());
        db.metadata.namespace = Some("obs".into());
        db.metadata.uid = Some("uid-db".into());
        db
    }

    #[test]
    fn a_standalone_node_keeps_its_data_on_a_claim_of_the_asked_size() {
        let objects = build(&db(serde_json::json!({
            "version": "0.9.0", "storage": {"size": "100Gi", "storageClassName": "fast"},
            "args": ["--logging-level=debug"]
        })));
        let spec = objects.stateful_set.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("storage-banyandb-grpc"));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("100Gi".into())
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("apache/skywalking-banyandb:0.9.0")
        );
        assert_eq!(
            container.args.as_deref(),
            Some(&["standalone".to_string(), "--logging-level=debug".into()][..])
        );
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("data", "/tmp")
        );
        assert_eq!(
            container
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/api/healthz")
        );
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(1000));
    }

    #[test]
    fn grpc_and_http_services_and_the_address_oap_is_given() {
        let db = db(serde_json::json!({"version": "0.9.0"}));
        let objects = build(&db);
        let port = |s: &Service| s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
        assert_eq!(port(&objects.grpc_service), 17912);
        assert_eq!(port(&objects.http_service), 17913);
        for meta in [
            &objects.stateful_set.metadata,
            &objects.grpc_service.metadata,
            &objects.http_service.metadata,
        ] {
            assert!(meta.is_controlled_by("uid-db"));
        }
        let address = address(&db);
        assert_eq!(address.grpc, "storage-banyandb-grpc.obs.svc:17912");
        assert_eq!(
            address.http.as_deref(),
            Some("http://storage-banyandb-http.obs.svc:17913")
        );
    }
}
