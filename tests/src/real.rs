//! What the real-control-plane tests share: skylift installed as the chart renders it,
//! the operator run as its pod would run (under the chart's ServiceAccount, with the
//! chart's arguments), skylift's resources read as a user reads them, and the writes the
//! API server audited.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use skylift_testkit::cluster::{ControlPlane, audit};
use tokio::sync::OnceCell;

use crate::rbac::args_in;
use crate::{Process, binary, free_port, render_chart};

/// Who the operator is, as the chart's ServiceAccount.
pub const OPERATOR_USER: &str = "system:serviceaccount:skylift-system:skylift-operator";

/// The namespace Rovers are allowed in, as the tests install skylift.
pub const ROVER_NAMESPACE: &str = "obs";

/// The chart as an administrator who lets Rovers run in [`ROVER_NAMESPACE`] renders it
/// (with its namespace, as `helm install --create-namespace` makes it).
pub fn chart() -> String {
    render_chart(&[
        "createNamespace=true",
        &format!("operator.rover.namespaces[0]={ROVER_NAMESPACE}"),
    ])
}

/// skylift installed with `kubectl apply` of [`chart`] (CRDs first, then the rest, as the
/// API server needs them Established before their objects), once per test binary.
pub async fn install(plane: &ControlPlane) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            plane.apply(
                "crds/skylift.io.yaml",
                &crate::repo_file("crds/skylift.io.yaml"),
            );
            let (ok, said) = plane.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd",
                "--all",
            ]);
            assert!(ok, "{said}");
            plane.apply("the chart", &chart());
        })
        .await;
}

/// Creates the namespace `name` (once).
pub fn namespace(plane: &ControlPlane, name: &str) {
    let (ok, said) = plane.kubectl(&["create", "namespace", name]);
    assert!(ok || said.contains("AlreadyExists"), "{said}");
}

/// The operator's command as its pod runs it: the chart's arguments (the admin and webhook
/// listeners moved to free loopback ports unless `replaced` says otherwise), as the
/// chart's ServiceAccount through `kubeconfig`, in the chart's namespace.
pub fn operator_command(
    program: Command,
    kubeconfig: &Path,
    identity: &str,
    replaced: &[(&str, String)],
) -> Command {
    // The caller's first: the first entry of a flag wins.
    let mut replacing: Vec<(&str, String)> =
        replaced.iter().map(|(f, v)| (*f, v.clone())).collect();
    replacing.push(("--admin-listen", format!("127.0.0.1:{}", free_port())));
    replacing.push(("--webhook-listen", format!("127.0.0.1:{}", free_port())));
    let mut args = args_in(&chart(), "the chart", "skylift-operator", &replacing);
    for (flag, value) in &replacing {
        if !args.iter().any(|a| a.starts_with(&format!("{flag}="))) {
            args.push(format!("{flag}={value}"));
        }
    }
    let mut command = program;
    command
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "skylift-system")
        .env("SKYLIFT_OPERATOR_IDENTITY", identity)
        .env("RUST_LOG", "info")
        .args(&args);
    command
}

/// Starts the operator on this machine as the chart's ServiceAccount; its log in `dir`.
pub async fn start_operator(
    plane: &ControlPlane,
    dir: &Path,
    identity: &str,
    replaced: &[(&str, String)],
) -> Process {
    start_operator_as(plane, dir, identity, "skylift-operator", None, replaced).await
}

/// Starts the operator as the ServiceAccount `skylift-system/<account>`, reaching the API
/// server at `server` (default: its own address).
pub async fn start_operator_as(
    plane: &ControlPlane,
    dir: &Path,
    identity: &str,
    account: &str,
    server: Option<&str>,
    replaced: &[(&str, String)],
) -> Process {
    let token = plane.service_account("skylift-system", account).await;
    let kubeconfig = plane.write_kubeconfig_to(&format!("operator-{identity}"), &token, server);
    let command = operator_command(
        Command::new(binary("skylift-operator")),
        &kubeconfig,
        identity,
        replaced,
    );
    Process::spawn(identity, command, dir)
}

