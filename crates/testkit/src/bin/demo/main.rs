//! `skylift-demo`: the scaling loop on one machine, for a newcomer (`hack/demo.sh` runs it).
//!
//! Starts two OAP stand-in nodes, one skylift-proxy, skylift-adapter (on an in-process
//! API-server double, as a cluster would host it) and instrumented Python programs reporting
//! through the proxy with the real SkyWalking agent. Every few seconds it prints the
//! connections per proxy, the events each OAP node received, and the external metric the
//! HPA would read with what it would do; after a while it adds a third OAP node and traffic
//! moves onto it. Ctrl-C stops everything it started.
//!
//! With `--federation` ([`federation`]): two "clouds", each with its OAP and its proxy, copy
//! their meters and instance reports to one central OAP.

mod federation;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use skylift_api::constants::metrics;
use skylift_api::endpoints::{UpstreamEndpoint, UpstreamEndpoints};
use skylift_testkit::aggregation;
use skylift_testkit::aggregator::Aggregator;
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::hpa::{self, Target};
use skylift_testkit::http;
use skylift_testkit::oap::{Announcement, NodeStats, NodeView};
use skylift_testkit::pki::TestCa;
use tokio::process::{Child, Command};

#[derive(Parser)]
#[command(name = "skylift-demo", about = "skylift's scaling loop on one machine")]
struct Args {
    /// Python with the SkyWalking agent installed (hack/python-agent.sh makes one).
    #[arg(long)]
    python: PathBuf,
    /// The instrumented program the agents run.
    #[arg(long)]
    app: PathBuf,
    /// Where the demo's processes write their logs.
    #[arg(long, default_value = "target/demo")]
    logs: PathBuf,
    /// Instrumented programs (each one agent, one connection).
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// The proxy's client port (point your own agents here too).
    #[arg(long, default_value_t = 11800)]
    proxy_port: u16,
    #[arg(long, default_value_t = 10)]
    max_connections: u32,
    /// When the third OAP node joins.
    #[arg(long, default_value = "30s", value_parser = skylift_api::duration::parse)]
    third_node_after: Duration,
    /// How often the view is printed.
    #[arg(long, default_value = "3s", value_parser = skylift_api::duration::parse)]
    every: Duration,
    /// Stop by itself after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = skylift_api::duration::parse)]
    run_for: Option<Duration>,
    /// Federation instead of scaling: two clouds, each with its OAP (two stand-in nodes),
    /// a skylift-proxy and agents, whose proxies copy meters and instance reports to a
    /// central OAP; prints what each OAP receives.
    #[arg(long)]
    federation: bool,
}

/// The demo's clock, the same in both modes: a tick every `--every` until `--run-for`,
/// and the one tick at which the third OAP node is due.
struct Schedule {
    started: Instant,
    ticker: tokio::time::Interval,
    run_for: Option<Duration>,
    third_node_after: Duration,
    third_added: bool,
}

impl Schedule {
    fn new(args: &Args) -> Schedule {
        Schedule {
            started: Instant::now(),
            ticker: tokio::time::interval(args.every),
            run_for: args.run_for,
            third_node_after: args.third_node_after,
            third_added: false,
        }
    }

    /// Waits for the next tick: `None` once the demo's time is up, else whether the third
    /// node is to be added now.
    async fn next(&mut self) -> Option<bool> {
        self.ticker.tick().await;
        let elapsed = self.started.elapsed();
        if self.run_for.is_some_and(|limit| elapsed >= limit) {
            return None;
        }
        let due = !self.third_added && elapsed >= self.third_node_after;
        self.third_added |= due;
        Some(due)
    }
}

const TELEMETRY_SERVICE: &str = "satellite-service";
const TARGET_CONNECTIONS: i64 = 10;

/// A child process killed when the demo ends, its output in `<logs>/<name>.log`.
fn spawn(name: &str, command: &mut Command, logs: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("the demo's directory")?
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is not built (hack/demo.sh builds it)", path.display());
    }
    Ok(path)
}

