//! What the agent injector does to a pod, run for real: the init container's script of
//! the webhook's patch copies the real agent (as from its image) into the shared volume,
//! then an application that knows nothing of SkyWalking runs with exactly the
//! environment the patch gave its container, and its agent reports to a strict OAP
//! double. The mount root `/sky/agent` (and the Node.js image's `/skywalking/nodejs`) are
//! moved under a scratch directory; nothing else of the script or the environment changes.
//!
//! - Python (apache-skywalking 1.2.0): the `sitecustomize` module the script writes starts
//!   the agent in the application's own environment (a virtualenv, so the machine's own
//!   packages are never seen), which pins a protobuf other than the agent's: the
//!   application imports its own; when the agent cannot start, the application still runs.
//! - Node.js (skywalking-backend-js 0.9.0, copied from the agent image, no registry): the
//!   start module loaded through `NODE_OPTIONS` instruments the application's HTTP calls;
//!   when the image holds no agent, the init container still succeeds and the application
//!   starts without it.

use std::collections::BTreeMap;
use std::path::Path;
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
/// PATH (the agent image's tools); what it said on stderr.
fn run_init_container(pod: &Value, root: &Path, path: &Path) -> String {
    let script = pod["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    std::fs::create_dir_all(root.join("sky/agent")).unwrap();
    let output = Command::new("sh")
        .args(["-c", &relocated(script, root)])
        .env(
            "PATH",
            format!(
                "{}:{}",
                path.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "the init container's script failed (the pod would never start): {said}"
    );
    said
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

#[tokio::test]
async fn an_injected_python_agent_leaves_the_applications_packages_first_and_never_stops_it() {
    let venv_python = installed(
        "SKYLIFT_PYTHON_AGENT",
        "target/python-agent/bin/python",
        "hack/python-agent.sh",
    );
    // The application's environment: a virtualenv of its own (the machine's site-packages
    // unseen) pinning protobuf 5.29.5, where the agent's image has 7.x.
    let app_python = installed(
        "SKYLIFT_PYTHON_APP",
        "target/python-app/bin/python",
        "hack/python-app.sh",
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
            .join("sky/agent/python/loader/sitecustomize.py")
            .exists()
    );
    let env = app_env(&pod, scratch.path());
    let agent_protobuf = Command::new(&venv_python)
        .args(["-c", "import google.protobuf as p; print(p.__version__)"])
        .output()
        .unwrap();
    let agent_protobuf = String::from_utf8(agent_protobuf.stdout).unwrap();
    assert_ne!(
        agent_protobuf.trim(),
        "5.29.5",
        "the agent image's own protobuf differs"
    );

    let app_code = "import sys, time\nimport google.protobuf as p\nprint('protobuf', p.__version__, 'from', p.__file__, flush=True)\nprint('serving orders', flush=True)\ntime.sleep(5)\nprint('agent loaded:', 'skywalking' in sys.modules)";
    let mut app = Command::new(&app_python);
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
    let output = app.output();
    assert!(output.contains("agent loaded: True"), "{output}");
    // The application's own protobuf, not the agent's: its packages come first.
    let app_packages = app_python.parent().unwrap().parent().unwrap();
    let seen = output
        .lines()
        .find(|l| l.starts_with("protobuf "))
        .unwrap_or_default()
        .to_string();
    assert!(
        seen.starts_with("protobuf 5.29.5 from ")
            && seen.contains(&*app_packages.to_string_lossy()),
        "{output}"
    );
    assert!(sink.refusals().is_empty(), "{:?}", sink.refusals());

    // The agent cannot start (its packages are gone): the application runs all the same,
    // in an environment where nothing else could provide the agent.
    std::fs::remove_dir_all(scratch.path().join("sky/agent/python/packages/skywalking")).unwrap();
    let mut broken = Command::new(&app_python);
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
    let said = run_init_container(&pod, scratch.path(), Path::new("/usr/bin"));
    assert!(said.is_empty(), "{said}");
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

#[tokio::test]
async fn a_nodejs_pod_whose_agent_cannot_be_copied_still_starts_its_application() {
    let scratch = Scratch::new("injected-node-missing");
    let pod = injected_pod(
        json!({"selector": {"inject": "yes"}, "language": "nodejs"}),
        "127.0.0.1:1",
    );
    // An image without the agent (a wrong override, say): nothing at /skywalking/nodejs.
    let said = run_init_container(&pod, scratch.path(), Path::new("/usr/bin"));
    assert!(
        said.contains("skylift: the Node.js agent could not be copied"),
        "{said}"
    );
    let env = app_env(&pod, scratch.path());
    let mut app = Command::new("node");
    app.args(["-e", "console.log('order placed')"]).envs(&env);
    let mut app = Process::spawn("node-app-without-agent", app, scratch.path());
    exited_ok(&mut app, Duration::from_secs(30)).await;
    let output = app.output();
    assert!(output.contains("order placed"), "{output}");
    assert!(
        output.contains("skylift: the SkyWalking agent did not start"),
        "{output}"
    );
}
