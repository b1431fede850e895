//! `skylift-demo --federation`: federation on one machine. Two "clouds", `eu` and `us`,
//! each with its OAP (two stand-in nodes), a skylift-proxy in front of it and SkyWalking
//! Python agents reporting traces, logs and meters; each proxy also copies the meters and
//! instance reports (its default federation protocols) to one central OAP. Every tick it
//! prints what each cloud's OAP nodes received, what each proxy's federation queue did, and
//! what the central OAP received per method and per cloud: traces and logs stay in their
//! cloud, the central OAP sees the meters and instances of both.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use skylift_testkit::http;
use skylift_testkit::oap::{NodeStats, NodeView};
use tokio::process::{Child, Command};

use super::{
    Args, Schedule, binary, endpoints, events, portpicker, proxy_ready, spawn, start_agents_named,
    start_standin,
};

const CLOUDS: [&str; 2] = ["eu", "us"];

/// One cloud: its OAP, its proxy, its agents (all killed when it is dropped).
struct Cloud {
    name: &'static str,
    nodes_url: String,
    admin_port: u16,
    _processes: Vec<Child>,
}

/// `service/method` of a full method name, for a short column.
fn short(method: &str) -> &str {
    let method = method.trim_start_matches('/');
    method
        .rsplit_once('.')
        .map_or(method, |(_, service_method)| service_method)
}

/// A federation counter of a proxy's metrics, summed over its labels.
fn federation_sum(metrics: &str, name: &str) -> f64 {
    http::prometheus_sum(metrics, &format!("skylift_proxy_federation_{name}"))
}

async fn stats(nodes_url: &str) -> anyhow::Result<Vec<NodeView>> {
    let (_, listed) = http::get(nodes_url).await?;
    Ok(serde_json::from_str(&listed)?)
}

pub async fn run(args: &Args, logs: &Path) -> anyhow::Result<()> {
    println!("skylift federation demo: logs in {}", logs.display());
    let (_central, central) = start_standin("oap-central", 1, logs).await?;
    let central_grpc = central.nodes[0].grpc;
    let central_nodes = format!("{}/nodes", central.control);
    println!("central OAP: {central_grpc}");

    let mut clouds = Vec::new();
    for (i, name) in CLOUDS.into_iter().enumerate() {
        let (standin, announced) = start_standin(&format!("oap-{name}"), 2, logs).await?;
        let nodes: Vec<_> = announced.nodes.iter().map(|n| n.grpc).collect();
        let endpoints_file = logs.join(format!("endpoints-{name}.json"));
        std::fs::write(&endpoints_file, endpoints(&nodes))?;
        let address = format!("127.0.0.1:{}", args.proxy_port + i as u16);
        let admin_port = portpicker()?;
        let mut proxy = Command::new(binary("skylift-proxy")?);
        proxy
            .arg(format!("--listen={address}"))
            .arg(format!("--admin-listen=127.0.0.1:{admin_port}"))
            .arg(format!("--upstreams-file={}", endpoints_file.display()))
            .arg(format!("--federation-upstream={central_grpc}"));
        let proxy = spawn(&format!("skylift-proxy-{name}"), &mut proxy, logs)?;
        proxy_ready(&format!("the {name} proxy"), admin_port).await?;
        let mut processes = vec![standin, proxy];
        processes.extend(start_agents_named(args, &address, logs, name)?);
        println!(
            "cloud {name}: OAP nodes {nodes:?}; skylift-proxy at {address}, copying meter, jvm, clr and management reports to the central OAP; {} agents",
            args.agents
        );
        clouds.push(Cloud {
            name,
            nodes_url: format!("{}/nodes", announced.control),
            admin_port,
            _processes: processes,
        });
    }
    println!("Ctrl-C stops everything.\n");

    let mut schedule = Schedule::new(args);
    let started = schedule.started;
    while schedule.next().await.is_some() {
        println!("[{:>4}s]", started.elapsed().as_secs());
        for cloud in &clouds {
            let mut line = format!("  cloud {}: OAP nodes ", cloud.name);
            for node in stats(&cloud.nodes_url).await? {
                line.push_str(&format!("{} = {:>6}  ", node.node, events(&node.stats)));
            }
            let (code, metrics) =
                http::get(&format!("http://127.0.0.1:{}/metrics", cloud.admin_port)).await?;
            if code != 200 {
                bail!("the {} proxy's metrics: {code}", cloud.name);
            }
            line.push_str(&format!(
                "| copies for the central OAP: made {} forwarded {} waiting {} dropped {}",
                federation_sum(&metrics, "received_total"),
                federation_sum(&metrics, "forwarded_total"),
                federation_sum(&metrics, "queue_size"),
                federation_sum(&metrics, "dropped_total"),
            ));
            println!("{line}");
        }
        let mut central = NodeStats::default();
        for node in stats(&central_nodes).await? {
            for (method, counts) in node.stats.methods {
                if method.starts_with("grpc.health") {
                    continue;
                }
                let into = central.methods.entry(method).or_default();
                into.messages += counts.messages;
                for (service, instances) in counts.services {
                    for (instance, n) in instances {
                        *into
                            .services
                            .entry(service.clone())
                            .or_default()
                            .entry(instance)
                            .or_default() += n;
                    }
                }
            }
        }
        let mut line = String::from("  central OAP: ");
        if central.methods.is_empty() {
            line.push_str("nothing yet (the proxies send copies at least every second)");
        }
        for (method, counts) in &central.methods {
            // Which clouds' instances it has heard of (instances are named after them).
            let mut per_cloud: BTreeMap<&str, u64> = BTreeMap::new();
            for instances in counts.services.values() {
                for (instance, n) in instances {
                    let cloud = CLOUDS
                        .iter()
                        .find(|c| instance.starts_with(&format!("{c}-")))
                        .copied()
                        .unwrap_or("other");
                    *per_cloud.entry(cloud).or_default() += n;
                }
            }
            line.push_str(&format!(
                "{} = {} {per_cloud:?}   ",
                short(method),
                counts.messages
            ));
        }
        println!("{line}\n");
    }
    Ok(())
}
