//! A counting OAP double as a process, for benchmarks: serves OAP's methods as OAP does
//! (the strict double of `skylift_testkit::sink`, without keeping what it receives) and
//! answers `GET http://<listen port + 1>/count` with what it accepted: messages, calls and
//! calls refused, as `{"messages":N,"calls":N,"refused":N}`.

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
            async move {
                axum::Json(serde_json::json!({
                    "messages": counter.total(),
                    "calls": counter.streams(),
                    "refused": counter.refusals().len(),
                }))
            }
        }),
    );
    let listener =
        tokio::net::TcpListener::bind((args.listen.ip(), args.listen.port() + 1)).await?;
    axum::serve(listener, stats).await?;
    Ok(())
}
