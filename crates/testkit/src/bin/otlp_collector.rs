//! A counting OpenTelemetry collector stand-in as a process, for benchmarks: OTLP/gRPC on
//! `--listen`, OTLP/HTTP on `--http-listen` when given, with the receiver's rules (see
//! `skylift_testkit::collector`), keeping nothing; `GET http://<listen port + 1>/count`
//! answers `{"spans":N,"exports":N,"refused":N}` (health checks not counted as refused).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use skylift_testkit::collector::Collector;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// OTLP/HTTP on this address (its IP must be `--listen`'s).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let collector = Arc::new(match args.http_listen {
        Some(http) => {
            anyhow::ensure!(
                http.ip() == args.listen.ip(),
                "--http-listen on --listen's IP"
            );
            Collector::start_at_ports(args.listen, http.port()).await?
        }
        None => Collector::start_on(args.listen).await?,
    });
    collector.count_only();
    let counter = collector.clone();
    let stats = axum::Router::new().route(
        "/count",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                axum::Json(serde_json::json!({
                    "spans": counter.span_count(),
                    "exports": counter.exports(),
                    // The proxies' health checks (grpc.health.v1, which collectors do
                    // not serve) are not exports refused.
                    "refused": counter
                        .refusals()
                        .iter()
                        .filter(|(path, _)| !path.starts_with("/grpc.health.v1."))
                        .count(),
                }))
            }
        }),
    );
    let listener =
        tokio::net::TcpListener::bind((args.listen.ip(), args.listen.port() + 1)).await?;
    axum::serve(listener, stats).await?;
    Ok(())
}
