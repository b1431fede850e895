//! What the agent injector does to a pod, run for real: the init container's script of
//! the webhook's patch copies the real agent (as from its image) into the shared volume,
//! then an application that knows nothing of SkyWalking runs with exactly the
//! environment the patch gave its container, and its agent reports to a strict OAP
//! double. The mount root `/sky/agent` (and the Node.js image's `/skywalking/nodejs`) are
//! moved under a scratch directory; nothing else of the script or the environment changes.
//!
//! - Python (apache-skywalking 1.2.0): the `sitecustomize` module the script writes starts
//!   the agent in a plain interpreter without the agent installed; when the agent cannot
//!   start, the application still runs.
//! - Node.js (skywalking-backend-js 0.9.0): the start module loaded through `NODE_OPTIONS`
//!   instruments the application's HTTP calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skylift_api::SwAgent;
use skylift_e2e::{Process, Scratch, exited_ok, installed, wait_for};
use skylift_operator::build::inject::{MOUNT_PATH, Outcome, inject};
use skylift_testkit::sink::Sink;

const KEEP_ALIVE: &str = "ManagementService/keepAlive";
const SEGMENTS: &str = "TraceSegmentReportService/collect";

/// The pod after the webhook's patch, for a SwAgent of `spec` reporting to `backend`.
fn injected_pod(spec: Value, backend: &str) -> Value {
    let mut agent = SwAgent::new("agent", serde_json::from_value(spec).unwrap());
    agent.metadata.namespace = Some("shop".into());
    let pod = json!({"metadata": {"name": "app", "labels": {"inject": "yes", "app": "storefront"}},
                     "spec": {"containers": [{"name": "app", "image": "shop/app:1"}]}});
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let Outcome::Injected { patch, .. } = inject(&typed, &[agent], Some(backend)) else {
        panic!("the pod was not injected");
    };
    let mut patched = pod;
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).unwrap();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

/// `text` with the pod's paths moved under `root`.
fn relocated(text: &str, root: &Path) -> String {
    text.replace(MOUNT_PATH, &root.join("sky/agent").to_string_lossy())
        .replace(
            "/skywalking/nodejs",
            &root.join("image/nodejs").to_string_lossy(),
        )
}

/// Runs the patch's init container script, relocated under `root`, with `path` first on
/// PATH (the agent image's tools).
fn run_init_container(pod: &Value, root: &Path, path: &Path) {
    let script = pod["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    std::fs::create_dir_all(root.join("sky/agent")).unwrap();
    let status = Command::new("sh")
        .args(["-c", &relocated(script, root)])
        .env(
            "PATH",
            format!(
                "{}:{}",
                path.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .status()
        .unwrap();
    assert!(status.success(), "the init container's script failed");
}

/// The application container's environment as the patch left it, relocated.
fn app_env(pod: &Value, root: &Path) -> BTreeMap<String, String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or_default();
            (
                e["name"].as_str().unwrap().to_string(),
                relocated(value, root),
            )
        })
        .collect()
}

/// The interpreter the agent's virtualenv was made from: Python without the agent.
fn bare_python(venv_python: &Path) -> PathBuf {
    std::fs::canonicalize(venv_python).unwrap()
}

#[tokio::test]
async fn an_injected_python_agent_starts_in_a_plain_interpreter_and_never_stops_the_app() {
    let venv_python = installed(
        "SKYLIFT_PYTHON_AGENT",
        "target/python-agent/bin/python",
        "hack/python-agent.sh",
    );
    let sink = Sink::start().await.unwrap();
    let scratch = Scratch::new("injected-python");
    let pod = injected_pod(
        json!({"selector": {"inject": "yes"}, "language": "python",
               "env": [{"name": "SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD", "value": "2"}]}),
        &sink.address().to_string(),
    );
    run_init_container(&pod, scratch.path(), venv_python.parent().unwrap());
    assert!(
        scratch
            .path()
            .join("sky/agent/python/sitecustomize.py")
            .exists()
    );
    let env = app_env(&pod, scratch.path());

    let app_code = "import sys, time\nprint('serving orders', flush=True)\ntime.sleep(5)\nprint('agent loaded:', 'skywalking' in sys.modules)";
    let mut app = Command::new(bare_python(&venv_python));
    app.args(["-c", app_code])
        .env_clear()
        .envs(&env)
        .env("PATH", "/usr/bin:/bin");
    let mut app = Process::spawn("python-app", app, scratch.path());
    wait_for(
        "the injected agent's heartbeats",
        Duration::from_secs(30),
        || async {
            sink.attributed(KEEP_ALIVE)
                .keys()
                .any(|(service, _)| service == "storefront")
                .then_some(())
        },
    )
    .await;
    exited_ok(&mut app, Duration::from_secs(30)).await;
    assert!(
        app.output().contains("agent loaded: True"),
        "{}",
        app.output()
    );
    assert!(sink.refusals().is_empty(), "{:?}", sink.refusals());

    // The agent cannot start (its packages are gone): the application runs all the same.
    std::fs::remove_dir_all(scratch.path().join("sky/agent/python/skywalking")).unwrap();
    let mut broken = Command::new(bare_python(&venv_python));
    broken
        .args(["-c", "print('still serving', flush=True)"])
        .env_clear()
        .envs(&env);
    let mut broken = Process::spawn("python-app-without-agent", broken, scratch.path());
    exited_ok(&mut broken, Duration::from_secs(30)).await;
    let output = broken.output();
    assert!(output.contains("still serving"), "{output}");
    assert!(
        output.contains("skylift: the SkyWalking agent did not start"),
        "{output}"
    );
}

#[tokio::test]
async fn an_injected_nodejs_agent_traces_an_app_that_never_required_it() {
    let modules = installed(
        "SKYLIFT_NODE_AGENT",
        "target/node-agent/node_modules",
        "hack/node-agent.sh",
    );
    let sink = Sink::start().await.unwrap();
    let scratch = Scratch::new("injected-node");
    let pod = injected_pod(
        json!({"selector": {"inject": "yes"}, "language": "nodejs"}),
        &sink.address().to_string(),
    );
    // The agent "image": the installed agent at the path an image for it carries.
    let image = scratch.path().join("image/nodejs");
    std::fs::create_dir_all(&image).unwrap();
    let copied = Command::new("cp")
        .arg("-R")
        .arg(&modules)
        .arg(&image)
        .status()
        .unwrap();
    assert!(copied.success());
    run_init_container(&pod, scratch.path(), Path::new("/usr/bin"));
    let env = app_env(&pod, scratch.path());

    let app_code = "const http = require('http');\
        const server = http.createServer((q, r) => r.end('placed')).listen(0, () => {\
          http.get(`http://127.0.0.1:${server.address().port}/checkout/1`, (res) => {\
            res.resume(); res.on('end', () => { console.log('order placed'); setTimeout(() => process.exit(0), 3000); });\
          });\
        });";
    let mut app = Command::new("node");
    app.args(["-e", app_code]).envs(&env);
    let mut app = Process::spawn("node-app", app, scratch.path());
    wait_for(
        "the injected agent's traces",
        Duration::from_secs(30),
        || async {
            sink.attributed(SEGMENTS)
                .keys()
                .any(|(service, _)| service == "storefront")
                .then_some(())
        },
    )
    .await;
    exited_ok(&mut app, Duration::from_secs(30)).await;
    assert!(app.output().contains("order placed"), "{}", app.output());
    assert!(sink.refusals().is_empty(), "{:?}", sink.refusals());
}
