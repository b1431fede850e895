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
    /// The ClusterRole each Rover's ServiceAccount is bound to (the bundle installs it).
    /// Empty: Rovers are not managed, and the operator needs no cluster-wide RBAC for them.
    #[arg(
        long,
        env = "SKYLIFT_OPERATOR_ROVER_CLUSTER_ROLE",
        default_value = "skylift-rover"
    )]
    rover_cluster_role: String,
    /// The namespaces Rovers may run in, comma-separated. A Rover runs privileged with the
    /// nodes' process IDs and root filesystem (root on every node), so none runs unless a
    /// cluster administrator names its namespace here; elsewhere it is reported
    /// NamespaceNotAllowed.
    #[arg(long, env = "SKYLIFT_OPERATOR_ROVER_NAMESPACES", value_delimiter = ',')]
    rover_namespaces: Vec<String>,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The agent-injection admission webhook.
#[derive(clap::Args, Debug)]
struct WebhookArgs {
    /// Serve the webhook (every replica does, leader or not).
    #[arg(long = "webhook", env = "SKYLIFT_OPERATOR_WEBHOOK", default_value_t = true, action = clap::ArgAction::Set)]
    enabled: bool,
    /// Address of the webhook's HTTPS server.
    #[arg(
        long = "webhook-listen",
        env = "SKYLIFT_OPERATOR_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    listen: SocketAddr,
    /// The Service the API server calls the webhook through (the serving certificate's
    /// names), in the pod's namespace.
    #[arg(
        long = "webhook-service",
        env = "SKYLIFT_OPERATOR_WEBHOOK_SERVICE",
        default_value = "skylift-operator-webhook"
    )]
    service: String,
    /// The Secret, in the pod's namespace, the self-managed CA and certificate are kept in.
    #[arg(
        long = "webhook-secret",
        env = "SKYLIFT_OPERATOR_WEBHOOK_SECRET",
        default_value = "skylift-operator-webhook-tls"
    )]
    secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept current.
    #[arg(
        long = "webhook-configuration",
        env = "SKYLIFT_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "skylift-agent-injector"
    )]
    configuration: String,
    /// Serve this certificate (PEM; reloaded when it changes) instead of a self-managed one.
    #[arg(
        long = "webhook-cert-file",
        env = "SKYLIFT_OPERATOR_WEBHOOK_CERT_FILE",
        requires = "key_file"
    )]
    cert_file: Option<std::path::PathBuf>,
    /// The private key of `--webhook-cert-file`.
    #[arg(
        long = "webhook-key-file",
        env = "SKYLIFT_OPERATOR_WEBHOOK_KEY_FILE",
        requires = "cert_file"
    )]
    key_file: Option<std::path::PathBuf>,
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
        rover_cluster_role: args.rover_cluster_role,
        rover_namespaces: args
            .rover_namespaces
            .into_iter()
            .filter(|namespace| !namespace.is_empty())
            .collect(),
    };
    let pod_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "skylift-system".into());
    // Bound here, so a webhook that cannot listen stops the start with its reason.
    let webhook_stopped = if args.webhook.enabled {
        let listener = std::net::TcpListener::bind(args.webhook.listen)
            .with_context(|| format!("binding the webhook to {}", args.webhook.listen))?;
        let webhook = args.webhook;
        let stopped = skylift_operator::webhook::serve_on_own_thread(
            skylift_operator::webhook::ServeSettings {
                listener,
                service: webhook.service,
                secret: webhook.secret,
                configuration: webhook.configuration,
                cert_files: webhook.cert_file.zip(webhook.key_file),
                watch_namespace: settings.namespace.clone(),
                pod_namespace: pod_namespace.clone(),
                metrics: metrics.clone(),
            },
        )
        .context("starting the webhook's thread")?;
        futures::future::Either::Left(stopped)
    } else {
        futures::future::Either::Right(futures::future::pending())
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
                .unwrap_or_else(|| pod_namespace.clone()),
            name: args.leader_election_lease,
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        };
        // A standby replica is healthy and ready: it takes over when the leader goes.
        metrics.set_ready();
        // A missing namespace ends the process (non-zero): no replica could ever lead.
        let mut webhook_stopped = webhook_stopped;
        let observer = tokio::select! {
            acquired = leader::acquire(client.clone(), &lease) => acquired.context("leader election")?,
            _ = admin => anyhow::bail!("the admin server stopped"),
            _ = &mut webhook_stopped => anyhow::bail!("the webhook stopped"),
        };
        metrics.set_leader(true);
        tokio::select! {
            _ = run(client.clone(), settings, metrics.clone(), shutdown) => {}
            lost = leader::hold(client, lease, observer) => {
                // Exit rather than reconcile without the Lease; the pod restarts as a standby.
                return Err(lost).context("stopping");
            }
            _ = webhook_stopped => anyhow::bail!("the webhook stopped"),
        }
    } else {
        tokio::select! {
            _ = run(client, settings, metrics.clone(), shutdown) => {}
            served = admin => served.context("admin server task")?.context("admin server")?,
            _ = webhook_stopped => anyhow::bail!("the webhook stopped"),
        }
    }
    Ok(())
}
