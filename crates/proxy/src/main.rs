use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use skylift_api::logging::LogFormat;
use skylift_api::proxy_args::{
    CompressionArg, FsyncArg, MeterRoutingArg, OtlpLogsArg, OverflowArg, ProxyArgs as Args,
    QueueArg, RoutingArg,
};
use skylift_proxy::balance::balancer::Policy;
use skylift_proxy::listen::state::Limits;
use skylift_proxy::ops::telemetry::TelemetryConfig;
use skylift_proxy::queue::journal::{Fsync, JournalConfig};
use skylift_proxy::queue::{Overflow, QueueConfig};
use skylift_proxy::run::{Config, FederationConfig, UpstreamSource, run};
use skylift_proxy::upstream::affinity::{LogsRouting, OtlpAffinity};

// Every message passes through short-lived buffers of a few KiB: glibc's per-thread arenas
// grow and trim their heaps for them (mprotect and page faults per buffer); jemalloc keeps
// freed pages for reuse. Its options are built in (`.cargo/config.toml`): freed pages go
// back to the system from a background thread.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn config(args: Args) -> anyhow::Result<(Config, LogFormat)> {
    args.check().map_err(anyhow::Error::msg)?;
    let federated = federated(&args);
    let upstreams = match (
        args.upstreams.is_empty(),
        &args.upstreams_file,
        &args.upstreams_configmap,
    ) {
        (false, None, None) => UpstreamSource::Static(args.upstreams.clone()),
        (true, Some(path), None) => UpstreamSource::File(path.clone()),
        (true, None, Some(reference)) => {
            let (namespace, name) = reference
                .split_once('/')
                .context("--upstreams-configmap must be NAMESPACE/NAME")?;
            UpstreamSource::ConfigMap {
                namespace: namespace.into(),
                name: name.into(),
            }
        }
        _ => unreachable!("ProxyArgs::check allows one upstream source"),
    };
    let policy = match args.routing {
        RoutingArg::RoundRobin | RoutingArg::Hash => Policy::RoundRobin,
        RoutingArg::WeightedRoundRobin => Policy::WeightedRoundRobin,
    };
    let hash_header = match (args.routing, args.hash_header.clone()) {
        (RoutingArg::Hash, Some(header)) => {
            Some(http::HeaderName::try_from(header.as_str()).context("--hash-header")?)
        }
        (RoutingArg::Hash, None) => unreachable!("ProxyArgs::check wants a hash header"),
        (_, _) => None,
    };
    let partitions = args
        .queue_partitions
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Each partition's share of the journal volume, when its size is given: halved with a
    // federation queue, whose journal shares the volume.
    let volume_share = args
        .queue_max_disk_bytes
        .map(|total| total / partitions as u64 / if federated { 2 } else { 1 });
    let journal = match (args.queue, args.queue_dir.clone()) {
        (QueueArg::Memory, None) => None,
        (QueueArg::Memory, Some(_)) | (QueueArg::Disk, None) => {
            unreachable!("ProxyArgs::check pairs --queue disk with --queue-dir")
        }
        (QueueArg::Disk, Some(dir)) => Some(JournalConfig {
            dir,
            fsync: match args.fsync {
                FsyncArg::Interval => Fsync::Interval(args.fsync_interval),
                FsyncArg::Always => Fsync::Always,
            },
            max_bytes: volume_share.map_or(args.queue_max_bytes as u64, |share| {
                share.min(args.queue_max_bytes as u64)
            }),
        }),
    };
    let federation = federated
        .then(|| federation_config(&args, partitions, journal.as_ref(), volume_share))
        .transpose()?;
    let telemetry = args.telemetry_service.map(|service| TelemetryConfig {
        service,
        instance: args
            .telemetry_instance
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "skylift-proxy".into()),
        interval: args.telemetry_interval,
        upstream: args.telemetry_upstream,
    });
    Ok((
        Config {
            listen: args.listen,
            admin_listen: args.admin_listen,
            upstreams,
            limits: Limits {
                max_connections: (args.max_connections > 0).then_some(args.max_connections),
                max_message_bytes: args.max_message_bytes,
                keepalive: (!args.keepalive_interval.is_zero()).then_some(args.keepalive_interval),
                max_connection_age: (!args.max_connection_age.is_zero())
                    .then_some(args.max_connection_age),
                max_connection_age_grace: args.max_connection_age_grace,
                header_timeout: args.header_timeout,
                idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            },
            queue: QueueConfig {
                partitions,
                capacity: args.queue_capacity,
                max_bytes: args.queue_max_bytes,
                batch_size: args.batch_size,
                flush_interval: args.flush_interval,
                overflow: match args.overflow {
                    OverflowArg::Reject => Overflow::Reject,
                    OverflowArg::Drop => Overflow::Drop,
                },
                overflow_wait: args.overflow_wait,
                in_flight: args.send_concurrency,
            },
            policy,
            fixed_meter_routing: matches!(args.meter_routing, MeterRoutingArg::Fixed),
            hash_header,
            sticky_keys: 5000,
            upstream_connections: args.upstream_connections,
            upstream_streams: args.upstream_streams,
            sticky_ttl: Duration::from_secs(180),
            drain_timeout: args.drain_timeout,
            authentication_file: args.authentication_file,
            upstream_tls: args.upstream_tls_ca_file.map(|ca| {
                skylift_proxy::upstream::tls::UpstreamTlsFiles {
                    ca,
                    client_cert: args.upstream_tls_cert_file.zip(args.upstream_tls_key_file),
                    server_name: args.upstream_tls_server_name,
                }
            }),
            tls: match (args.tls_cert_file, args.tls_key_file) {
                (Some(cert), Some(key)) => Some(skylift_proxy::listen::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca_file,
                    http1: args.upstream_http_port.is_some(),
                }),
                _ => None,
            },
            health_checks: skylift_proxy::upstream::health::HealthChecks {
                interval: (!args.health_check_interval.is_zero())
                    .then_some(args.health_check_interval),
                timeout: args.health_check_timeout,
                failures: args.health_check_failures.max(1),
            },
            outlier_detection: skylift_proxy::balance::outlier::OutlierDetection {
                factor: args.outlier_latency_factor,
                min_latency: args.outlier_min_latency,
                ejection: args.outlier_ejection,
            },
            max_ejection_percent: args.max_ejection_percent,
            delivery: skylift_proxy::upstream::delivery::Delivery {
                attempts: args.delivery_attempts,
                call_timeout: args.upstream_timeout,
                answer_timeout: args.upstream_answer_timeout,
            },
            journal,
            telemetry,
            federation,
            upstream_http_port: args.upstream_http_port,
            otlp_affinity: args.otlp_affinity.then(|| OtlpAffinity {
                metrics_attribute: args.otlp_metrics_attribute.clone(),
                logs: match args.otlp_logs_routing {
                    OtlpLogsArg::RoundRobin => LogsRouting::RoundRobin,
                    OtlpLogsArg::TraceId => LogsRouting::TraceId,
                },
            }),
        },
        args.log_format,
    ))
}