fn endpoints(nodes: &[SocketAddr]) -> String {
    UpstreamEndpoints {
        endpoints: nodes
            .iter()
            .enumerate()
            .map(|(i, address)| UpstreamEndpoint {
                address: address.to_string(),
                weight: 1,
                pod: Some(format!("oap-{i}")),
                zone: None,
                draining: false,
            })
            .collect(),
    }
    .to_json()
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Events a node received: every report, not health checks.
fn events(stats: &NodeStats) -> u64 {
    stats
        .methods
        .iter()
        .filter(|(method, _)| !method.starts_with("grpc.health"))
        .map(|(_, m)| m.messages)
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On Ctrl-C or SIGTERM the demo's future is dropped, and with it every child process
    // (each is killed on drop), wherever the demo was.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => {
            println!("interrupted");
            Ok(())
        }
        _ = terminate.recv() => {
            println!("terminated");
            Ok(())
        }
    };
    println!("stopping everything the demo started");
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&args.logs)?;
    if args.federation {
        let logs = args.logs.canonicalize()?;
        return federation::run(&args, &logs).await;
    }
    if let Some(assets) = skylift_testkit::cluster::assets() {
        return on_real_control_plane(args, &assets).await;
    }
    let logs = args.logs.canonicalize()?;
    println!("skylift demo: logs in {}", logs.display());

    // OAP: two nodes sharing their storage, as an OAP cluster shares its database.
    let (_standin, announced) = start_standin("oap-standin", 2, &logs).await?;
    let mut oap_nodes: Vec<SocketAddr> = announced.nodes.iter().map(|n| n.grpc).collect();
    let nodes_url = format!("{}/nodes", announced.control);
    let graphql = format!("http://{}/graphql", announced.nodes[0].http);
    println!("OAP stand-in: nodes {oap_nodes:?}, GraphQL {graphql}");

    // The proxy: its upstreams from a file in the operator's endpoints.json format.
    let endpoints_file = logs.join("endpoints.json");
    std::fs::write(&endpoints_file, endpoints(&oap_nodes))?;
    let proxy_address = format!("127.0.0.1:{}", args.proxy_port);
    let admin_port = portpicker()?;
    let mut proxy = Command::new(binary("skylift-proxy")?);
    proxy
        .arg(format!("--listen={proxy_address}"))
        .arg(format!("--admin-listen=127.0.0.1:{admin_port}"))
        .arg(format!("--upstreams-file={}", endpoints_file.display()))
        .arg(format!("--max-connections={}", args.max_connections))
        .arg(format!("--telemetry-service={TELEMETRY_SERVICE}"))
        .args([
            "--telemetry-instance=satellite-0",
            "--telemetry-interval=2s",
        ]);
    let _proxy = spawn("skylift-proxy", &mut proxy, &logs)?;
    proxy_ready("the proxy", admin_port).await?;
    println!(
        "skylift-proxy: clients connect to {proxy_address} (at most {} at once)",
        args.max_connections
    );

    // The adapter, in a "cluster": the API-server double with what kube-apiserver gives
    // extension API servers; the demo reads it as kube-aggregator does for the HPA.
    let api = ApiServer::start(&[]).await?;
    let front_proxy_ca = TestCa::new("front-proxy-ca");
    aggregation::install(api.state(), &front_proxy_ca.cert_pem);
    let kubeconfig = logs.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let adapter_address: SocketAddr = format!("127.0.0.1:{}", portpicker()?).parse()?;
    let mut adapter = Command::new(binary("skylift-adapter")?);
    adapter
        .env("KUBECONFIG", &kubeconfig)
        .args(aggregation::adapter_args(adapter_address, &graphql, "2s"));
    let _adapter = spawn("skylift-adapter", &mut adapter, &logs)?;
    let aggregator = Aggregator::new(api.client(), &front_proxy_ca, adapter_address).await;
    let metric = metrics::external_metric_name(
        metrics::EXTERNAL_METRIC_PREFIX,
        metrics::SATELLITE_CONNECTION_COUNT,
    );
    let selector: BTreeMap<String, String> = skylift_api::metric_selector::escape(
        "service",
        &metrics::satellite_oap_service(TELEMETRY_SERVICE),
    );
    println!("skylift-adapter: serving external.metrics.k8s.io on {adapter_address}");

    // The agents: instrumented programs, one connection each.
    let agents = start_agents(&args, &proxy_address, &logs)?;
    println!(
        "{} SkyWalking Python agents report traces, logs and meters through the proxy",
        args.agents
    );
    println!("Ctrl-C stops everything.\n");

    let mut schedule = Schedule::new(&args);
    let started = schedule.started;
    let mut previous: BTreeMap<usize, (u64, Instant)> = BTreeMap::new();
    let mut proposals: Vec<(Instant, u32)> = Vec::new();
    while let Some(add_third_node) = schedule.next().await {
        if add_third_node {
            let (code, body) = http::post(&nodes_url).await?;
            if code != 201 {
                bail!("adding an OAP node: {code} {body}");
            }
            let added: serde_json::Value = serde_json::from_str(&body)?;
            let address: SocketAddr = added["grpc"]
                .as_str()
                .context("the new node's address")?
                .parse()?;
            oap_nodes.push(address);
            std::fs::write(&endpoints_file, endpoints(&oap_nodes))?;
            println!(
                "==> added OAP node {} at {address}; the proxy follows its endpoint list\n",
                added["node"]
            );
        }

        let elapsed = started.elapsed().as_secs();
        let (_, text) = http::get(&format!("http://127.0.0.1:{admin_port}/metrics")).await?;
        let connections = http::prometheus_sum(&text, "skylift_proxy_connections");
        println!("[{elapsed:>4}s] connections per proxy:  satellite-0 = {connections}");

        let (_, listed) = http::get(&nodes_url).await?;
        let states: Vec<NodeView> = serde_json::from_str(&listed)?;
        let now = Instant::now();
        let mut line = String::from("       events per OAP node:  ");
        for state in &states {
            let total = events(&state.stats);
            let rate = previous
                .get(&state.node)
                .map(|(before, at)| (total - before) as f64 / now.duration_since(*at).as_secs_f64())
                .unwrap_or(0.0);
            previous.insert(state.node, (total, now));
            let down = if state.running { "" } else { " (stopped)" };
            line.push_str(&format!(
                "node {} = {total:>6} ({rate:>5.0}/s){down}   ",
                state.node
            ));
        }
        println!("{line}");

        match aggregator.read("skywalking", &metric, &selector).await {
            Ok(values) if !values.is_empty() => {
                let sum: i64 = values.iter().filter_map(|v| hpa::milli_value(v)).sum();
                let raw = hpa::proposal(sum, Target::Value(TARGET_CONNECTIONS * 1000), 1, 1);
                proposals.retain(|(at, _)| now.duration_since(*at) < hpa::SCALE_DOWN_WINDOW);
                proposals.push((now, raw));
                let recent: Vec<u32> = proposals.iter().map(|(_, p)| *p).collect();
                let replicas = hpa::stabilized(&recent, 1, 1, 3);
                println!(
                    "       HPA reads {metric} = {} (target {TARGET_CONNECTIONS} per replica) -> {replicas} replica(s)\n",
                    values.join(",")
                );
            }
            Ok(_) => {
                println!("       HPA reads {metric}: no value yet (OAP has no minute for it)\n")
            }
            // OAP knows the metric once the proxy's first report arrived.
            Err(err) if err.starts_with("404") => println!(
                "       HPA reads {metric}: not yet (OAP has no report from the proxy yet)\n"
            ),
            Err(err) => println!("       HPA read failed: {err}\n"),
        }
    }
    drop(agents);
    Ok(())
}

