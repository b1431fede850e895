//! The adapter benchmark's driver. It sets up what a cluster gives skylift-adapter (an
//! API-server double with the extension-apiserver-authentication ConfigMap, the APIService
//! and the HPA's RBAC; a stand-in OAP whose every answer takes `--oap-latency`), starts the
//! adapter binary against them, waits for it to publish its CA, and then runs `--callers`
//! concurrent HPA-style readers of one metric for `--seconds`, each over its own HTTP/2
//! connection with the aggregator's front-proxy certificate. Prints one JSON object:
//! latency percentiles, the adapter's CPU time, and the OAP queries per refresh interval.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::json;
use skylift_testkit::aggregation::{self, ADAPTER_HOST, APISERVICE, HPA_USER};
use skylift_testkit::apiserver::ApiServer;
use skylift_testkit::oap::graphql::{GraphqlOap, OapData};
use skylift_testkit::pki::TestCa;

const HOST: &str = ADAPTER_HOST;
const HPA: &str = HPA_USER;
/// What the operator's HPA for a Satellite reads: the connection gauge of
/// `satellite::satellite-service`, in SWCK's escaped selector form.
const READ: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/skywalking/skywalking.apache.org%7Csatellite_service_grpc_connect_count?labelSelector=service.str.0%3Dsatellite%2Cservice.byte.1%3D3a%2Cservice.byte.2%3D3a%2Cservice.str.3%3Dsatellite%2Cservice.byte.4%3D2d%2Cservice.str.5%3Dservice";

#[derive(Parser)]
struct Args {
    /// The skylift-adapter binary.
    #[arg(long)]
    adapter_bin: PathBuf,
    #[arg(long, default_value_t = 100)]
    callers: usize,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// How long the stand-in OAP takes per answer.
    #[arg(long, default_value = "20ms", value_parser = skylift_api::duration::parse)]
    oap_latency: Duration,
    /// The adapter's --refresh-interval.
    #[arg(long, default_value = "10s", value_parser = skylift_api::duration::parse)]
    refresh_interval: Duration,
    /// The adapter's port.
    #[arg(long, default_value_t = 19_543)]
    port: u16,
    /// Reads per second of each caller; 0 reads back to back (the adapter's saturation).
    #[arg(long, default_value_t = 0.0)]
    rate_per_caller: f64,
    /// Pin the adapter to this CPU (with taskset), away from the load.
    #[arg(long)]
    adapter_cpu: Option<usize>,
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Adapter(Child);

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = ApiServer::start(&[]).await?;
    let front_proxy = TestCa::new("front-proxy-ca");
    aggregation::install(api.state(), &front_proxy.cert_pem);
    let oap = GraphqlOap::start(OapData {
        latency: args.oap_latency,
        expressions: HashMap::from([(
            "latest(satellite_service_grpc_connect_count)".to_string(),
            Some("11".to_string()),
        )]),
        ..OapData::default()
    })
    .await?;

    let work = std::env::temp_dir().join(format!("skylift-adapter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::File::create(&kubeconfig)?.write_all(api.kubeconfig().as_bytes())?;
    let mut command = match args.adapter_cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset
                .arg("-c")
                .arg(cpu.to_string())
                .arg(&args.adapter_bin);
            taskset
        }
        None => Command::new(&args.adapter_bin),
    };
    let child = command
        .args([
            format!("--secure-listen=127.0.0.1:{}", args.port),
            "--namespace=skylift-system".into(),
            format!("--oap-url={}", oap.url()),
            format!("--refresh-interval={}ms", args.refresh_interval.as_millis()),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.adapter_bin.display()))?;
    let adapter = Adapter(child);
    let pid = adapter.0.id();

