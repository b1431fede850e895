//! What every sender, forwarded call and health check shares: the upstream set, the
//! balancer's view of it, the HTTP/2 client, and how requests are keyed.

use std::sync::Arc;

use crate::balance::balancer::Balancer;
use crate::balance::outlier::LatencyOutliers;
use crate::balance::routing::Routing;
use crate::balance::upstream_set::UpstreamSet;
use crate::metrics::{Metrics, RefusalLog};
use crate::upstream::client::UpstreamClient;

/// The upstreams and how to reach them.
pub struct Pool {
    pub upstreams: UpstreamSet,
    pub balancer: Balancer,
    /// Batch latency per upstream, for ejecting slow ones.
    pub outliers: LatencyOutliers,
    pub client: UpstreamClient,
    pub routing: Routing,
    /// The largest message a forwarded call may carry (`--max-message-bytes`).
    pub max_message_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// Warnings about data upstreams refused, rate-limited.
    pub refusal_log: RefusalLog,
    /// The call's deadline and each event's budget.
    pub delivery: crate::upstream::delivery::Delivery,
}
