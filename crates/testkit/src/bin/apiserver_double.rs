//! The API-server double as a process, for benchmarks and local experiments:
//! `skylift-apiserver-double --listen 127.0.0.1:18080 --crds crds/skylift.io.yaml`.
//! `GET /testkit/writes` answers the write counters as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use skylift_testkit::apiserver::ApiServer;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Multi-document YAML of CRDs to install.
    #[arg(long)]
    crds: Vec<PathBuf>,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut crds = Vec::new();
    for path in &args.crds {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document)?;
            if !value.is_null() {
                crds.push(value);
            }
        }
    }
    let server = ApiServer::start_on(args.listen, &crds).await?;
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, server.kubeconfig())?;
    }
    let stats_listener =
        tokio::net::TcpListener::bind((args.listen.ip(), args.listen.port() + 1)).await?;
    let state = server.state().clone();
    let stats = axum::Router::new().route(
        "/testkit/writes",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                let writes = state.write_stats();
                axum::Json(serde_json::json!({
                    "total": writes.total(),
                    "totalExcludingLeases": writes.total_excluding_leases(),
                    "noOps": writes.no_ops,
                    "byRequest": writes.by_request,
                }))
            }
        }),
    );
    eprintln!(
        "API-server double on {} (write counters on http://{}/testkit/writes)",
        server.url(),
        stats_listener.local_addr()?
    );
    axum::serve(stats_listener, stats).await?;
    Ok(())
}