/// The loop on a real control plane (`KUBEBUILDER_ASSETS`): kube-apiserver and
/// kube-controller-manager run here, skylift is installed from its bundles, and the pods
/// are local programs (`skylift_testkit::cluster::scaling`).
async fn on_real_control_plane(args: Args, assets: &Path) -> anyhow::Result<()> {
    use skylift_testkit::cluster::ControlPlane;
    use skylift_testkit::cluster::scaling::{
        NAMESPACE, OAP, SATELLITE, ScalingLoop, Settings, TELEMETRY_SERVICE,
    };
    println!(
        "skylift demo on a real control plane ({}): starting etcd, kube-apiserver and kube-controller-manager",
        assets.display()
    );
    let plane: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start(assets).await));
    println!(
        "control plane ready in {:.1} s at {}; kubectl: KUBECONFIG={}",
        plane.started_in.as_secs_f64(),
        plane.server,
        plane.admin_kubeconfig().display()
    );
    let binaries = std::env::current_exe()?
        .parent()
        .context("the demo's directory")?
        .to_path_buf();
    let logs = args.logs.canonicalize()?;
    println!(
        "kubectl apply -f manifests/operator-bundle.yaml -f manifests/adapter-bundle.yaml; OAPServer {OAP} (2 replicas); the adapter behind the aggregator"
    );
    let scaling = ScalingLoop::start(
        plane,
        Settings {
            repo: std::env::current_dir()?,
            binaries,
            logs: logs.clone(),
        },
    )
    .await;
    let limit = args.max_connections;
    let target = limit.saturating_sub(1).max(1);
    let declared = Instant::now();
    scaling
        .create(
            "Satellite",
            SATELLITE,
            serde_json::json!({"upstream": {"oapServerRef": {"name": OAP}},
                   "connectionLimit": {"maxConnections": limit},
                   "telemetry": {"service": TELEMETRY_SERVICE},
                   "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": target}}),
        )
        .await;
    wait_until(
        "the first proxy's upstream list",
        Duration::from_secs(120),
        async || {
            for proxy in scaling.proxies().into_iter().filter(|p| p.ready) {
                if let Ok((200, said)) = http::get(&format!("http://{}/readyz", proxy.admin)).await
                    && said.contains(" of ")
                {
                    return true;
                }
            }
            false
        },
    )
    .await?;
    println!(
        "Satellite {SATELLITE}: at most {limit} connections a replica, scaled on {target}; its proxy had its upstream list {:.1} s after it was applied",
        declared.elapsed().as_secs_f64()
    );
    println!(
        "clients connect to the Satellite's Service at {}",
        scaling.service
    );

    let agents = start_agents(&args, &scaling.service.to_string(), &logs)?;
    println!(
        "{} SkyWalking Python agents report through the Service; Ctrl-C stops everything.\n",
        args.agents
    );

    let hpas: kube::Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        kube::Api::namespaced(scaling.client.clone(), NAMESPACE);
    let mut schedule = Schedule::new(&args);
    let started = schedule.started;
    let mut previous: BTreeMap<usize, (u64, Instant)> = BTreeMap::new();
    while let Some(add_third_node) = schedule.next().await {
        if add_third_node {
            let (ok, said) =
                plane.kubectl(&["scale", "oapserver", OAP, "-n", NAMESPACE, "--replicas=3"]);
            println!(
                "==> kubectl scale oapserver {OAP} --replicas=3: {}",
                said.trim()
            );
            if !ok {
                bail!("scaling the OAPServer: {said}");
            }
        }
        let elapsed = started.elapsed().as_secs();
        let mut line = format!("[{elapsed:>4}s] connections per proxy:  ");
        for proxy in scaling.proxies() {
            let connections = match http::get(&format!("http://{}/metrics", proxy.admin)).await {
                Ok((200, text)) => http::prometheus_sum(&text, "skylift_proxy_connections"),
                _ => 0.0,
            };
            let state = if proxy.ready { "" } else { " (starting)" };
            line.push_str(&format!("{} = {connections}{state}   ", proxy.pod));
        }
        println!("{line}");
        let now = Instant::now();
        let mut line = String::from("       events per OAP node:  ");
        for state in scaling.oap.nodes().await {
            let total = events(&state.stats);
            let rate = previous
                .get(&state.node)
                .map(|(before, at)| (total - before) as f64 / now.duration_since(*at).as_secs_f64())
                .unwrap_or(0.0);
            previous.insert(state.node, (total, now));
            line.push_str(&format!(
                "{} = {total:>6} ({rate:>5.0}/s)   ",
                state.grpc.ip()
            ));
        }
        println!("{line}");
        let replicas = scaling
            .satellite()
            .await
            .and_then(|s| s["spec"]["replicas"].as_i64())
            .unwrap_or_default();
        match hpas.get(&format!("{SATELLITE}-satellite")).await {
            Ok(hpa) => {
                let status = hpa.status.unwrap_or_default();
                let reading = status
                    .current_metrics
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|m| m.external?.current.value)
                    .map(|q| q.0)
                    .unwrap_or_else(|| "nothing yet".into());
                println!(
                    "       the HPA reads {reading} (target {target} per replica), wants {} replica(s); the Satellite has {replicas}\n",
                    status.desired_replicas
                );
            }
            Err(err) => println!("       the HPA: {err}\n"),
        }
    }
    drop(agents);
    Ok(())
}

