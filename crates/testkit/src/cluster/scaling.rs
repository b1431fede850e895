//! The scaling loop on a real control plane, for the demo and its test: skylift installed
//! from its bundles, the operator reconciling an OAPServer and a Satellite, the adapter
//! behind the real aggregator, the real HPA scaling the Satellite through `/scale`.
//!
//! There is no kubelet, so [`ScalingLoop`] runs the pods itself, as local programs at
//! addresses of their own (on a [`TestHost`]'s side of the network): each OAP pod is a node
//! of an OAP stand-in (one storage, as an OAP cluster shares its database), each Satellite
//! pod a `skylift-proxy` run with the pod's own arguments and ServiceAccount (it reads the
//! upstreams ConfigMap the operator publishes), and the adapter's pod the adapter inside the
//! host's network namespace. A pod is reported ready once its program answers. The
//! Satellite's Service is a round-robin TCP relay over its ready pods, as kube-proxy would
//! balance new connections.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::ControlPlane;
use super::host::TestHost;
use super::kubelet;
use crate::oap::{Cluster, ClusterConfig};
use crate::process::Process;

/// Where skylift's resources go.
pub const NAMESPACE: &str = "observability";
/// The OAPServer and the Satellite.
pub const OAP: &str = "skywalking";
pub const SATELLITE: &str = "ingest";
/// The proxies' telemetry service, as the Satellite names it.
pub const TELEMETRY_SERVICE: &str = "satellite-service";

/// What the loop needs from the machine.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The repository (its `manifests/`).
    pub repo: PathBuf,
    /// Where the workspace's binaries are (`target/debug`).
    pub binaries: PathBuf,
    /// Where the programs' logs go.
    pub logs: PathBuf,
}

/// A Satellite pod, run as a local `skylift-proxy`.
#[derive(Clone, Debug)]
pub struct ProxyPod {
    pub pod: String,
    /// Where clients reach it.
    pub grpc: SocketAddr,
    /// Its admin server (`/metrics`, `/readyz`).
    pub admin: SocketAddr,
    pub ready: bool,
}

struct Running {
    pods: BTreeMap<String, (ProxyPod, Process)>,
    oap_pods: BTreeMap<String, Ipv4Addr>,
}

/// The loop, running until dropped.
pub struct ScalingLoop {
    pub plane: &'static ControlPlane,
    pub client: kube::Client,
    pub host: Arc<TestHost>,
    pub oap: Arc<Cluster>,
    /// The Satellite's Service: new connections go round-robin to its ready proxies.
    pub service: SocketAddr,
    running: Arc<Mutex<Running>>,
    _operator: Process,
    adapter: Option<Process>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    settings: Settings,
}

impl Drop for ScalingLoop {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The container args of Deployment `name` in a manifest stream.
fn deployment_args(yaml: &str, name: &str) -> Vec<String> {
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let Ok(value) = <Value as serde::Deserialize>::deserialize(document) else {
            continue;
        };
        if value["kind"] == "Deployment" && value["metadata"]["name"] == name {
            return value["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
        }
    }
    panic!("no Deployment {name} in the bundle")
}

/// `args` with each `--flag=` of `replaced` set to its value (added if missing).
fn with_flags(mut args: Vec<String>, replaced: &[(&str, String)]) -> Vec<String> {
    for (flag, value) in replaced {
        let prefix = format!("{flag}=");
        args.retain(|a| !a.starts_with(&prefix));
        args.push(format!("{flag}={value}"));
    }
    args
}

impl ScalingLoop {
    /// Installs skylift from its bundles, starts the operator, the OAPServer (two OAP
    /// pods) and the adapter behind the aggregator, and waits until the APIService is
    /// Available.
    pub async fn start(plane: &'static ControlPlane, settings: Settings) -> ScalingLoop {
        std::fs::create_dir_all(&settings.logs).expect("the logs folder");
        let client = plane.admin().await;
        let bundle = |name: &str| {
            std::fs::read_to_string(settings.repo.join("manifests").join(name))
                .unwrap_or_else(|e| panic!("manifests/{name}: {e}"))
        };
        let operator_bundle = bundle("operator-bundle.yaml");
        let adapter_bundle = bundle("adapter-bundle.yaml");
        plane.apply("manifests/operator-bundle.yaml", &operator_bundle);
        plane.apply("manifests/adapter-bundle.yaml", &adapter_bundle);
        let (ok, said) = plane.kubectl(&["create", "namespace", NAMESPACE]);
        assert!(ok || said.contains("AlreadyExists"), "{said}");

        let host = Arc::new(TestHost::new(plane.address));
        let oap = Cluster::start(ClusterConfig::default(), 0)
            .await
            .expect("the OAP stand-in");
        let running = Arc::new(Mutex::new(Running {
            pods: BTreeMap::new(),
            oap_pods: BTreeMap::new(),
        }));

        // The operator, as its pod runs it (the webhook is not called here).
        let token = plane
            .service_account("skylift-system", "skylift-operator")
            .await;
        let kubeconfig = plane.write_kubeconfig("loop-operator", &token);
        let mut operator = Command::new(settings.binaries.join("skylift-operator"));
        operator
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", "skylift-system")
            .env("SKYLIFT_OPERATOR_IDENTITY", "loop-operator")
            .args(with_flags(
                deployment_args(&operator_bundle, "skylift-operator"),
                &[
                    ("--admin-listen", "127.0.0.1:0".into()),
                    ("--webhook", "false".into()),
                ],
            ));
        let operator = Process::spawn("skylift-operator", operator, &settings.logs);

        let service_ip = host.add_host_address();
        let service: SocketAddr = (service_ip, 11800).into();
        // On the relays' own runtime: never held up by this one's blocking calls.
        let mut tasks =
            vec![super::relay::runtime().spawn(serve_service(service, running.clone()))];
        tasks.push(tokio::spawn(run_pods(
            plane,
            client.clone(),
            host.clone(),
            oap.clone(),
            running.clone(),
            settings.clone(),
        )));

        let mut started = ScalingLoop {
            plane,
            client,
            host,
            oap,
            service,
            running,
            _operator: operator,
            adapter: None,
            tasks,
            settings,
        };
        started
            .create(
                "OAPServer",
                OAP,
                json!({"version": "10.2.0", "replicas": 2}),
            )
            .await;
        let first_oap = started.wait_oap_pods(2).await;
        started.start_adapter(&adapter_bundle, first_oap).await;
        started
    }

