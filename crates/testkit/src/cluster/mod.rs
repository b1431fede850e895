//! A real Kubernetes control plane for tests: etcd, kube-apiserver and
//! kube-controller-manager from `KUBEBUILDER_ASSETS` (the envtest convention), started once
//! per test binary and shared by its tests, each test in namespaces of its own.
//!
//! What it judges that the API-server double does not: CRDs (CEL cost included), RBAC as
//! shipped, admission webhooks called by the real admission chain, server-side apply,
//! `/scale` and `/status`, garbage collection, the aggregation layer (front-proxy
//! authentication, discovery, availability) and the HPA controller's arithmetic.
//!
//! - [`ControlPlane`]: starting it, clients for any identity, `kubectl`;
//! - [`audit`]: every write the API server accepted, by user, from its audit log;
//! - [`kubelet`]: the kubelet's part (there is none): binding pods to a node and marking
//!   them running and ready at an address;
//! - [`host`]: a network namespace for a program the API server must call (an aggregated
//!   API server, a webhook), reaching the API server through a relay;
//! - [`relay`]: the relays: TCP (which a test can freeze) and HTTP (which can hold back
//!   the Lease calls alone);
//! - [`scaling`]: the whole scaling loop (operator, OAP, proxies, adapter, the real HPA)
//!   with the pods run as local programs, for the demo and its test.

pub mod audit;
pub mod host;
pub mod kubeconfig;
pub mod kubelet;
pub mod relay;
pub mod scaling;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::process::Process;

pub use kubeconfig::Identity;

/// What the control plane's programs are and where they are.
pub const ASSETS_VARIABLE: &str = "KUBEBUILDER_ASSETS";

/// The folder of the real binaries, if the environment names one. A folder named but
/// incomplete is an error, not a reason to skip.
pub fn assets() -> Option<PathBuf> {
    let folder = PathBuf::from(std::env::var_os(ASSETS_VARIABLE)?);
    for binary in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        assert!(
            folder.join(binary).is_file(),
            "{ASSETS_VARIABLE}={} has no {binary}",
            folder.display()
        );
    }
    Some(folder)
}

/// A running control plane. Its processes and files go when the test binary exits (a
/// watchdog process sees to it, since a shared plane is never dropped).
pub struct ControlPlane {
    dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub address: SocketAddr,
    /// The cluster CA: it signs the API server's certificate and client certificates.
    pub ca: TestCa,
    admin: Identity,
    admin_kubeconfig: PathBuf,
    processes: Mutex<Vec<Process>>,
    audit_log: PathBuf,
    /// How long it took to be ready (API server, then controllers).
    pub started_in: Duration,
}

static SHARED: tokio::sync::OnceCell<Option<ControlPlane>> = tokio::sync::OnceCell::const_new();

