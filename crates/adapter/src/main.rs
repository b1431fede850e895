use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use skylift_adapter::access::Access;
use skylift_adapter::bootstrap;
use skylift_adapter::guard::guarded;
use skylift_adapter::metrics::Metrics;
use skylift_adapter::oaps::Directory;
use skylift_adapter::reader::{OapConfig, OapReader};
use skylift_adapter::server::{Adapter, router};
use skylift_adapter::start::{self, Certificates};
use skylift_api::logging::LogFormat;

// Every request allocates and frees small buffers across tokio's worker threads (headers,
// HTTP/2 frames, TLS records); glibc's malloc spent about a fifth of the adapter's CPU on
// them under load, and jemalloc's thread caches serve the same with less.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Serves external.metrics.k8s.io from SkyWalking OAP, for the Horizontal Pod Autoscaler.
#[derive(Parser, Debug)]
#[command(name = "skylift-adapter", version)]
struct Args {
    /// HTTPS address the aggregator and probes call.
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_SECURE_LISTEN",
        default_value = "0.0.0.0:6443"
    )]
    secure_listen: SocketAddr,
    /// Serving certificate (PEM chain), reloaded when it changes. Without it the adapter
    /// keeps its own CA and certificate in --tls-secret.
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_TLS_CERT_FILE",
        requires = "tls_private_key_file"
    )]
    tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_TLS_PRIVATE_KEY_FILE",
        requires = "tls_cert_file"
    )]
    tls_private_key_file: Option<PathBuf>,
    /// NAMESPACE/NAME of the Secret holding the self-managed CA and serving certificate
    /// (default: <namespace>/skylift-adapter-tls).
    #[arg(long, env = "SKYLIFT_ADAPTER_TLS_SECRET")]
    tls_secret: Option<String>,
    /// The adapter's Service; the serving certificate is for <service>.<namespace>.svc.
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_SERVICE_NAME",
        default_value = "skylift-adapter"
    )]
    service_name: String,
    /// The adapter's namespace (default: $POD_NAMESPACE, else skylift-system).
    #[arg(long, env = "SKYLIFT_ADAPTER_NAMESPACE")]
    namespace: Option<String>,
    /// APIService whose caBundle the adapter keeps (self-managed certificates only); empty
    /// to leave it alone.
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_APISERVICE_NAME",
        default_value = "v1beta1.external.metrics.k8s.io"
    )]
    apiservice_name: String,
    /// Prefix of the external metric names (`<prefix>|<oap metric>`).
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_METRIC_PREFIX",
        default_value = "skywalking.apache.org"
    )]
    metric_prefix: String,
    /// YAML file of name → MQE expression, served as `<prefix>|mqe|<name>`.
    #[arg(long, env = "SKYLIFT_ADAPTER_EXPRESSIONS")]
    expressions: Option<PathBuf>,
    /// OAP's GraphQL endpoint. Basic auth: SKYLIFT_ADAPTER_OAP_USERNAME and
    /// SKYLIFT_ADAPTER_OAP_PASSWORD in the environment.
    #[arg(
        long,
        env = "SKYLIFT_ADAPTER_OAP_URL",
        default_value = "http://oap:12800/graphql"
    )]
    oap_url: String,
    /// Another OAP, read when a selector says `oap=NAME` or a namespace is routed to it
    /// (repeatable); `NAMESPACE/NAME=URL` reads that OAPServer at URL instead of its status
    /// address. Basic auth from `--oap-credentials-dir`.
    #[arg(long = "oap", env = "SKYLIFT_ADAPTER_OAPS", value_delimiter = ',', value_parser = parse_static_oap)]
    oaps: Vec<(String, String)>,
    /// A directory with `<NAME>/username` and `<NAME>/password` for the `--oap`s that need
    /// basic auth (mounted Secrets).
    #[arg(long, env = "SKYLIFT_ADAPTER_OAP_CREDENTIALS_DIR")]
    oap_credentials_dir: Option<PathBuf>,
    /// YAML file of namespace → OAP (`default`, an `--oap` NAME, or NAMESPACE/NAME of an
    /// OAPServer): which OAP answers the HPAs of that namespace.
    #[arg(long, env = "SKYLIFT_ADAPTER_OAP_ROUTES")]
    oap_routes: Option<PathBuf>,
    /// Watch OAPServers, so the HPAs of a namespace read the OAPServer there and a selector
    /// can name one (`oap=<namespace>/<name>`). Needs list and watch on oapservers.
    #[arg(long, env = "SKYLIFT_ADAPTER_DISCOVER_OAPSERVERS", default_value_t = true, action = clap::ArgAction::Set)]
    discover_oapservers: bool,
    /// Time allowed for one OAP query.
    #[arg(long, env = "SKYLIFT_ADAPTER_OAP_TIMEOUT", default_value = "5s", value_parser = skylift_api::duration::parse)]
    oap_timeout: Duration,
    /// How long a value read from OAP is served before OAP is asked again.
    #[arg(long, env = "SKYLIFT_ADAPTER_REFRESH_INTERVAL", default_value = "10s", value_parser = skylift_api::duration::parse)]
    refresh_interval: Duration,
    /// How long token reviews and authorization decisions are kept.
    #[arg(long, env = "SKYLIFT_ADAPTER_AUTH_CACHE_TTL", default_value = "10s", value_parser = skylift_api::duration::parse)]
    auth_cache_ttl: Duration,
    /// Log format.
    #[arg(long, env = "SKYLIFT_ADAPTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn basic_auth() -> anyhow::Result<Option<(String, String)>> {
    let user = std::env::var("SKYLIFT_ADAPTER_OAP_USERNAME").ok();
    let password = std::env::var("SKYLIFT_ADAPTER_OAP_PASSWORD").ok();
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => Ok(Some((user, password))),
        _ => bail!(
            "set both SKYLIFT_ADAPTER_OAP_USERNAME and SKYLIFT_ADAPTER_OAP_PASSWORD, or neither"
        ),
    }
}