/// Waits until the proxy whose admin port is `admin_port` is ready.
async fn proxy_ready(what: &str, admin_port: u16) -> anyhow::Result<()> {
    wait_until(
        &format!("{what} becoming ready"),
        Duration::from_secs(20),
        async || {
            matches!(
                http::get(&format!("http://127.0.0.1:{admin_port}/readyz")).await,
                Ok((200, _))
            )
        },
    )
    .await
}

/// An OAP stand-in cluster of `instances` nodes, its log `<logs>/<name>.log`, once it
/// announced its addresses.
async fn start_standin(
    name: &str,
    instances: usize,
    logs: &Path,
) -> anyhow::Result<(Child, Announcement)> {
    let mut standin = Command::new(binary("skylift-oap-standin")?);
    standin.args([
        "--grpc-port=0".to_string(),
        "--http-port=0".to_string(),
        "--control-listen=127.0.0.1:0".to_string(),
        format!("--instances={instances}"),
    ]);
    let child = spawn(name, &mut standin, logs)?;
    let mut announced: Option<Announcement> = None;
    wait_until(
        &format!("{name} starting"),
        Duration::from_secs(20),
        async || {
            let text =
                std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            announced = text
                .lines()
                .next()
                .and_then(|l| serde_json::from_str(l).ok());
            announced.is_some()
        },
    )
    .await?;
    Ok((child, announced.expect("announced")))
}

