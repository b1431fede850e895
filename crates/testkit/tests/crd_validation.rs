//! `kubectl apply` of a bad skylift resource fails with a message a user understands:
//! the CRDs' OpenAPI bounds and CEL rules, enforced the way kube-apiserver enforces them.

use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use skylift_testkit::apiserver::ApiServer;

async fn server() -> ApiServer {
    ApiServer::start_with_skylift_crds().await.unwrap()
}

async fn create(server: &ApiServer, kind: &str, spec: Value) -> Result<Value, String> {
    let resource = match kind {
        "Satellite" => kube::api::ApiResource::erase::<skylift_api::Satellite>(&()),
        "Proxy" => kube::api::ApiResource::erase::<skylift_api::Proxy>(&()),
        "UI" => kube::api::ApiResource::erase::<skylift_api::UI>(&()),
        "BanyanDB" => kube::api::ApiResource::erase::<skylift_api::BanyanDB>(&()),
        "OTelCollector" => kube::api::ApiResource::erase::<skylift_api::OTelCollector>(&()),
        "Rover" => kube::api::ApiResource::erase::<skylift_api::Rover>(&()),
        "SwAgent" => kube::api::ApiResource::erase::<skylift_api::SwAgent>(&()),
        _ => kube::api::ApiResource::erase::<skylift_api::OAPServer>(&()),
    };
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(server.client(), "default", &resource);
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": kind,
        "metadata": {"name": "example"}, "spec": spec,
    }))
    .unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => Ok(serde_json::to_value(created).unwrap()),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            Err(status.message)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// Creating `spec` as a `kind` is refused with a message that contains `expected`.
async fn assert_refused(server: &ApiServer, kind: &str, spec: Value, expected: &str) {
    let message = create(server, kind, spec).await.unwrap_err();
    assert!(message.contains(expected), "{expected:?} in {message}");
}

#[tokio::test]
async fn upstream_must_name_exactly_one_source() {
    let server = server().await;
    let none = create(&server, "Satellite", json!({"upstream": {}}))
        .await
        .unwrap_err();
    assert_eq!(
        none,
        "Satellite.skylift.io \"example\" is invalid: spec.upstream: Invalid value: \"object\": upstream needs exactly one of oapServerRef, selector or addresses"
    );
    let two = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}, "addresses": ["oap:11800"]}}),
    )
    .await
    .unwrap_err();
    assert!(two.contains("exactly one of"), "{two}");
}

#[tokio::test]
async fn autoscaling_bounds_are_checked() {
    let server = server().await;
    let inverted = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}},
               "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "targetConnectionsPerReplica": 10}}),
    )
    .await
    .unwrap_err();
    assert!(inverted.contains("spec.autoscaling"), "{inverted}");
    assert!(
        inverted.contains("minReplicas must not be greater than autoscaling.maxReplicas"),
        "{inverted}"
    );

    let unreachable_target = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}}, "connectionLimit": {"maxConnections": 10},
               "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 50}}),
    )
    .await
    .unwrap_err();
    assert!(
        unreachable_target.contains("must not be greater than connectionLimit.maxConnections"),
        "{unreachable_target}"
    );

    let zero = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}}, "connectionLimit": {"maxConnections": 0}}),
    )
    .await
    .unwrap_err();
    assert!(
        zero.contains("spec.connectionLimit.maxConnections: Invalid value: 0: spec.connectionLimit.maxConnections in body should be greater than or equal to 1"),
        "{zero}"
    );
}

