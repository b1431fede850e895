//! The design card's loop on a real control plane: skylift installed from its bundles, an
//! OAPServer and a Satellite declared, the operator publishing the upstreams the proxies
//! read, clients connecting through the Satellite's Service, the proxies' connection
//! counts reaching OAP, the adapter serving them behind the real aggregator, and the real
//! HPA controller scaling the Satellite through `/scale` once connections pass the limit;
//! the new proxy then takes the clients the full one turned away. The pods are local
//! programs (testkit::cluster::scaling). Prints the two latencies a user waits for.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use serde_json::json;
use skylift_e2e::agents::Agent;
use skylift_e2e::{Scratch, binary_dir, real_control_plane, repo_path, wait_for};
use skylift_testkit::cluster::scaling::{
    NAMESPACE, OAP, SATELLITE, ScalingLoop, Settings, TELEMETRY_SERVICE,
};
use skylift_testkit::http;

/// Connections a replica takes, and the connections per replica the HPA aims at: the
/// target below the limit, as the examples set them, so the reading passes the HPA's
/// tolerance (10 % over the target) while a replica is full.
const LIMIT: usize = 11;
const TARGET: usize = 10;
/// Clients: more than one replica takes.
const CLIENTS: usize = 14;

/// The proxy's own view of its connections.
async fn connections(admin: std::net::SocketAddr) -> f64 {
    match http::get(&format!("http://{admin}/metrics")).await {
        Ok((200, text)) => http::prometheus_sum(&text, "skylift_proxy_connections"),
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_satellite_past_its_connection_limit_is_scaled_out_by_the_real_hpa() {
    let plane = real_control_plane!();
    let scratch = Scratch::new("real-loop");
    let scaling = ScalingLoop::start(
        plane,
        Settings {
            repo: repo_path(""),
            binaries: binary_dir(),
            logs: scratch.path().join("logs"),
        },
    )
    .await;

    // The Satellite: at most eleven connections a replica, scaled on ten a replica.
    let declared = Instant::now();
    scaling
        .create(
            "Satellite",
            SATELLITE,
            json!({"upstream": {"oapServerRef": {"name": OAP}},
                   "connectionLimit": {"maxConnections": LIMIT},
                   "telemetry": {"service": TELEMETRY_SERVICE},
                   "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerReplica": TARGET}}),
        )
        .await;
    let first = wait_for(
        "the first proxy's upstream list",
        Duration::from_secs(120),
        || async {
            let proxy = scaling.proxies().into_iter().find(|p| p.ready)?;
            let (_, said) = http::get(&format!("http://{}/readyz", proxy.admin))
                .await
                .ok()?;
            said.contains("2 of 2 upstreams up").then_some(proxy)
        },
    )
    .await;
    let to_upstreams = declared.elapsed();
    println!(
        "Satellite applied -> its proxy's first upstream list (both OAP pods): {:.1} s",
        to_upstreams.as_secs_f64()
    );

    // Fourteen clients through the Service: eleven on the one replica, three turned away
    // and trying again.
    let agents: Vec<Agent> = (0..CLIENTS)
        .map(|i| {
            Agent::start(
                scaling.service,
                "shop",
                &format!("shop-{i}"),
                5,
                Duration::from_millis(500),
            )
        })
        .collect();
    wait_for("the first proxy full", Duration::from_secs(60), || async {
        (connections(first.admin).await >= LIMIT as f64).then_some(())
    })
    .await;
    let over_limit = Instant::now();

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(scaling.client.clone(), NAMESPACE);
    let workload = format!("{SATELLITE}-satellite");
    let seen_over = wait_for(
        "the HPA reading more than the target",
        Duration::from_secs(120),
        || async {
            let hpa = hpas.get(&workload).await.ok()?;
            let value = hpa
                .status?
                .current_metrics?
                .first()?
                .external
                .clone()?
                .current
                .value?;
            let milli = skylift_testkit::hpa::milli_value(&value.0)?;
            (milli > (TARGET as i64) * 1000).then_some(value.0)
        },
    )
    .await;
    let to_seen = over_limit.elapsed();
    while scaling
        .satellite()
        .await
        .is_none_or(|satellite| satellite["spec"]["replicas"] != 2)
    {
        if over_limit.elapsed() > Duration::from_secs(180) {
            let (_, hpa) = plane.kubectl(&["get", "hpa", "-n", NAMESPACE, "-o", "yaml"]);
            let (_, satellite) =
                plane.kubectl(&["get", "satellite", "-n", NAMESPACE, "-o", "yaml"]);
            panic!("the HPA did not scale the Satellite to 2 within 180 s:\n{hpa}\n{satellite}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let to_scaled = over_limit.elapsed();
    println!(
        "connections over the limit -> HPA reads {seen_over} (target {TARGET}): {:.1} s; -> Satellite scaled to 2 replicas: {:.1} s",
        to_seen.as_secs_f64(),
        to_scaled.as_secs_f64()
    );

    // The new replica runs, and the clients turned away land on it.
    let second = wait_for(
        "the second proxy taking connections",
        Duration::from_secs(120),
        || async {
            for proxy in scaling.proxies() {
                if proxy.pod != first.pod && proxy.ready && connections(proxy.admin).await >= 1.0 {
                    return Some(proxy);
                }
            }
            None
        },
    )
    .await;
    let spread = (
        connections(first.admin).await,
        connections(second.admin).await,
    );
    println!(
        "connections spread: {} on {}, {} on {} ({:.1} s after the limit was passed)",
        spread.0,
        first.pod,
        spread.1,
        second.pod,
        over_limit.elapsed().as_secs_f64()
    );
    assert!(
        spread.0 <= LIMIT as f64 && spread.1 <= LIMIT as f64,
        "{spread:?}"
    );
    // Every client is served once the pool grew (those turned away tried again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while agents.iter().any(|agent| !agent.connected()) {
        if tokio::time::Instant::now() > deadline {
            // Where each client and proxy stands: whether the unserved ones keep being
            // turned away (disconnects climbing) or wait on a call never answered.
            let mut proxies = Vec::new();
            for proxy in scaling.proxies() {
                let open = connections(proxy.admin).await;
                proxies.push(format!(
                    "{} ready={} connections={open}",
                    proxy.pod, proxy.ready
                ));
            }
            let clients: Vec<String> = agents
                .iter()
                .map(|agent| {
                    let counts = &agent.counts;
                    format!(
                        "{} connected={} disconnects={} acknowledged={} refused={}",
                        agent.instance,
                        agent.connected(),
                        counts.disconnects.load(Ordering::Relaxed),
                        counts.acknowledged.load(Ordering::Relaxed),
                        counts.refused.load(Ordering::Relaxed),
                    )
                })
                .collect();
            panic!(
                "not every client served within 60 s of the second proxy taking connections\n\
                 proxies:\n  {}\nclients:\n  {}",
                proxies.join("\n  "),
                clients.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "every client served {:.1} s after the limit was passed",
        over_limit.elapsed().as_secs_f64()
    );
}
