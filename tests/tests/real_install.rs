//! Installing skylift as a user does, on a real kube-apiserver and kube-controller-manager
//! (`KUBEBUILDER_ASSETS`): every generated CRD, both bundles, the chart rendered with every
//! option and every example, applied for real with `kubectl apply`; and every CRD rule
//! refusing a bad resource with the message the API-server double gives, so the double's
//! fast tests speak for the real server.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use skylift_e2e::{
    CHART_WITH_EVERY_OPTION, real_control_plane, render_chart, repo_file, repo_path, wait_for,
};
use skylift_testkit::apiserver::ApiServer;

/// Every skylift CRD the API server holds is Established.
async fn established(client: &kube::Client) -> Vec<String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let expected: Vec<String> = skylift_api::crds()
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    wait_for(
        "every skylift CRD Established",
        Duration::from_secs(30),
        || async {
            for name in &expected {
                let crd = crds.get(name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if !established {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    expected
}

#[tokio::test]
async fn the_crds_bundles_chart_and_examples_install_on_a_real_api_server() {
    let plane = real_control_plane!();
    let client = plane.admin().await;

    plane.apply("crds/skylift.io.yaml", &repo_file("crds/skylift.io.yaml"));
    let names = established(&client).await;
    assert_eq!(names.len(), skylift_api::crds().len());

    plane.apply(
        "manifests/operator-bundle.yaml",
        &repo_file("manifests/operator-bundle.yaml"),
    );
    plane.apply(
        "manifests/adapter-bundle.yaml",
        &repo_file("manifests/adapter-bundle.yaml"),
    );
    // Applied again (an upgrade to the same release): nothing refused.
    plane.apply(
        "manifests/operator-bundle.yaml, again",
        &repo_file("manifests/operator-bundle.yaml"),
    );
    // The chart with every option, over the defaults (it watches the namespace `shop`,
    // which the user has made).
    for namespace in ["observability", "shop"] {
        let _ = plane.kubectl(&["create", "namespace", namespace]);
    }
    plane.apply(
        "the chart with every option",
        &render_chart(CHART_WITH_EVERY_OPTION),
    );
    established(&client).await;

    let mut examples: Vec<_> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    for example in &examples {
        let name = example.file_name().unwrap().to_string_lossy().to_string();
        plane.apply(&name, &std::fs::read_to_string(example).unwrap());
    }
    assert!(examples.len() >= 4, "{examples:?}");
}

/// A resource each CRD rule (CEL or OpenAPI) refuses, and a part of the message that says
/// why.
fn refused_resources() -> Vec<(&'static str, Value, &'static str)> {
    let oap = json!({"oapServerRef": {"name": "oap"}});
    vec![
        (
            "OAPServer",
            json!({"version": "10.2.0", "config": [{"configMapName": "rules", "path": "otel-rules/../.."}]}),
            "config[].path is a directory relative to /skywalking/config",
        ),
        (
            "OAPServer",
            json!({"version": "10.2.0", "config": [{"configMapName": "rules", "path": "a".repeat(254)}]}),
            "spec.config[0].path: Too long",
        ),
        (
            "OAPServer",
            json!({"version": "10.2.0", "storage": {"type": "banyandb"}}),
            "storage.address (or, for banyandb, storage.banyanDBRef) is required",
        ),
        (
            "OAPServer",
            json!({"version": "10.2.0", "storage": {"type": "elasticsearch", "banyanDBRef": {"name": "db"}}}),
            "storage.banyanDBRef goes with type banyandb",
        ),
        (
            "Satellite",
            json!({"upstream": {}}),
            "upstream needs exactly one of oapServerRef, selector or addresses",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetConnectionsPerReplica": 10}}),
            "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "connectionLimit": {"maxConnections": 10},
                   "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 50}}),
            "must not be greater than connectionLimit.maxConnections",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "queue": {"capacityPerPartition": 10, "batchSize": 20}}),
            "queue.batchSize must not be greater than queue.capacityPerPartition",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "queue": {"disk": {"sizeLimit": "1Gi", "fsync": "always", "fsyncInterval": "1s"}}}),
            "queue.disk.fsyncInterval applies only with fsync: interval",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "connectionLimit": {"maxConnections": 0}}),
            "spec.connectionLimit.maxConnections in body should be greater than or equal to 1",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "routing": {"default": "random"}}),
            "spec.routing.default: Unsupported value: \"random\"",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:1"]}, "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 5}}),
            "autoscaling needs telemetry",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:1"], "selector": {"matchLabels": {"app": "c"}, "port": 4317}}}),
            "upstream needs exactly one of selector or addresses",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:1"]}, "routing": {"default": "hash"}}),
            "routing.hashHeader is required when routing.default is hash",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:4317"]}, "listeners": {"http": {}}}),
            "listeners.http.upstreamPort is required",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:4317"]}, "listeners": {"http": {"upstreamPort": 4318}},
                   "upstreamTls": {"secretName": "ca"}}),
            "listeners.http cannot be combined with upstreamTls yet",
        ),
        (
            "Satellite",
            json!({"upstream": oap, "listeners": {"http": {}}, "upstreamTls": {"secretName": "ca"}}),
            "listeners.http cannot be combined with upstreamTls yet",
        ),
        (
            "Proxy",
            json!({"upstream": {"addresses": ["a:4317"]}, "routing": {"otlp": {"logs": "byTrace"}}}),
            "spec.routing.otlp.logs: Unsupported value: \"byTrace\"",
        ),
        (
            "UI",
            json!({"version": "10.2.0", "oap": {"oapServerRef": {"name": "oap"}, "url": "http://oap:12800"}}),
            "oap needs exactly one of oapServerRef or url",
        ),
        (
            "OTelCollector",
            json!({"version": "0.115.0", "backend": oap,
                   "scrape": [{"name": "vm", "matchLabels": {"app": "vm"}, "port": "metrics"}],
                   "configMapRef": {"name": "otel", "key": "config.yaml"}}),
            "give exactly one of scrape",
        ),
        (
            "Rover",
            json!({"version": "0.7.0", "backend": {"oapServerRef": {"name": "oap"}, "address": "oap:11800"}}),
            "backend needs exactly one of oapServerRef, satelliteRef or address",
        ),
        (
            "Rover",
            json!({"version": "0.7.0", "backend": oap, "podTemplate": {"securityContext": {"runAsUser": 1000}}}),
            "Rover's security context is fixed",
        ),
        (
            "SwAgent",
            json!({"selector": {}, "language": "java"}),
            "selector needs at least one label",
        ),
        // A value of the wrong type keeps the rules from running.
        (
            "Satellite",
            json!({"upstream": {}, "connectionLimit": {"maxConnections": "ten"}}),
            "spec.connectionLimit.maxConnections in body must be of type integer",
        ),
        // A pattern or a minimum does not: the rules run beside it.
        (
            "Proxy",
            json!({"upstream": {"addresses": ["not an address"]}, "routing": {"default": "hash"}}),
            "routing.hashHeader is required when routing.default is hash",
        ),
        (
            "Satellite",
            json!({"upstream": {}, "connectionLimit": {"maxConnections": 0}}),
            "upstream needs exactly one of oapServerRef, selector or addresses",
        ),
    ]
}