#[tokio::test]
async fn enums_patterns_and_required_fields_are_explained() {
    let server = server().await;
    let routing = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}}, "routing": {"default": "random"}}),
    )
    .await
    .unwrap_err();
    assert!(routing.contains("spec.routing.default: Unsupported value: \"random\": supported values: \"roundRobin\", \"weightedRoundRobin\""), "{routing}");

    let address = create(
        &server,
        "Satellite",
        json!({"upstream": {"addresses": ["no port"]}}),
    )
    .await
    .unwrap_err();
    assert!(address.contains("spec.upstream.addresses[0]"), "{address}");

    let missing = create(&server, "Satellite", json!({"replicas": 2}))
        .await
        .unwrap_err();
    assert!(
        missing.contains("spec.upstream: Required value"),
        "{missing}"
    );

    let hash = create(
        &server,
        "Proxy",
        json!({"upstream": {"addresses": ["a:1"]}, "routing": {"default": "hash"}}),
    )
    .await
    .unwrap_err();
    assert!(
        hash.contains("routing.hashHeader is required when routing.default is hash"),
        "{hash}"
    );

    let proxy_scaling = create(
        &server,
        "Proxy",
        json!({"upstream": {"addresses": ["a:1"]}, "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 5}}),
    )
    .await
    .unwrap_err();
    assert!(
        proxy_scaling.contains("autoscaling needs telemetry"),
        "{proxy_scaling}"
    );

    let storage = create(
        &server,
        "OAPServer",
        json!({"version": "10.2.0", "storage": {"type": "banyandb"}}),
    )
    .await
    .unwrap_err();
    assert!(
        storage.contains(
            "storage.address (or, for banyandb, storage.banyanDBRef) is required for banyandb and elasticsearch"
        ),
        "{storage}"
    );
}

#[tokio::test]
async fn the_rest_of_a_deployment_is_refused_with_what_to_fix() {
    let server = server().await;
    for (kind, spec, expected) in [
        (
            "OAPServer",
            json!({"version": "10.2.0", "storage": {"type": "elasticsearch", "banyanDBRef": {"name": "db"}}}),
            "storage.banyanDBRef goes with type banyandb and no address",
        ),
        (
            "OAPServer",
            json!({"version": "10.2.0", "config": [{"configMapName": "rules", "path": "otel-rules/../../etc"}]}),
            "config[].path is a directory relative to /skywalking/config",
        ),
        (
            "OAPServer",
            json!({"version": "10.2.0", "config": [{"configMapName": "rules", "path": "/etc"}]}),
            "config[].path is a directory relative to /skywalking/config",
        ),
        (
            "UI",
            json!({"version": "10.2.0", "oap": {"oapServerRef": {"name": "sw"}, "url": "http://oap:12800"}}),
            "oap needs exactly one of oapServerRef or url",
        ),
        (
            "UI",
            json!({"version": "10.2.0", "oap": {"url": "oap:12800"}}),
            "spec.oap.url",
        ),
        (
            "BanyanDB",
            json!({"version": "0.9.0", "replicas": 2}),
            "spec.replicas",
        ),
        (
            "OTelCollector",
            json!({"version": "0.115.0", "backend": {"address": "oap:11800"}}),
            "give exactly one of scrape (the configuration is generated) or configMapRef",
        ),
        (
            "OTelCollector",
            json!({"version": "0.115.0", "backend": {}, "scrape": [{"name": "job"}]}),
            "backend needs exactly one of oapServerRef, satelliteRef or address",
        ),
        (
            "Rover",
            json!({"version": "0.7.0", "backend": {"address": "oap:11800"},
                   "podTemplate": {"containerSecurityContext": {"privileged": false}}}),
            "Rover's security context is fixed",
        ),
        (
            "SwAgent",
            json!({"selector": {}, "language": "java"}),
            "selector needs at least one label",
        ),
        (
            "SwAgent",
            json!({"selector": {"app": "shop"}, "language": "dotnet"}),
            "spec.language",
        ),
    ] {
        assert_refused(&server, kind, spec, expected).await;
    }
    create(
        &server,
        "OAPServer",
        json!({"version": "10.2.0",
        "config": [{"configMapName": "rules", "path": "otel-rules/my.rules_v2"}]}),
    )
    .await
    .unwrap();
    // What the examples declare is accepted.
    create(
        &server,
        "Rover",
        json!({"version": "0.7.0", "backend": {"satelliteRef": {"name": "ingest"}},
        "podTemplate": {"nodeSelector": {"profiling": "on"}}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_valid_resource_is_stored_with_its_defaults() {
    let server = server().await;
    let created = create(
        &server,
        "Satellite",
        json!({"upstream": {"oapServerRef": {"name": "oap"}},
               "autoscaling": {"maxReplicas": 3, "targetConnectionsPerReplica": 10},
               "unknownField": true}),
    )
    .await
    .unwrap();
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(created["spec"]["autoscaling"]["minReplicas"], 1);
    assert!(
        created["spec"].get("unknownField").is_none(),
        "unknown fields are pruned"
    );
    assert_eq!(created["metadata"]["generation"], 1);
}

#[tokio::test]
async fn hardening_settings_are_checked() {
    let server = server().await;
    let upstream = json!({"oapServerRef": {"name": "oap"}});
    let full = json!({
        "upstream": upstream,
        "queue": {"disk": {"sizeLimit": "1Gi", "fsync": "interval", "fsyncInterval": "500ms"}},
        "tls": {"secretName": "ingest-tls", "requireClientCertificates": true},
        "upstreamTls": {"secretName": "oap-tls", "serverName": "oap.obs.svc", "clientCertificate": true},
        "authentication": {"secretName": "oap-token"},
        "rebalancing": {"maxConnectionAge": "10m", "grace": "30s"},
        "upstreamHealth": {"checkInterval": "2s", "checkTimeout": "1s", "checkFailures": 3,
                           "slowFactor": 0, "slowMinLatency": "200ms", "slowEjection": "1m"}
    });
    let created = create(&server, "Satellite", full).await.unwrap();
    assert_eq!(
        created["spec"]["authentication"]["key"], "token",
        "the token's key defaults"
    );

    assert_refused(
        &server,
        "Satellite",
        json!({"upstream": upstream, "queue": {"disk": {"sizeLimit": "lots"}}}),
        "spec.queue.disk.sizeLimit",
    )
    .await;

    assert_refused(
        &server,
        "Proxy",
        json!({"upstream": {"addresses": ["otel:4317"]},
               "queue": {"disk": {"sizeLimit": "1Gi", "fsync": "always", "fsyncInterval": "1s"}}}),
        "fsyncInterval applies only with fsync: interval",
    )
    .await;

    assert_refused(
        &server,
        "Satellite",
        json!({"upstream": upstream, "upstreamTls": {"serverName": "oap"}}),
        "spec.upstreamTls.secretName: Required value",
    )
    .await;

    assert_refused(
        &server,
        "Proxy",
        json!({"upstream": {"addresses": ["otel:4317"]},
               "rebalancing": {"maxConnectionAge": "soon"}}),
        "spec.rebalancing.maxConnectionAge",
    )
    .await;
}
