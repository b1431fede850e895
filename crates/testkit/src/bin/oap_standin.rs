//! `skylift-oap-standin`: an OAP cluster stand-in for tests and the demo (see
//! `skylift_testkit::oap`). Node `i` serves gRPC on `--grpc-port + i` and HTTP (GraphQL,
//! `/healthcheck`, `/stats`) on `--http-port + i`; the control API (`GET /nodes`,
//! `POST /nodes`, `POST /nodes/{i}/stop`, `POST /nodes/{i}/start`) on `--control-listen`.
//! Once listening it prints one JSON line naming every address.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use skylift_testkit::oap::{Announcement, Cluster, ClusterConfig, NodeAddresses};

#[derive(Parser)]
#[command(
    name = "skylift-oap-standin",
    about = "A SkyWalking OAP cluster stand-in for tests and demos"
)]
struct Args {
    /// Address every node listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// gRPC port of the first node (0: a free port per node).
    #[arg(long, default_value_t = 11800)]
    grpc_port: u16,
    /// HTTP (GraphQL) port of the first node (0: a free port per node).
    #[arg(long, default_value_t = 12800)]
    http_port: u16,
    /// Nodes to start, on consecutive ports.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Where the control API listens.
    #[arg(long, default_value = "127.0.0.1:12700")]
    control_listen: SocketAddr,
    /// The zone `getTimeInfo` reports (`+0800`).
    #[arg(long, default_value = "+0000")]
    timezone: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ClusterConfig {
        host: args.host,
        grpc_port: args.grpc_port,
        http_port: args.http_port,
        timezone: args.timezone,
        ..ClusterConfig::default()
    };
    let cluster = Cluster::start(config, args.instances).await?;
    let control = tokio::net::TcpListener::bind(args.control_listen).await?;
    let announcement = Announcement {
        control: format!("http://{}", control.local_addr()?),
        nodes: cluster
            .nodes()
            .await
            .into_iter()
            .map(|n| NodeAddresses {
                node: n.node,
                grpc: n.grpc,
                http: n.http,
            })
            .collect(),
    };
    println!("{}", serde_json::to_string(&announcement)?);
    let app = cluster.control();
    tokio::select! {
        served = axum::serve(control, app) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