/// The federation pool's settings; its journal (with `local`'s) in `federation/` of the
/// queue folder, within `volume_share` per partition.
fn federation_config(
    args: &Args,
    partitions: usize,
    local: Option<&JournalConfig>,
    volume_share: Option<u64>,
) -> anyhow::Result<FederationConfig> {
    let max_bytes = args.federation_queue_max_bytes as u64;
    Ok(FederationConfig {
        upstreams: match &args.federation_upstreams_file {
            Some(path) => UpstreamSource::File(path.clone()),
            None => UpstreamSource::Static(args.federation_upstreams.clone()),
        },
        protocols: skylift_proxy::federation::protocols(&args.federation_protocols)?,
        queue: QueueConfig {
            partitions,
            capacity: args.federation_queue_capacity,
            max_bytes: args.federation_queue_max_bytes,
            batch_size: args.federation_batch_size,
            flush_interval: args.federation_flush_interval,
            overflow: Overflow::Drop,
            overflow_wait: Duration::ZERO,
            in_flight: args.send_concurrency,
        },
        journal: local.map(|local| JournalConfig {
            dir: local.dir.join("federation"),
            fsync: local.fsync,
            max_bytes: volume_share.map_or(max_bytes, |share| share.min(max_bytes)),
        }),
        compress: args.federation_compression == CompressionArg::Gzip,
        tls: args.federation_tls_ca_file.clone().map(|ca| {
            skylift_proxy::upstream::tls::UpstreamTlsFiles {
                ca,
                client_cert: args
                    .federation_tls_cert_file
                    .clone()
                    .zip(args.federation_tls_key_file.clone()),
                server_name: args.federation_tls_server_name.clone(),
            }
        }),
        authentication_file: args.federation_authentication_file.clone(),
    })
}

/// Whether a federation pool is named.
fn federated(args: &Args) -> bool {
    !args.federation_upstreams.is_empty() || args.federation_upstreams_file.is_some()
}

