use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skylift_api::logging::LogFormat;
use skylift_operator::leader::{self, LeaseSettings};
use skylift_operator::metrics::Metrics;
use skylift_operator::run::{Settings, run};

/// Reconciles skylift's OAPServer, Satellite and Proxy resources.
#[derive(Parser, Debug)]
#[command(name = "skylift-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print the resource reference (Markdown) written from the CRDs' schemas.
    Reference,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SKYLIFT_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "SKYLIFT_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    admin_listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "SKYLIFT_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Take part in leader election, so several replicas can run and one reconciles.
    #[arg(long, env = "SKYLIFT_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else skylift-system).
    #[arg(long, env = "SKYLIFT_OPERATOR_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "SKYLIFT_OPERATOR_LEADER_ELECTION_LEASE",
        default_value = "skylift-operator"
    )]
    leader_election_lease: String,
    /// This replica's identity in the election (default: the host name).
    #[arg(long, env = "SKYLIFT_OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// The image Satellites and Proxies run unless their `spec.image` is set (a mirror of
    /// skylift's image, say). Default: skylift's image of this release.
    #[arg(long, env = "SKYLIFT_OPERATOR_PROXY_IMAGE", default_value_t = skylift_api::constants::default_proxy_image())]
    proxy_image: String,
    /// Reconciles run at once per resource kind.
    #[arg(long, env = "SKYLIFT_OPERATOR_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
}

// One thread: the operator waits on the API server almost all the time, and a single
// allocator arena keeps its memory flat (about a third less peak RSS than the
// multi-threaded runtime at 1000 Satellites, with the same time to reconcile them).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", skylift_operator::crds_yaml());
            return Ok(());
        }
        Some(Command::Reference) => {
            print!(
                "{}",
                skylift_operator::reference::markdown(&skylift_api::crds())
            );
            return Ok(());
        }
        Some(Command::Run) | None => {}
    }
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let args = cli.run;
    skylift_api::logging::init(args.log_format);

    // In-cluster, or from KUBECONFIG / ~/.kube/config.
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    let metrics = Arc::new(Metrics::default());
    let admin = tokio::spawn(skylift_operator::admin::serve(
        args.admin_listen,
        metrics.clone(),
    ));

    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("skylift-operator-{}", std::process::id()));
    let settings = Settings {
        namespace: args.namespace,
        concurrency: args.concurrency,
        instance: identity.clone(),
        proxy_image: args.proxy_image,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };

    if args.leader_election {
        let lease = LeaseSettings {
            namespace: args
                .leader_election_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "skylift-system".into()),
            name: args.leader_election_lease,
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        };
        // A standby replica is healthy and ready: it takes over when the leader goes.
        metrics.set_ready();
        // A missing namespace ends the process (non-zero): no replica could ever lead.
        let observer = tokio::select! {
            acquired = leader::acquire(client.clone(), &lease) => acquired.context("leader election")?,
            _ = admin => anyhow::bail!("the admin server stopped"),
        };
        metrics.set_leader(true);
        tokio::select! {
            _ = run(client.clone(), settings, metrics.clone(), shutdown) => {}
            lost = leader::hold(client, lease, observer) => {
                // Exit rather than reconcile without the Lease; the pod restarts as a standby.
                return Err(lost).context("stopping");
            }
        }
    } else {
        tokio::select! {
            _ = run(client, settings, metrics.clone(), shutdown) => {}
            served = admin => served.context("admin server task")?.context("admin server")?,
        }
    }
    Ok(())
}