    /// Creates the skylift resource `kind` `name` in [`NAMESPACE`].
    pub async fn create(&self, kind: &str, name: &str, spec: Value) {
        let resource = kube::api::ApiResource {
            group: "skylift.io".into(),
            version: "v1alpha1".into(),
            api_version: "skylift.io/v1alpha1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &resource);
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "skylift.io/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
    }

    /// Waits for `count` OAP pods running; the first one's address.
    async fn wait_oap_pods(&self, count: usize) -> Ipv4Addr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            {
                let running = self.running.lock().unwrap();
                if running.oap_pods.len() >= count {
                    return *running.oap_pods.values().next().unwrap();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the OAP pods did not run within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The adapter in the host's network namespace as the adapter pod, reading the OAP
    /// node at `oap`; returns once the APIService is Available.
    async fn start_adapter(&mut self, adapter_bundle: &str, oap: Ipv4Addr) {
        let token = self
            .plane
            .service_account("skylift-system", "skylift-adapter")
            .await;
        let kubeconfig =
            self.plane
                .write_kubeconfig_to("loop-adapter", &token, Some(&self.host.api_server()));
        let mut adapter = self
            .host
            .command(self.settings.binaries.join("skylift-adapter"));
        adapter
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", "skylift-system")
            .args(with_flags(
                deployment_args(adapter_bundle, "skylift-adapter"),
                &[
                    ("--oap-url", format!("http://{oap}:12800/graphql")),
                    // The Satellite's HPA names its OAPServer; with no cluster DNS here, the
                    // adapter is told where that OAPServer answers, as an adapter outside
                    // the cluster would be.
                    (
                        "--oap",
                        format!("{NAMESPACE}/{OAP}=http://{oap}:12800/graphql"),
                    ),
                    ("--refresh-interval", "2s".into()),
                ],
            ));
        let adapter = Process::spawn("skylift-adapter", adapter, &self.settings.logs);
        // The kubelet's readiness probe, then the pod ready at the namespace's address.
        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let url = format!("https://{}:6443/readyz", self.host.ip);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !probe
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the adapter never answered its readiness probe:\n{}",
                adapter.tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pods = kubelet::pods(
            &self.client,
            "skylift-system",
            "app.kubernetes.io/name=skylift-adapter",
        )
        .await;
        let pod = pods.first().expect("the adapter bundle's pods");
        kubelet::run_pod(
            &self.client,
            "skylift-system",
            pod,
            IpAddr::V4(self.host.ip),
        )
        .await;
        self.adapter = Some(adapter);
        let apiservices: Api<
            k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
        > = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let available = apiservices
                .get("v1beta1.external.metrics.k8s.io")
                .await
                .ok()
                .and_then(|a| a.status?.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                });
            if available {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the APIService was not Available within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Satellite's pods as they run now.
    pub fn proxies(&self) -> Vec<ProxyPod> {
        self.running
            .lock()
            .unwrap()
            .pods
            .values()
            .map(|(pod, _)| pod.clone())
            .collect()
    }

    /// The Satellite, as the API server has it.
    pub async fn satellite(&self) -> Option<Value> {
        let resource = kube::api::ApiResource::erase::<skylift_api::Satellite>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), NAMESPACE, &resource);
        api.get_opt(SATELLITE).await.ok()?.map(|o| o.data)
    }

    /// The logs folder.
    pub fn logs(&self) -> &Path {
        &self.settings.logs
    }
}

/// Plays the kubelet for [`NAMESPACE`]: OAP pods become stand-in nodes, Satellite pods
/// local proxies, each at an address of its own; pods that went have their program
/// stopped.
async fn run_pods(
    plane: &'static ControlPlane,
    client: kube::Client,
    host: Arc<TestHost>,
    oap: Arc<Cluster>,
    running: Arc<Mutex<Running>>,
    settings: Settings,
) {
    kubelet::ensure_node(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut tokens: BTreeMap<String, PathBuf> = BTreeMap::new();
    loop {
        let Ok(list) = pods.list(&ListParams::default()).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let live: Vec<String> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        // Pods gone (scaled down, rolled): their programs stop.
        running
            .lock()
            .unwrap()
            .pods
            .retain(|name, _| live.contains(name));
        for pod in list.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let component = labels.get("app.kubernetes.io/name").map(String::as_str);
            let instance = labels.get("app.kubernetes.io/instance").map(String::as_str);
            match (component, instance) {
                (Some("oap-server"), Some(OAP)) => {
                    if running.lock().unwrap().oap_pods.contains_key(&name) {
                        continue;
                    }
                    let ip = host.add_host_address();
                    let added = oap.add_at((ip, 11800).into(), (ip, 12800).into()).await;
                    if added.is_ok() {
                        kubelet::run_pod(&client, NAMESPACE, &name, IpAddr::V4(ip)).await;
                        running.lock().unwrap().oap_pods.insert(name, ip);
                    }
                }
                (_, Some(SATELLITE)) => {
                    let known = running
                        .lock()
                        .unwrap()
                        .pods
                        .get(&name)
                        .map(|(p, _)| p.clone());
                    match known {
                        None => {
                            let account = pod
                                .spec
                                .as_ref()
                                .and_then(|s| s.service_account_name.clone())
                                .unwrap_or_else(|| "default".into());
                            let kubeconfig = match tokens.get(&account) {
                                Some(path) => path.clone(),
                                None => {
                                    let token = plane.service_account(NAMESPACE, &account).await;
                                    let path =
                                        plane.write_kubeconfig(&format!("pod-{account}"), &token);
                                    tokens.insert(account, path.clone());
                                    path
                                }
                            };
                            let started = start_proxy(&pod, &name, &host, &kubeconfig, &settings);
                            running.lock().unwrap().pods.insert(name, started);
                        }
                        Some(proxy) if !proxy.ready => {
                            let ready = crate::http::get(&format!("http://{}/readyz", proxy.admin))
                                .await
                                .is_ok_and(|(code, _)| code == 200);
                            if ready {
                                kubelet::run_pod(&client, NAMESPACE, &name, proxy.grpc.ip()).await;
                                if let Some((pod, _)) = running.lock().unwrap().pods.get_mut(&name)
                                {
                                    pod.ready = true;
                                }
                            }
                        }
                        Some(_) => {}
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts the proxy of Satellite pod `name` with the pod's own arguments, at an address
/// of its own, as the pod's ServiceAccount (`kubeconfig`).
fn start_proxy(
    pod: &Pod,
    name: &str,
    host: &TestHost,
    kubeconfig: &Path,
    settings: &Settings,
) -> (ProxyPod, Process) {
    let ip = host.add_host_address();
    let grpc: SocketAddr = (ip, 11800).into();
    let admin: SocketAddr = (ip, 8080).into();
    let container = &pod.spec.as_ref().expect("a pod spec").containers[0];
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.replace("$(POD_NAME)", name))
        .collect();
    let args = with_flags(
        args,
        &[
            ("--listen", grpc.to_string()),
            ("--admin-listen", admin.to_string()),
        ],
    );
    let mut command = Command::new(settings.binaries.join("skylift-proxy"));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", NAMESPACE)
        .args(args);
    let process = Process::spawn(name, command, &settings.logs);
    (
        ProxyPod {
            pod: name.to_string(),
            grpc,
            admin,
            ready: false,
        },
        process,
    )
}

/// The Satellite's Service: each new connection goes to the next ready proxy, as
/// kube-proxy balances them.
async fn serve_service(address: SocketAddr, running: Arc<Mutex<Running>>) {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| panic!("the Service's address {address}: {e}"));
    let mut next = 0usize;
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let ready: Vec<SocketAddr> = running
            .lock()
            .unwrap()
            .pods
            .values()
            .filter(|(pod, _)| pod.ready)
            .map(|(pod, _)| pod.grpc)
            .collect();
        if ready.is_empty() {
            continue;
        }
        let target = ready[next % ready.len()];
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            // As transparent as kube-proxy's address translation: the client sees every
            // byte the proxy sent before it closed (a refusal's GOAWAY above all), then
            // the close. grpc-python's channel, closed on before it read the server's
            // first bytes, spins on the socket and grows without bound.
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let to_server = async {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                // The client is done (or the proxy took no more): the proxy hears it.
                let _ = server_write.shutdown().await;
            };
            let to_client = tokio::io::copy(&mut server_read, &mut client_write);
            tokio::pin!(to_client);
            tokio::select! {
                // The proxy closed: so does the client's connection, whole.
                _ = &mut to_client => {}
                _ = to_server => {
                    let _ = to_client.await;
                }
            }
        });
    }
}