impl ControlPlane {
    /// The control plane of this test binary, started by the first test that asks; `None`
    /// (after saying so once) when `KUBEBUILDER_ASSETS` is unset.
    pub async fn shared() -> Option<&'static ControlPlane> {
        SHARED
            .get_or_init(|| async {
                match assets() {
                    Some(folder) => Some(ControlPlane::start(&folder).await),
                    None => {
                        // Straight to stderr: the test harness captures print! and eprint!.
                        use std::io::Write;
                        let _ = writeln!(
                            std::io::stderr(),
                            "real-control-plane tier skipped: {ASSETS_VARIABLE} is unset (point it at the folder with etcd, kube-apiserver and kube-controller-manager)"
                        );
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager from `assets`, and waits
    /// until the API server is ready and the controllers are at work.
    pub async fn start(assets: &Path) -> ControlPlane {
        // Whoever installed one first, the process has one rustls provider (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let dir = scratch_dir();
        let files = Files::write(&dir);
        let etcd_port = free_port();
        let api_port = free_port();
        let address: SocketAddr = ([127, 0, 0, 1], api_port).into();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut processes = Vec::new();

        let mut etcd = Command::new(assets.join("etcd"));
        etcd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url])
            .args(["--advertise-client-urls", &etcd_url])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", free_port()),
            ])
            .args(["--log-level", "warn"]);
        processes.push(Process::spawn("etcd", etcd, &dir));

        let mut apiserver = Command::new(assets.join("kube-apiserver"));
        apiserver
            .args(["--etcd-servers", &etcd_url])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &api_port.to_string()])
            .arg(format!("--client-ca-file={}", files.ca.display()))
            .arg(format!("--tls-cert-file={}", files.serving.0.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                files.serving.1.display()
            ))
            .arg(format!(
                "--service-account-key-file={}",
                files.service_account_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                files.service_account_private.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // The API server's own Service would be reconciled to its loopback address,
            // which Endpoints may not hold; nothing here calls it through that Service.
            .arg("--endpoint-reconciler-type=none")
            // Rovers run privileged.
            .arg("--allow-privileged=true")
            // Aggregated API servers and webhooks are called at their endpoints' addresses
            // (there is no Service proxy on this machine).
            .arg("--enable-aggregator-routing=true")
            .arg(format!(
                "--requestheader-client-ca-file={}",
                files.front_proxy_ca.display()
            ))
            .arg("--requestheader-allowed-names=front-proxy-client")
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            .arg(format!(
                "--proxy-client-cert-file={}",
                files.front_proxy_client.0.display()
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                files.front_proxy_client.1.display()
            ))
            .arg(format!(
                "--audit-policy-file={}",
                files.audit_policy.display()
            ))
            .arg(format!(
                "--audit-log-path={}",
                dir.join("audit.log").display()
            ))
            .arg("--audit-log-format=json")
            .arg("--audit-log-maxsize=0");
        processes.push(Process::spawn("kube-apiserver", apiserver, &dir));

        let server = format!("https://{address}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig::text(&server, &files.ca_pair.cert_pem, &files.admin),
        )
        .expect("writing the administrator's kubeconfig");
        let plane = ControlPlane {
            server,
            address,
            admin_kubeconfig,
            admin: files.admin.clone(),
            ca: files.ca_pair.clone(),
            audit_log: dir.join("audit.log"),
            processes: Mutex::new(processes),
            dir,
            started_in: Duration::ZERO,
        };
        plane.watchdog();
        plane.wait_ready(started).await;

        let kcm_config =
            plane.write_kubeconfig("kube-controller-manager", &files.controller_manager);
        let mut kcm = Command::new(assets.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", kcm_config.display()))
            .arg("--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach,-ttl")
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                files.service_account_private.display()
            ))
            .arg(format!("--root-ca-file={}", files.ca.display()))
            .arg("--horizontal-pod-autoscaler-sync-period=5s")
            // No serving port: nothing scrapes it, and two planes must not collide.
            .arg("--secure-port=0");
        plane.adopt(Process::spawn("kube-controller-manager", kcm, &plane.dir));
        plane.wait_controllers(started).await;
        ControlPlane {
            started_in: started.elapsed(),
            ..plane
        }
    }

    /// Kills the plane's processes and removes its files (and this process's network
    /// namespaces) once the test process is gone.
    fn watchdog(&self) {
        let pids: Vec<String> = self
            .processes
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.id().to_string())
            .collect();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pids} $(cat {dir}/pids 2>/dev/null) 2>/dev/null; \
             for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1 | grep '^{prefix}'); do ip netns del $ns; done; rm -rf {dir}",
            me = std::process::id(),
            pids = pids.join(" "),
            dir = self.dir.display(),
            prefix = host::namespace_prefix(),
        );
        let mut watchdog = Command::new("sh");
        watchdog
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Detached: it must outlive this process, so it is never waited for.
        #[allow(clippy::zombie_processes)]
        let _watchdog = watchdog
            .spawn()
            .expect("starting the control plane's watchdog");
    }

    /// Keeps `process` with the plane's own (the watchdog kills it with them).
    fn adopt(&self, process: Process) {
        let _ = std::fs::write(
            self.dir.join("pids"),
            format!(
                "{}{} ",
                std::fs::read_to_string(self.dir.join("pids")).unwrap_or_default(),
                process.id()
            ),
        );
        self.processes.lock().unwrap().push(process);
    }

    fn failure(&self, what: &str) -> String {
        let processes = self.processes.lock().unwrap();
        let tails: Vec<String> = processes
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.tail(15)))
            .collect();
        format!("{what}\n{}", tails.join("\n"))
    }

    async fn wait_ready(&self, started: Instant) {
        let client = self.admin_http();
        let url = format!("{}/readyz", self.server);
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            for process in self.processes.lock().unwrap().iter_mut() {
                assert!(
                    process.is_running(),
                    "{}",
                    self.failure(&format!("{} exited", process.name))
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                self.failure("kube-apiserver was not ready within 60 s")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The service-account controller has made the `default` ServiceAccount: the
    /// controllers run with their credentials.
    async fn wait_controllers(&self, started: Instant) {
        let client = self.admin_http();
        let url = format!(
            "{}/api/v1/namespaces/default/serviceaccounts/default",
            self.server
        );
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{}",
                self.failure("kube-controller-manager made no default ServiceAccount within 90 s")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An HTTPS client presenting the administrator's certificate.
    pub fn admin_http(&self) -> reqwest::Client {
        let identity = format!("{}{}", self.admin.key_pem(), self.admin.cert_pem());
        reqwest::Client::builder()
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(self.ca.cert_pem.as_bytes())
                    .expect("the CA reads"),
            )
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("a client identity"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTPS client")
    }

    /// A client as the administrator (`system:masters`).
    pub async fn admin(&self) -> kube::Client {
        self.client(&self.admin).await
    }

    /// A client as `identity`.
    pub async fn client(&self, identity: &Identity) -> kube::Client {
        kubeconfig::client(&self.kubeconfig_text(identity, None)).await
    }

    /// A client certificate identity for `user` (in `group`, if any), signed by the CA.
    pub fn certificate_identity(&self, user: &str, group: Option<&str>) -> Identity {
        let (cert, key) = self.ca.client_identity(user, group);
        Identity::Certificate { cert, key }
    }

    /// A token of the ServiceAccount `namespace/name` (TokenRequest, an hour), as a pod
    /// running under it would hold.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Identity {
        kubeconfig::service_account_token(&self.admin().await, namespace, name).await
    }

    /// The kubeconfig text for `identity`, reaching the API server at `server` (default:
    /// its own address) and checking its certificate as `kubernetes.default.svc`.
    pub fn kubeconfig_text(&self, identity: &Identity, server: Option<&str>) -> String {
        kubeconfig::text(server.unwrap_or(&self.server), &self.ca.cert_pem, identity)
    }

    /// Writes the kubeconfig for `identity` into the plane's folder; returns its path.
    pub fn write_kubeconfig(&self, name: &str, identity: &Identity) -> PathBuf {
        self.write_kubeconfig_to(name, identity, None)
    }

    /// As [`ControlPlane::write_kubeconfig`], reaching the API server at `server`.
    pub fn write_kubeconfig_to(
        &self,
        name: &str,
        identity: &Identity,
        server: Option<&str>,
    ) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_text(identity, server))
            .expect("writing a kubeconfig");
        path
    }

    /// `kubectl` with the administrator's kubeconfig: (succeeded, stdout and stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(kubectl_binary())
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl_binary().display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// `kubectl apply -f -` of `yaml` as the administrator, as a user installs it; panics
    /// with what the API server refused.
    pub fn apply(&self, what: &str, yaml: &str) {
        // One at a time: tests sharing the plane may apply the same objects, and kubectl's
        // apply reads, then creates.
        static APPLYING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = APPLYING.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(kubectl_binary())
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl_binary().display()));
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "kubectl apply of {what} was refused:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Every write the API server has accepted or refused so far.
    pub fn audit(&self) -> Vec<audit::Event> {
        audit::read(&self.audit_log)
    }

    /// The administrator's kubeconfig (for `kubectl` and programs run as the administrator).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The folder of the plane's files (logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `kubectl`: `$SKYLIFT_KUBECTL` (hack/test.sh puts one under target/tools), else the one