/// The API of a skylift kind in `namespace`.
pub fn skylift(client: &kube::Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let resource = match kind {
        "OAPServer" => ApiResource::erase::<skylift_api::OAPServer>(&()),
        "Satellite" => ApiResource::erase::<skylift_api::Satellite>(&()),
        "Proxy" => ApiResource::erase::<skylift_api::Proxy>(&()),
        "UI" => ApiResource::erase::<skylift_api::UI>(&()),
        "BanyanDB" => ApiResource::erase::<skylift_api::BanyanDB>(&()),
        "OTelCollector" => ApiResource::erase::<skylift_api::OTelCollector>(&()),
        "Rover" => ApiResource::erase::<skylift_api::Rover>(&()),
        "SwAgent" => ApiResource::erase::<skylift_api::SwAgent>(&()),
        other => panic!("no skylift kind {other}"),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Creates the skylift resource `kind` `name` with `spec` in `namespace`.
pub async fn create(client: &kube::Client, namespace: &str, kind: &str, name: &str, spec: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "skylift.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace}, "spec": spec,
    }))
    .unwrap();
    skylift(client, namespace, kind)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
}

/// The condition `type_` of a skylift resource: (status, reason, message).
pub async fn condition(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let object = skylift(client, namespace, kind)
        .get_opt(name)
        .await
        .ok()??;
    let conditions = object.data["status"]["conditions"].as_array()?.clone();
    let found = conditions.iter().find(|c| c["type"] == type_)?;
    let text = |key: &str| found[key].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Waits (at most `limit`) until the resource's condition `type_` has `status`, and
/// returns its (reason, message); a timeout shows the resource's status.
pub async fn wait_condition(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    type_: &str,
    status: &str,
    limit: std::time::Duration,
) -> (String, String) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some((now, reason, message)) = condition(client, namespace, kind, name, type_).await
            && now == status
        {
            return (reason, message);
        }
        if tokio::time::Instant::now() > deadline {
            let object = skylift(client, namespace, kind).get_opt(name).await;
            let seen = object
                .ok()
                .flatten()
                .map(|o| serde_json::to_string_pretty(&o.data["status"]).unwrap_or_default());
            panic!(
                "timed out after {limit:?} waiting for {kind} {name} {type_}={status}: its status is {}",
                seen.unwrap_or_else(|| "missing".into())
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The Events about the object `name` in `namespace`: (reason, note).
pub async fn events_about(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The writes `user` made that the API server accepted, but renewing its Lease.
pub fn writes_by(plane: &ControlPlane, user: &str) -> Vec<audit::Event> {
    plane
        .audit()
        .into_iter()
        .filter(|e| e.user == user && e.succeeded() && e.resource != "leases")
        .collect()
}

/// A second identity for the operator: the ServiceAccount `skylift-system/<account>`, bound
/// wherever the chart binds the operator's (so its rights are exactly the operator's, and
/// the audit log tells the two apart).
pub async fn operator_account(plane: &ControlPlane, account: &str) -> String {
    let mut manifests = vec![json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": account, "namespace": "skylift-system"}})];
    for binding in crate::yaml_documents(&chart(), "the chart") {
        let kind = binding["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRoleBinding" && kind != "RoleBinding" {
            continue;
        }
        let binds_operator = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == "skylift-operator");
        if !binds_operator {
            continue;
        }
        let mut copy = binding.clone();
        copy["metadata"] = json!({
            "name": format!("{}-{account}", binding["metadata"]["name"].as_str().unwrap_or_default()),
            "namespace": binding["metadata"]["namespace"],
        });
        if copy["metadata"]["namespace"].is_null() {
            copy["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
        }
        copy["subjects"] =
            json!([{"kind": "ServiceAccount", "name": account, "namespace": "skylift-system"}]);
        manifests.push(copy);
    }
    let yaml: Vec<String> = manifests
        .iter()
        .map(|m| serde_yaml::to_string(m).unwrap())
        .collect();
    plane.apply(&format!("the bindings of {account}"), &yaml.join("---\n"));
    format!("system:serviceaccount:skylift-system:{account}")
}