    // The adapter makes its certificate and publishes its CA in the APIService.
    let apiservices: kube::Api<APIService> = kube::Api::all(api.client());
    let deadline = Instant::now() + Duration::from_secs(30);
    let ca_bundle = loop {
        let bundle = apiservices
            .get(APISERVICE)
            .await
            .ok()
            .and_then(|a| a.spec?.ca_bundle);
        if let Some(bundle) = bundle {
            break bundle.0;
        }
        if Instant::now() > deadline {
            bail!("the adapter did not publish a caBundle within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let roots = reqwest::Certificate::from_pem_bundle(&ca_bundle)?;
    let identity_pem = front_proxy.client_identity_pem("front-proxy-client");
    let address = format!("127.0.0.1:{}", args.port).parse()?;
    let client = || -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .tls_certs_only(roots.clone())
            .identity(reqwest::Identity::from_pem(identity_pem.as_bytes())?)
            .resolve(HOST, address)
            .timeout(Duration::from_secs(10))
            .build()?)
    };
    let url: &'static str =
        Box::leak(format!("https://{HOST}:{}{READ}", args.port).into_boxed_str());
    // As the aggregator forwards the HPA controller's read.
    let read = move |client: &reqwest::Client| {
        client
            .get(url)
            .header("X-Remote-User", HPA)
            .header("X-Remote-Group", "system:serviceaccounts")
            .header("X-Remote-Group", "system:authenticated")
            .send()
    };

    // The first read: a miss, one OAP query and one access review.
    let warm_client = client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let warmup = loop {
        let started = Instant::now();
        match read(&warm_client).await {
            Ok(response) if response.status() == 200 => break started.elapsed(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(response) => bail!("the first read answered {}", response.status()),
            Err(err) => bail!("the first read failed: {err}"),
        }
    };
    let mut callers = Vec::with_capacity(args.callers);
    for _ in 0..args.callers {
        let client = client()?;
        // Connect (TLS + HTTP/2) before the clock starts.
        read(&client).await?.bytes().await?;
        callers.push(client);
    }
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let n = args.callers as f64;
    let pace =
        (args.rate_per_caller > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate_per_caller));
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                // Paced callers start spread over one period, as independent HPAs would.
                let mut next = pace.map(|p| started + p.mul_f64(i as f64 / n));
                while Instant::now() < until {
                    if let (Some(at), Some(pace)) = (next.as_mut(), pace) {
                        tokio::time::sleep_until((*at).into()).await;
                        *at += pace;
                    }
                    let sent = Instant::now();
                    match read(&client).await {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed().as_micros() as u32);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mine, failed) = task.await?;
        latencies.extend(mine);
        errors += failed;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    latencies.sort_unstable();

    // OAP queries, bucketed by refresh interval from the first one.
    let times = oap.metric_query_times();
    let first = times.first().copied().unwrap_or(started);
    let intervals =
        ((until - first).as_secs_f64() / args.refresh_interval.as_secs_f64()).floor() as usize;
    let mut per_interval = vec![0u32; intervals.max(1)];
    for at in &times {
        let bucket = ((*at - first).as_secs_f64() / args.refresh_interval.as_secs_f64()) as usize;
        if let Some(count) = per_interval.get_mut(bucket) {
            *count += 1;
        }
    }
    let requests = latencies.len();
    println!(
        "{}",
        json!({
            "callers": args.callers,
            "rate_per_caller": args.rate_per_caller,
            "seconds": wall,
            "oap_latency_ms": args.oap_latency.as_millis() as u64,
            "refresh_interval_s": args.refresh_interval.as_secs_f64(),
            "requests": requests,
            "errors": errors,
            "requests_per_second": requests as f64 / wall,
            "first_read_ms": warmup.as_secs_f64() * 1000.0,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "p999_ms": percentile(&latencies, 0.999),
            "max_ms": percentile(&latencies, 1.0),
            "adapter_cpu_seconds": cpu,
            "requests_per_cpu_second": if cpu > 0.0 { requests as f64 / cpu } else { 0.0 },
            "oap_queries": times.len(),
            "oap_queries_per_interval": per_interval,
        })
    );
    drop(adapter);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