/// `args.agents` instrumented programs reporting to `backend` with the real SkyWalking
/// Python agent, one connection each.
fn start_agents(args: &Args, backend: &str, logs: &Path) -> anyhow::Result<Vec<Child>> {
    start_agents_named(args, backend, logs, "shop")
}

/// The same, their instances named `<prefix>-1`, `<prefix>-2`, ...
fn start_agents_named(
    args: &Args,
    backend: &str,
    logs: &Path,
    prefix: &str,
) -> anyhow::Result<Vec<Child>> {
    let mut agents = Vec::new();
    for i in 1..=args.agents {
        let mut app = Command::new(&args.python);
        app.arg(&args.app)
            .args(["0", "0.05"])
            .env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", backend)
            .env("SW_AGENT_PROTOCOL", "grpc")
            .env("SW_AGENT_NAME", "demo-shop")
            .env("SW_AGENT_INSTANCE_NAME", format!("{prefix}-{i}"))
            .env("SW_AGENT_METER_REPORTER_PERIOD", "5")
            .env("SW_AGENT_LOG_REPORTER_LEVEL", "WARNING");
        agents.push(spawn(&format!("agent-{prefix}-{i}"), &mut app, logs)?);
    }
    Ok(agents)
}

/// A free loopback port.
fn portpicker() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