/// `NAME=URL` or `NAMESPACE/NAME=URL` of `--oap`.
fn parse_static_oap(text: &str) -> Result<(String, String), String> {
    use skylift_adapter::oaps::OapRef;
    let refused = || {
        format!(
            "{text:?}: expected NAME=URL or NAMESPACE/NAME=URL of an OAPServer (NAME not `default`; URL http(s)://...)"
        )
    };
    let (name, url) = text.split_once('=').ok_or_else(refused)?;
    match OapRef::parse(name) {
        Ok(OapRef::Static(_) | OapRef::Server { .. }) if url.starts_with("http") => {
            Ok((name.to_string(), url.to_string()))
        }
        _ => Err(refused()),
    }
}

/// Basic auth of `--oap NAME` from `<dir>/NAME/username` and `password`, when both exist.
fn static_credentials(
    dir: Option<&std::path::Path>,
    name: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let Some(dir) = dir else { return Ok(None) };
    let read = |file: &str| {
        let path = dir.join(name).join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim_end_matches(['\r', '\n']).to_string())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("reading {}", path.display()))),
        }
    };
    match (read("username")?, read("password")?) {
        (Some(user), Some(password)) => Ok(Some((user, password))),
        (None, None) => Ok(None),
        _ => bail!(
            "--oap {name}: {}/{name} needs both username and password",
            dir.display()
        ),
    }
}