/// Creating `spec` as `kind` in `namespace`: the refusal's code and message, or `None` if
/// it was created.
async fn refusal(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    spec: &Value,
) -> Option<(u16, String)> {
    let api = skylift_e2e::real::skylift(client, namespace, kind);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": kind,
        "metadata": {"name": "refused"}, "spec": spec,
    }))
    .unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some((status.code, status.message)),
        Err(other) => panic!("creating a {kind}: {other}"),
    }
}

#[tokio::test]
async fn every_crd_rule_refuses_on_the_real_server_as_on_the_double() {
    let plane = real_control_plane!();
    let client = plane.admin().await;
    plane.apply("crds/skylift.io.yaml", &repo_file("crds/skylift.io.yaml"));
    established(&client).await;
    let _ = plane.kubectl(&["create", "namespace", "crd-rules"]);
    let double = ApiServer::start_with_skylift_crds().await.unwrap();
    let _ = double.state().create(
        "",
        "namespaces",
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crd-rules"}}),
    );

    let mut differences = Vec::new();
    for (kind, spec, reason) in refused_resources() {
        let real = refusal(&client, "crd-rules", kind, &spec).await;
        let Some((code, message)) = real else {
            panic!("the real API server accepted a {kind} the rule should refuse: {spec}");
        };
        assert_eq!(code, 422, "{kind}: {message}");
        assert!(message.contains(reason), "{kind}: {reason:?} in {message}");
        match refusal(&double.client(), "crd-rules", kind, &spec).await {
            Some((422, said)) if said == message => {}
            other => differences.push(format!(
                "{kind} {spec}\n  real:   {message}\n  double: {other:?}"
            )),
        }
    }
    assert!(
        differences.is_empty(),
        "the double does not refuse as kube-apiserver does:\n{}",
        differences.join("\n")
    );
}
