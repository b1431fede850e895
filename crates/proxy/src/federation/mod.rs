//! Federation forwarding: a copy of chosen reports (by default the metrics OAP turns into
//! service overview metrics) also goes to a second upstream pool, typically a central OAP
//! in another cluster or cloud (SkyWalking's "OAP Federation Mode" proposal,
//! apache/skywalking#2773, done in the data path instead of in OAP).
//!
//! Each report the local queue takes is copied into the federation's own bounded queue,
//! without ever waiting: a slow or unreachable WAN link fills that queue and then loses
//! copies there (counted `skylift_proxy_federation_dropped_total{reason="queue_full"}`),
//! and local delivery never notices. The copy owns its bytes (it does not pin the client's
//! read buffer while the WAN is down), is gzip-compressed when that shrinks it, and keeps
//! the report's routing key, so one instance's meters reach one federation OAP in order.
//!
//! - [`gzip`]: gRPC's per-message gzip encoding.

pub mod gzip;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::grpc::protocol::{METHODS, Policy};
use crate::queue::{DropReason, Event, Queue, Route};
use crate::upstream::Pool;

/// What a federation pool takes unless told otherwise: the data OAP makes service,
/// instance and JVM/CLR overview metrics of.
pub const DEFAULT_PROTOCOLS: [&str; 4] = ["meter", "jvm", "clr", "management"];

/// The protocols whose reports are queued (and so can be copied): every protocol with an
/// asynchronous method. Calls answered by OAP (configuration, profiling tasks) are not
/// reports and stay with the local OAP.
pub fn queued_protocols() -> Vec<&'static str> {
    let mut protocols: Vec<&'static str> = METHODS
        .iter()
        .filter(|m| matches!(m.policy, Policy::AsyncStream | Policy::AsyncUnary))
        .map(|m| m.protocol)
        .collect();
    protocols.sort_unstable();
    protocols.dedup();
    protocols
}

#[derive(Debug, thiserror::Error)]
#[error("--federation-protocols: {name:?} is not a report protocol; known: {known}")]
pub struct UnknownProtocol {
    name: String,
    known: String,
}

/// The protocols a federation pool takes, checked against those the proxy queues.
pub fn protocols(names: &[String]) -> Result<Vec<&'static str>, UnknownProtocol> {
    let known = queued_protocols();
    names
        .iter()
        .map(|name| {
            known
                .iter()
                .find(|k| **k == name.as_str())
                .copied()
                .ok_or_else(|| UnknownProtocol {
                    name: name.clone(),
                    known: known.join(", "),
                })
        })
        .collect()
}

/// A report's copy for the federation queue, or the news that it had no room for it.
pub(crate) enum Copied {
    Event(Event),
    NoRoom(&'static str),
}

/// The federation pool: its queue, its upstreams, and which reports it takes.
pub struct Federation {
    pub queue: Arc<Queue>,
    pub pool: Arc<Pool>,
    protocols: Vec<&'static str>,
    /// With compression, the gzip route of each path a copy may take (made once: the
    /// copies of one method share it, and batches group by route).
    gzip_routes: Option<HashMap<String, Arc<Route>>>,
}

impl Federation {
    pub fn new(
        queue: Arc<Queue>,
        pool: Arc<Pool>,
        protocols: Vec<&'static str>,
        compress: bool,
    ) -> Federation {
        let gzip_routes = compress.then(|| {
            METHODS
                .iter()
                .filter(|m| protocols.contains(&m.protocol))
                .map(|m| {
                    let route = Route {
                        path: m.upstream_path(),
                        protocol: m.protocol,
                        encoding: Some("gzip".into()),
                        alone: m.sends_alone(),
                    };
                    (route.path.clone(), Arc::new(route))
                })
                .collect()
        });
        Federation {
            queue,
            pool,
            protocols,
            gzip_routes,
        }
    }

    /// Whether reports of `protocol` are copied here.
    pub fn takes(&self, protocol: &str) -> bool {
        self.protocols.contains(&protocol)
    }

    /// The copy of `event` this pool queues, if it takes its protocol; when its queue has
    /// no room for it, only that (a WAN link that is down costs no copying or compressing).
    pub(crate) fn copy(&self, event: &Event) -> Option<Copied> {
        if !self.takes(event.route.protocol) {
            return None;
        }
        // Its run decides its partition: fixed here, so the room looked at is the room
        // it is offered.
        let run = event.run.unwrap_or_else(|| self.queue.next_run());
        if self
            .queue
            .looks_full_for(event.key.as_deref(), run, event.cost())
        {
            return Some(Copied::NoRoom(event.route.protocol));
        }
        // Compressed here unless its client compressed it (gzip: the only encoding taken).
        let gzip_route = match (&self.gzip_routes, &event.route.encoding) {
            (Some(routes), None) => routes.get(event.route.path.as_str()),
            _ => None,
        };
        // A message gzip would not shrink goes as it is, flagged so, in the same stream.
        let framed = gzip_route
            .and_then(|_| gzip::frame(&event.framed[5..]))
            .unwrap_or_else(|| Bytes::copy_from_slice(&event.framed));
        let route = gzip_route.unwrap_or(&event.route).clone();
        Some(Copied::Event(Event {
            route,
            key: event.key.clone(),
            origin: event.origin.clone(),
            framed,
            run: Some(run),
            seq: None,
            attempts: 0,
            unanswered_at: 0,
        }))
    }

    /// Queues a copy, once its original was taken, without waiting: with no room it is
    /// dropped and counted here.
    pub(crate) fn offer(&self, copy: Copied) {
        let protocol = match copy {
            Copied::Event(event) => {
                let protocol = event.route.protocol;
                self.pool.metrics.received_many(protocol, 1);
                if self.queue.offer_or_drop(event) {
                    return;
                }
                protocol
            }
            Copied::NoRoom(protocol) => {
                self.pool.metrics.received_many(protocol, 1);
                self.queue.count_dropped_unoffered(DropReason::QueueFull);
                protocol
            }
        };
        self.pool
            .metrics
            .dropped(protocol, DropReason::QueueFull, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_report_protocols_can_be_federated() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            protocols(&names(&DEFAULT_PROTOCOLS)).unwrap(),
            DEFAULT_PROTOCOLS.to_vec()
        );
        assert!(protocols(&names(&["segment", "log"])).is_ok());
        let err = protocols(&names(&["meter", "configuration"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"configuration\""), "{err}");
        assert!(err.contains("mesh, meter,"), "{err}");
        assert!(!err.contains("known: configuration"), "{err}");
    }
}