fn split_secret(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => bail!("--tls-secret {text:?}: expected NAMESPACE/NAME"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    skylift_api::logging::init(args.log_format);

    let expressions = match &args.expressions {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --expressions {}", path.display()))?;
            skylift_adapter::metric::parse_expressions(&text)
                .with_context(|| format!("--expressions {}", path.display()))?
        }
        None => Default::default(),
    };
    let namespace = args
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "skylift-system".into());
    let reader = OapReader::new(OapConfig {
        url: args.oap_url.clone(),
        timeout: args.oap_timeout,
        basic_auth: basic_auth()?,
    })
    .context("building the OAP client")?;
    let mut statics = std::collections::BTreeMap::new();
    for (name, url) in &args.oaps {
        let config = OapConfig {
            url: url.clone(),
            timeout: args.oap_timeout,
            basic_auth: static_credentials(args.oap_credentials_dir.as_deref(), name)?,
        };
        let reader = OapReader::new(config).with_context(|| format!("--oap {name}"))?;
        if statics.insert(name.clone(), reader).is_some() {
            bail!("--oap {name} is given twice");
        }
    }
    let routes = match &args.oap_routes {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --oap-routes {}", path.display()))?;
            skylift_adapter::oaps::parse_routes(&text)
                .map_err(|e| anyhow::anyhow!("--oap-routes {}: {e}", path.display()))?
        }
        None => Default::default(),
    };
    for (name, named) in &expressions {
        let named_oaps = named.federation.iter().flat_map(|f| f.oaps.iter());
        for oap in named_oaps {
            if let skylift_adapter::oaps::OapRef::Static(oap) = oap
                && !statics.contains_key(oap)
            {
                bail!("--expressions: {name:?} reads OAP {oap:?}, which is no --oap");
            }
        }
    }
    for (namespace, oap) in &routes {
        if let skylift_adapter::oaps::OapRef::Static(name) = oap
            && !statics.contains_key(name)
        {
            bail!("--oap-routes: namespace {namespace:?} goes to {name:?}, which is no --oap");
        }
    }
    let oaps = Arc::new(Directory::new(reader, statics, routes, args.oap_timeout));

    // In-cluster, or from KUBECONFIG / ~/.kube/config.
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    let metrics = Arc::new(Metrics::default());
    let access = Access::new(client.clone(), args.auth_cache_ttl);
    let certificates = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => Certificates::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            let secret = match &args.tls_secret {
                Some(text) => split_secret(text)?,
                None => (namespace.clone(), "skylift-adapter-tls".into()),
            };
            let mut settings = bootstrap::Settings::new(&args.service_name, &namespace, secret);
            settings.ca_bundle_for = Some(args.apiservice_name.clone())
                .filter(|n| !n.is_empty())
                .map(bootstrap::CaBundleTarget::ApiService);
            settings.manager = "skylift-adapter".into();
            Certificates::SelfManaged(settings)
        }
    };

    let adapter = Arc::new(Adapter::new(
        args.metric_prefix.clone(),
        expressions,
        oaps.clone(),
        args.refresh_interval,
        metrics.clone(),
    ));
    let app = guarded(router(adapter), access.clone(), metrics);
    if args.discover_oapservers {
        tokio::spawn(skylift_adapter::discovery::watch_oapservers(
            client.clone(),
            oaps,
        ));
    }
    // Bound now, so a port that cannot be taken stops the start with its reason; accepted
    // from only once the aggregator can be authenticated.
    let listener = tokio::net::TcpListener::bind(args.secure_listen)
        .await
        .with_context(|| format!("listening on {}", args.secure_listen))?;
    tracing::info!(listen = %args.secure_listen, oap = %args.oap_url, "skylift-adapter starting");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        stopped = start::run(client, access, certificates, listener, app) => {
            return Err(stopped).context("skylift-adapter stopped");
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_the_documented_defaults_and_secrets_are_namespaced() {
        let args = Args::try_parse_from(["skylift-adapter"]).unwrap();
        assert_eq!(args.secure_listen.port(), 6443);
        assert_eq!(args.refresh_interval, Duration::from_secs(10));
        assert_eq!(args.oap_url, "http://oap:12800/graphql");
        assert_eq!(args.apiservice_name, "v1beta1.external.metrics.k8s.io");
        assert!(Args::try_parse_from(["skylift-adapter", "--tls-cert-file=/c"]).is_err());
        assert_eq!(
            split_secret("skylift-system/tls").unwrap(),
            ("skylift-system".into(), "tls".into())
        );
        assert!(split_secret("tls").is_err());
    }
}