fn main() -> anyhow::Result<()> {
    let (config, log_format) = config(Args::parse())?;
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    skylift_api::logging::init(log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        run(config, shutdown).await.context("skylift-proxy")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_arguments_are_accepted() {
        let args = Args::try_parse_from([
            "skylift-proxy",
            "--listen=0.0.0.0:11800",
            "--admin-listen=0.0.0.0:1234",
            "--upstreams-configmap=observability/ingest-upstreams",
            "--max-connections=11",
            "--queue-partitions=4",
            "--queue-capacity=5000",
            "--batch-size=200",
            "--flush-interval=500ms",
            "--overflow=reject",
            "--routing=weighted-round-robin",
            "--meter-routing=fixed",
            "--telemetry-service=obs-ingest",
            "--telemetry-instance=ingest-satellite-7c9f-x2",
            "--log-format=json",
            // What a hardened Satellite adds (the operator's renderings are checked against
            // the same rules by its own tests, through `ProxyArgs::check`).
            "--queue-max-bytes=33554432",
            "--queue=disk",
            "--queue-dir=/var/lib/skylift/queue",
            "--queue-max-disk-bytes=966367638",
            "--fsync=always",
            "--tls-cert-file=/etc/skylift/tls/tls.crt",
            "--tls-key-file=/etc/skylift/tls/tls.key",
            "--tls-client-ca-file=/etc/skylift/tls/ca.crt",
            "--upstream-tls-ca-file=/etc/skylift/upstream-tls/ca.crt",
            "--upstream-tls-server-name=skywalking-oap.obs.svc",
            "--upstream-tls-cert-file=/etc/skylift/upstream-tls/tls.crt",
            "--upstream-tls-key-file=/etc/skylift/upstream-tls/tls.key",
            "--authentication-file=/etc/skylift/authentication/token",
            "--max-connection-age=10m",
            "--health-check-interval=2s",
            "--health-check-failures=3",
            "--outlier-latency-factor=4",
            "--outlier-ejection=30s",
        ])
        .unwrap();
        let (config, _) = config(args).unwrap();
        assert!(
            matches!(config.upstreams, UpstreamSource::ConfigMap { ref namespace, ref name } if namespace == "observability" && name == "ingest-upstreams")
        );
        assert_eq!(config.limits.max_connections, Some(11));
        assert_eq!(config.policy, Policy::WeightedRoundRobin);
        assert_eq!(config.telemetry.unwrap().service, "obs-ingest");
        // The journal's share of the volume: 90 % of 1 GiB over 4 partitions, capped by
        // what a partition holds in memory (32 MiB).
        assert_eq!(config.journal.unwrap().max_bytes, 32 << 20);
        assert_eq!(config.health_checks.failures, 3);
        assert_eq!(config.outlier_detection.factor, 4.0);
        assert_eq!(
            config.limits.max_connection_age,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn a_federation_journal_shares_the_volume_and_each_keeps_its_own_cap() {
        let journals = |disk: &str| {
            let args = Args::try_parse_from([
                "skylift-proxy",
                "--upstream=10.0.0.7:11800",
                "--federation-upstream=oap.central.example.com:11800",
                "--queue=disk",
                "--queue-dir=/var/lib/skylift/queue",
                "--queue-partitions=2",
                "--queue-max-bytes=67108864",
                "--federation-queue-max-bytes=16777216",
                &format!("--queue-max-disk-bytes={disk}"),
            ])
            .unwrap();
            let config = config(args).unwrap().0;
            let federation = config.federation.unwrap().journal.unwrap();
            assert!(federation.dir.ends_with("federation"));
            (config.journal.unwrap().max_bytes, federation.max_bytes)
        };
        // A large volume: each journal as large as its queue, neither halved.
        assert_eq!(journals("10737418240"), (64 << 20, 16 << 20));
        // A small one: each partition's share (100 MiB / 2) halved between the two.
        assert_eq!(journals("104857600"), (25 << 20, 16 << 20));
        assert_eq!(journals("20971520"), (5 << 20, 5 << 20));
    }

    #[test]
    fn upstream_tls_needs_its_ca_and_a_client_certificate_needs_its_key() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "skylift-proxy",
            "--upstream=10.0.0.7:11800",
            "--upstream-tls-ca-file=/etc/skylift/upstream-tls/ca.crt",
            "--upstream-tls-server-name=oap.obs.svc",
            "--upstream-tls-cert-file=/etc/skylift/upstream-tls/tls.crt",
            "--upstream-tls-key-file=/etc/skylift/upstream-tls/tls.key",
        ])
        .unwrap();
        let tls = config(args).unwrap().0.upstream_tls.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("oap.obs.svc"));
        assert!(tls.client_cert.is_some());
        for incomplete in [
            &["--upstream-tls-server-name=oap"][..],
            &["--upstream-tls-ca-file=ca", "--upstream-tls-cert-file=c"][..],
            &["--upstream-tls-ca-file=ca", "--upstream-tls-key-file=k"][..],
        ] {
            let argv = ["skylift-proxy", "--upstream=a:1"].iter().chain(incomplete);
            assert!(Args::try_parse_from(argv).is_err(), "{incomplete:?}");
        }
    }

    #[test]
    fn contradictory_upstream_sources_and_hash_without_header_are_refused() {
        let both =
            Args::try_parse_from(["skylift-proxy", "--upstream=a:1", "--upstreams-file=/tmp/x"])
                .unwrap();
        assert!(
            config(both)
                .unwrap_err()
                .to_string()
                .contains("exactly one upstream source")
        );
        let hash =
            Args::try_parse_from(["skylift-proxy", "--upstream=a:1", "--routing=hash"]).unwrap();
        assert!(
            config(hash)
                .unwrap_err()
                .to_string()
                .contains("--hash-header")
        );
    }
}
