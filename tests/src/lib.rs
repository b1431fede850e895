//! Support for end-to-end tests that run skylift's binaries as processes.
//!
//! - [`agents`]: segment-reporting clients that hold one connection each;
//! - [`rbac`]: recorded requests held against a bundle's RBAC rules;
//! - [`standin`]: the OAP stand-in process.

pub mod agents;
pub mod rbac;
pub mod standin;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A child process, killed when dropped, with its output in a file.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("duplicating the log file");
        command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name: name.into(),
            child,
            log,
        }
    }

    /// SIGKILL: the process gets no chance to clean up (a crashed or evicted pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id, for sending signals.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|status| status.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
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
