//! A counting OAP double as a process, for benchmarks: serves OAP's methods as OAP does
//! (the strict double of `skylift_testkit::sink`, without keeping what it receives) and
//! answers `GET http://<listen port + 1>/count` with what it accepted: messages, calls and
//! calls refused, as `{"messages":N,"segments":N,"calls":N,"refused":N}` (`segments`: the
//! messages of `TraceSegmentReportService/collect`).
//!
//! `--answer-delay` makes it an OAP under load: every call is handled at once and answered
//! that much later, for the first `--answer-delay-for` (then on time).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use skylift_testkit::sink::Sink;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// Hold every answer back this long after handling the call (health checks aside).
    #[arg(long, value_parser = skylift_api::duration::parse, default_value = "0s")]
    answer_delay: std::time::Duration,
    /// ... for this long from the start; 0: for ever.
    #[arg(long, value_parser = skylift_api::duration::parse, default_value = "0s")]
    answer_delay_for: std::time::Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = Arc::new(Sink::start_counting(args.listen).await?);
    if !args.answer_delay.is_zero() {
        sink.set_answer_delay(args.answer_delay);
        if !args.answer_delay_for.is_zero() {
            let slow = sink.clone();
            tokio::spawn(async move {
                tokio::time::sleep(args.answer_delay_for).await;
                slow.set_answer_delay(std::time::Duration::ZERO);
            });
        }
    }
    let counter = sink.clone();
    let stats = axum::Router::new().route(
        "/count",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                axum::Json(serde_json::json!({
                    "messages": counter.total(),
                    "segments": counter.total_of("/skywalking.v3.TraceSegmentReportService/collect"),
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
