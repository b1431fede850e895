//! What every client connection shares: the limits and connection count of the listener,
//! the intake its report streams go into, and the upstream pool its other calls are
//! forwarded to. The admin server and the telemetry read it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use crate::federation::Federation;
use crate::ingest::stream::Intake;
use crate::listen::tls::Termination;
use crate::listen::turned_away::TurnedAway;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::queue::journal::Journal;
use crate::upstream::Pool;
use crate::upstream::affinity::OtlpAffinity;
use crate::upstream::http::HttpUpstreams;

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

/// Shared by all client connections.
pub struct Shared {
    pub queue: Arc<Queue>,
    pub pool: Arc<Pool>,
    /// Where report streams go: the queue, keyed as the pool routes.
    pub intake: Intake,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Open client connections (limited, and reported to OAP).
    pub connections: AtomicUsize,
    /// TLS termination for clients, when configured.
    pub tls: Option<Arc<Termination>>,
    /// A shutdown has begun: not ready for new clients.
    pub shutting_down: AtomicBool,
    /// Clients refused at the limit lately (reported to OAP with the open connections).
    pub turned_away: TurnedAway,
    /// The federation pool copies of reports also go to, if any.
    pub federation: Option<Arc<Federation>>,
    /// How OTLP exports are routed by affinity (`--otlp-affinity`), if they are.
    pub otlp_affinity: Option<OtlpAffinity>,
    /// HTTP requests (HTTP/1.1, and HTTP/2 ones that are not gRPC) and where they go
    /// (`--upstream-http-port`), if they are served.
    pub http: Option<HttpUpstreams>,
}

pub type State = Arc<Shared>;

impl Shared {
    /// The listener's state over `queue` and `pool`, with no connection yet.
    pub fn new(
        queue: Arc<Queue>,
        pool: Arc<Pool>,
        limits: Limits,
        tls: Option<Arc<Termination>>,
        turned_away: TurnedAway,
    ) -> Shared {
        let intake = Intake {
            queue: queue.clone(),
            metrics: pool.metrics.clone(),
            routing: pool.routing.clone(),
            max_message_bytes: limits.max_message_bytes,
            federation: None,
        };
        Shared {
            metrics: pool.metrics.clone(),
            queue,
            pool,
            intake,
            limits,
            connections: AtomicUsize::new(0),
            tls,
            shutting_down: AtomicBool::new(false),
            turned_away,
            federation: None,
            otlp_affinity: None,
            http: None,
        }
    }

    /// The same, with copies of the reports `federation` takes also queued for it.
    pub fn with_federation(mut self, federation: Arc<Federation>) -> Shared {
        self.intake.federation = Some(federation.clone());
        self.federation = Some(federation);
        self
    }

    /// The same, with OTLP exports routed by `affinity`.
    pub fn with_otlp_affinity(mut self, affinity: OtlpAffinity) -> Shared {
        self.otlp_affinity = Some(affinity);
        self
    }

    /// The same, serving HTTP requests and forwarding them to the upstreams' `port`.
    pub fn with_http(mut self, port: u16) -> Shared {
        self.http = Some(HttpUpstreams::new(port));
        self
    }

    /// The journals a report must be written to before its client hears it was taken:
    /// the queue's and the federation queue's (with `--queue disk`).
    pub(crate) fn journals(&self) -> impl Iterator<Item = &Arc<Journal>> {
        self.queue.journal().into_iter().chain(
            self.federation
                .as_ref()
                .and_then(|federation| federation.queue.journal()),
        )
    }
}