/// on the PATH.
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os("SKYLIFT_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// etcd's data is fastest in memory: `/dev/shm` when there is one.
fn scratch_dir() -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "skylift-control-plane-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the control plane's folder");
    dir
}

/// The certificates, keys and policy files the processes read.
struct Files {
    ca: PathBuf,
    ca_pair: TestCa,
    serving: (PathBuf, PathBuf),
    front_proxy_ca: PathBuf,
    front_proxy_client: (PathBuf, PathBuf),
    service_account_public: PathBuf,
    service_account_private: PathBuf,
    audit_policy: PathBuf,
    admin: Identity,
    controller_manager: Identity,
}

/// The audit policy: every write, at Metadata level (who, what, when, the answer).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
";

impl Files {
    fn write(dir: &Path) -> Files {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("writing a control-plane file");
            path
        };
        let ca = TestCa::new("skylift-test-cluster-ca");
        let (serving_cert, serving_key) = ca.server_identity(&[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]);
        let front_proxy = TestCa::new("skylift-test-front-proxy-ca");
        let (proxy_cert, proxy_key) = front_proxy.client_identity("front-proxy-client", None);
        let signing = rcgen::KeyPair::generate().expect("a service-account signing key");
        let (admin_cert, admin_key) =
            ca.client_identity("skylift-test-admin", Some("system:masters"));
        let (kcm_cert, kcm_key) = ca.client_identity("system:kube-controller-manager", None);
        Files {
            ca: write("ca.crt", &ca.cert_pem),
            serving: (
                write("apiserver.crt", &serving_cert),
                write("apiserver.key", &serving_key),
            ),
            front_proxy_ca: write("front-proxy-ca.crt", &front_proxy.cert_pem),
            front_proxy_client: (
                write("front-proxy-client.crt", &proxy_cert),
                write("front-proxy-client.key", &proxy_key),
            ),
            service_account_public: write("sa.pub", &signing.public_key_pem()),
            service_account_private: write("sa.key", &signing.serialize_pem()),
            audit_policy: write("audit-policy.yaml", AUDIT_POLICY),
            admin: Identity::Certificate {
                cert: admin_cert,
                key: admin_key,
            },
            controller_manager: Identity::Certificate {
                cert: kcm_cert,
                key: kcm_key,
            },
            ca_pair: ca,
        }
    }
}
