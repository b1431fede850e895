//! Support for end-to-end tests that run skylift's binaries as processes.
//!
//! - [`agents`]: segment-reporting clients that hold one connection each;
//! - [`rbac`]: recorded requests held against a bundle's RBAC rules;
//! - [`real`]: what the tests on the real control plane share (skylift installed, the
//!   operator run under its ServiceAccount, resources and conditions, audited writes);
//! - [`standin`]: the OAP stand-in process.

pub mod agents;
pub mod rbac;
pub mod real;
pub mod standin;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use skylift_testkit::process::Process;

/// A path in the repository, from its root.
/// A tool hack/test.sh installs under target/ (or where the environment variable
/// `variable` says); `installer` names what installs it, for the failure message.
pub fn installed(variable: &str, default: &str, installer: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(Into::into)
        .unwrap_or_else(|| repo_path(default));
    assert!(
        path.exists(),
        "{} is missing: {installer} installs it",
        path.display()
    );
    path
}

/// Waits (at most `limit`) for `app` to exit, and fails unless it exited with 0.
pub async fn exited_ok(app: &mut Process, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while app.exit_code().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not finish:\n{}",
            app.name,
            app.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.exit_code(), Some(0), "{}", app.output());
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A repository file's text.
pub fn repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The documents of a YAML stream, empty ones left out; `origin` names it in a panic.
pub fn yaml_documents(text: &str, origin: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"))
        })
        .filter(|document: &serde_json::Value| !document.is_null())
        .collect()
}

/// `helm template` settings that use every option of the chart.
pub const CHART_WITH_EVERY_OPTION: &[&str] = &[
    "createNamespace=true",
    "operator.watchNamespace=shop",
    "adapter.expressions.p95=latest(service_percentile{p='95'})",
    "adapter.expressions.cpm-everywhere.expression=latest(service_cpm)",
    "adapter.expressions.cpm-everywhere.oaps[0]=default",
    "adapter.expressions.cpm-everywhere.oaps[1]=central",
    "adapter.expressions.cpm-everywhere.combine=sum",
    "adapter.expressions.cpm-everywhere.unreachable=partial",
    "adapter.expressions.cpm-everywhere.staleness=2m",
    "adapter.oapCredentialsSecret=oap-basic",
    "adapter.oaps[0].name=central",
    "adapter.oaps[0].url=https://oap.central.example.com:12800/graphql",
    "adapter.oaps[0].credentialsSecret=central-oap-basic",
    "adapter.oaps[1].name=staging",
    "adapter.oaps[1].url=http://oap.staging.svc:12800/graphql",
    "adapter.oapRoutes.legacy=central",
    "adapter.oapRoutes.team-a=team-a/skywalking",
    "imagePullSecrets[0].name=regcred",
    "operator.nodeSelector.pool=system",
    "adapter.tolerations[0].operator=Exists",
    "adapter.priorityClassName=system-cluster-critical",
    "image.tag=0.1.0-rc.1",
    "operator.rover.namespaces[0]=observability",
];

/// The chart rendered with `settings` (`--set` values), CRDs included.
pub fn render_chart(settings: &[&str]) -> String {
    render_chart_or_refusal(settings).unwrap_or_else(|e| panic!("helm template {settings:?}: {e}"))
}

/// The chart rendered with `settings`, or helm's refusal.
pub fn render_chart_or_refusal(settings: &[&str]) -> Result<String, String> {
    let helm = std::process::Command::new(repo_path("hack/helm.sh"))
        .output()
        .expect("hack/helm.sh runs");
    assert!(
        helm.status.success(),
        "hack/helm.sh could not provide helm: {}",
        String::from_utf8_lossy(&helm.stderr)
    );
    let helm = String::from_utf8(helm.stdout).unwrap();
    let mut command = std::process::Command::new(helm.trim());
    command
        .args(["template", "skylift"])
        .arg(repo_path("charts/skylift"))
        .args(["--namespace", "skylift-system", "--include-crds"]);
    for setting in settings {
        command.args(["--set", setting]);
    }
    let rendered = command.output().expect("helm runs");
    if !rendered.status.success() {
        return Err(String::from_utf8_lossy(&rendered.stderr).into_owned());
    }
    Ok(String::from_utf8(rendered.stdout).unwrap())
}

/// The real control plane of this test binary; the calling test returns at once (the
/// tier skipped, said once) when `KUBEBUILDER_ASSETS` is unset.
#[macro_export]
macro_rules! real_control_plane {
    () => {
        match skylift_testkit::cluster::ControlPlane::shared().await {
            Some(plane) => plane,
            None => return,
        }
    };
}

/// The directory holding the workspace's binaries for this test build (`target/debug`).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("a target directory")
        .to_path_buf()
}

/// Path of a workspace binary; `cargo test --workspace` builds them before any test runs.
pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo test --workspace` (or `cargo build -p <crate>` first)",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A port free on loopback address `ip` (127.0.0.2, ...): upstream stand-ins on different
/// loopback addresses share one port, as a pool's pods do.
pub fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A scratch directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("skylift-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 100 ms until it returns a value, failing after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's `endpoints.json` for these upstream addresses (weight 1 each), as the
/// proxy's `--upstreams-file` reads it.
pub fn endpoints_json(addresses: &[String]) -> String {
    let list: Vec<String> = addresses
        .iter()
        .map(|a| format!(r#"{{"address":"{a}","weight":1}}"#))
        .collect();
    format!(r#"{{"endpoints":[{}]}}"#, list.join(","))
}

/// Waits up to 20 s for a program's admin server (`admin`: `host:port`) to answer
/// `/readyz` with 200.
pub async fn wait_ready(what: &str, admin: &str) {
    let url = format!("http://{admin}/readyz");
    wait_for(
        &format!("{what} ready"),
        Duration::from_secs(20),
        || async {
            let (code, _) = skylift_testkit::http::get(&url).await.ok()?;
            (code == 200).then_some(())
        },
    )
    .await;
}
