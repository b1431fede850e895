//! A counting gRPC sink as a process, for benchmarks: answers every SkyWalking report like
//! OAP and prints the number of messages received when it is stopped (or on request at
//! `GET http://<listen port + 1>/count`).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use skylift_testkit::sink::Sink;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = Arc::new(Sink::start_counting(args.listen).await?);
    let counter = sink.clone();
    let stats = axum::Router::new().route(
        "/count",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move { counter.total().to_string() }
        }),
    );
    let listener =
        tokio::net::TcpListener::bind((args.listen.ip(), args.listen.port() + 1)).await?;
    axum::serve(listener, stats).await?;
    Ok(())
}
