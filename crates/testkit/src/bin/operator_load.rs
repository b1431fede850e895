//! Load for the operator benchmark (`hack/bench-operator.sh`): creates OAPServers (each
//! with Ready pods, as the kubelet would report them) and Satellites referring to them,
//! waits until the operator has reconciled every one, then counts the API writes of an
//! idle period. Prints one JSON object with the results.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skylift_api::{OAPServer, Satellite};

#[derive(Parser)]
struct Args {
    /// URL of the API server (the double).
    #[arg(long)]
    server: String,
    /// URL of the double's write counters.
    #[arg(long)]
    writes_url: String,
    #[arg(long, default_value_t = 100)]
    oapservers: usize,
    #[arg(long, default_value_t = 1000)]
    satellites: usize,
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    #[arg(long, default_value_t = 2)]
    pods_per_oapserver: usize,
    /// How long to watch the idle operator, in seconds.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

async fn writes(url: &str) -> anyhow::Result<Value> {
    let (code, body) = skylift_testkit::http::get(url).await?;
    anyhow::ensure!(code == 200, "GET {url} answered {code}");
    Ok(serde_json::from_str(&body)?)
}

fn namespace(i: usize) -> String {
    format!("load-{i}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("crypto provider already installed"))?;
    let args = Args::parse();
    let client = kube::Client::try_from(kube::Config::new(args.server.parse()?))?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for i in 0..args.namespaces {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace(i)}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }

    let started = Instant::now();
    // OAPServers, and their pods turning Ready as the kubelet would report them.
    futures::stream::iter(0..args.oapservers)
        .map(|i| {
            let client = client.clone();
            let pods_per = args.pods_per_oapserver;
            let ns = namespace(i % args.namespaces);
            async move {
                let name = format!("oap-{i}");
                let api: Api<OAPServer> = Api::namespaced(client.clone(), &ns);
                let oap: OAPServer = serde_json::from_value(json!({
                    "apiVersion": "skylift.io/v1alpha1", "kind": "OAPServer",
                    "metadata": {"name": name}, "spec": {"version": "10.2.0", "replicas": pods_per}}))?;
                api.create(&PostParams::default(), &oap).await?;
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                for p in 0..pods_per {
                    let pod_name = format!("{name}-oap-{p}");
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": pod_name, "labels": {
                            "app.kubernetes.io/name": "oap-server", "app.kubernetes.io/instance": name}},
                        "spec": {"containers": [{"name": "oap", "image": "apache/skywalking-oap-server:10.2.0"}]}}))?;
                    pods.create(&PostParams::default(), &pod).await?;
                    let ip = format!("10.{}.{}.{}", i / 250, i % 250, p + 1);
                    let status = json!({"status": {"phase": "Running", "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}]}});
                    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.parallel)
        .try_collect::<Vec<_>>()
        .await?;
    futures::stream::iter(0..args.satellites)
        .map(|i| {
            let client = client.clone();
            let oap = i % args.oapservers;
            let ns = namespace(oap % args.namespaces);
            async move {
                let api: Api<Satellite> = Api::namespaced(client, &ns);
                let sat: Satellite = serde_json::from_value(json!({
                    "apiVersion": "skylift.io/v1alpha1", "kind": "Satellite",
                    "metadata": {"name": format!("sat-{i}")},
                    "spec": {"upstream": {"oapServerRef": {"name": format!("oap-{oap}")}},
                             "connectionLimit": {"maxConnections": 100},
                             "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "targetConnectionsPerReplica": 80}}}))?;
                api.create(&PostParams::default(), &sat).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.parallel)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();

    // Reconciled: status written for the current generation, with the OAP pods published.
    let satellites: Api<Satellite> = Api::all(client.clone());
    let oapservers: Api<OAPServer> = Api::all(client.clone());
    let expected_upstreams = i32::try_from(args.pods_per_oapserver)?;
    loop {
        let sats = satellites.list(&ListParams::default()).await?;
        let done_sats = sats
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.observed_generation == s.metadata.generation
                        && st.upstream_count == expected_upstreams
                        && st.hpa.is_some()
                })
            })
            .count();
        let oaps = oapservers.list(&ListParams::default()).await?;
        let done_oaps = oaps
            .items
            .iter()
            .filter(|o| {
                o.status
                    .as_ref()
                    .is_some_and(|st| st.observed_generation == o.metadata.generation)
            })
            .count();
        if done_sats == args.satellites && done_oaps == args.oapservers {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            anyhow::bail!(
                "not reconciled after 15 minutes: {done_sats} Satellites, {done_oaps} OAPServers"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reconciled = started.elapsed();

    // Let trailing writes land (status of the last ones), then watch an idle period.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = writes(&args.writes_url).await?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let after = writes(&args.writes_url).await?;
    let delta = |key: &str| after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0);
    let mut idle_by_request = serde_json::Map::new();
    for (request, count) in after["byRequest"].as_object().into_iter().flatten() {
        let previous = before["byRequest"][request].as_u64().unwrap_or(0);
        let count = count.as_u64().unwrap_or(0);
        if count > previous {
            idle_by_request.insert(request.clone(), json!(count - previous));
        }
    }
    println!(
        "{}",
        json!({
            "oapservers": args.oapservers,
            "satellites": args.satellites,
            "pods": args.oapservers * args.pods_per_oapserver,
            "seconds_to_create": created.as_secs_f64(),
            "seconds_until_all_reconciled": reconciled.as_secs_f64(),
            "writes_during_reconcile": before["total"],
            "idle_seconds": args.idle_seconds,
            "idle_writes_total": delta("total"),
            "idle_writes_excluding_lease_renewals": delta("totalExcludingLeases"),
            "idle_writes_by_request": idle_by_request,
        })
    );
    Ok(())
}
