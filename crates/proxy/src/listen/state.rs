//! What every connection and sender shares.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::balance::balancer::Balancer;
use crate::balance::upstream_set::UpstreamSet;
use crate::listen::turned_away::TurnedAway;
use crate::metrics::Metrics;
use crate::queue::Queue;
pub use crate::upstream::client::UpstreamClient;

/// Limits of the inbound side.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_message_bytes: usize,
    /// How often an idle client connection is pinged; one that does not answer within the
    /// same time (at most 20 s) is closed. A client whose host died would otherwise count
    /// as connected forever, and the connection count drives autoscaling.
    pub keepalive: Option<std::time::Duration>,
    /// Client connections are asked to reconnect (GOAWAY) at this age, so that they spread
    /// onto replicas added since they connected.
    pub max_connection_age: Option<std::time::Duration>,
    /// How long streams may go on after such a GOAWAY (or a shutdown's).
    pub max_connection_age_grace: std::time::Duration,
    /// How long a client may take over its preface and SETTINGS, or over a header block.
    pub header_timeout: std::time::Duration,
    /// How long a connection with no calls may stay silent.
    pub idle_timeout: Option<std::time::Duration>,
}

/// Shared by all connections and senders.
pub struct Shared {
    pub queue: Queue,
    pub upstreams: UpstreamSet,
    pub balancer: Balancer,
    /// Batch latency per upstream, for ejecting slow ones.
    pub outliers: crate::balance::outlier::LatencyOutliers,
    pub client: UpstreamClient,
    pub limits: Limits,
    /// Open client connections (limited, and reported to OAP).
    pub connections: AtomicUsize,
    /// TLS termination for clients, when configured.
    pub tls: Option<std::sync::Arc<crate::listen::tls::Termination>>,
    /// A shutdown has begun: not ready for new clients.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Clients refused at the limit lately (reported to OAP with the open connections).
    pub turned_away: TurnedAway,
    pub metrics: Metrics,
    /// Warnings about data upstreams refused, rate-limited.
    pub refusal_log: crate::metrics::RefusalLog,
    /// Meter data keeps to one upstream per service instance (else it is balanced).
    pub fixed_meter_routing: bool,
    /// With `--routing hash`: the request header whose value picks the upstream.
    pub hash_header: Option<http::HeaderName>,
}

pub type State = Arc<Shared>;

impl Shared {
    /// The hash key a request carries, with `--routing hash`.
    pub fn hash_key(&self, headers: &http::HeaderMap) -> Option<String> {
        let name = self.hash_header.as_ref()?;
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}
