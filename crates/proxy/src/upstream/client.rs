//! The HTTP/2 client to the upstreams: one multiplexed connection per upstream, and more
//! when its streams saturate. Forwarded calls go through hyper's client; the proxy's own
//! calls (batches, reports, health checks, telemetry) through [`crate::upstream::driven`],
//! with the same limits. A connection carries up to `--upstream-streams` streams at
//! once; a stream beyond that opens (or uses) the upstream's next connection, up to
//! `--upstream-connections`, so a busy OAP's per-connection stream limit (and its
//! head-of-line blocking in one TCP connection) does not cap the proxy.
//!
//! Each connection of an upstream comes from its own connection pool; a stream counts
//! against its connection until its answer has been read to the end.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::upstream::connector::UpstreamConnector;
use crate::upstream::driven::{Call, Connections};
use crate::upstream::payload::Progress;
use crate::upstream::request::UpstreamBody;
use crate::upstream::tls::Origination;

/// Streams counted per upstream, per connection.
type InFlightCounts = Arc<Mutex<HashMap<Arc<str>, Vec<usize>>>>;

pub struct UpstreamClient {
    /// The proxy's own calls: batches, reports, health checks, telemetry.
    driven: Connections,
    /// Forwarded calls, their answers streamed back.
    pools: Vec<Client<UpstreamConnector, UpstreamBody>>,
    streams_per_connection: usize,
    /// Requests go over TLS (and say `https`).
    tls: Option<Arc<Origination>>,
    in_flight: InFlightCounts,
    /// SkyWalking's `authentication` metadata, set on every request when configured.
    authentication: Option<std::sync::Arc<crate::upstream::authentication::Authentication>>,
}

/// An error with its causes, `a: b: c` (hyper's own message says only "client error
/// (Connect)"; the cause says which certificate or address was wrong).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Which connection a new stream goes on: the first with room, else the least busy.
pub(crate) fn choose_connection(in_flight: &[usize], streams_per_connection: usize) -> usize {
    in_flight
        .iter()
        .position(|&n| n < streams_per_connection)
        .unwrap_or_else(|| {
            (0..in_flight.len())
                .min_by_key(|&i| in_flight[i])
                .unwrap_or(0)
        })
}

impl UpstreamClient {
    /// `connections`: the most connections per upstream (at least 1).
    pub fn new(connections: usize, streams_per_connection: usize) -> UpstreamClient {
        UpstreamClient::with_tls(connections, streams_per_connection, None)
    }

    /// [`UpstreamClient::new`], over TLS when `tls` is given.
    pub fn with_tls(
        connections: usize,
        streams_per_connection: usize,
        tls: Option<Arc<Origination>>,
    ) -> UpstreamClient {
        let connector = UpstreamConnector::new(tls.clone());
        let pools = (0..connections.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector.clone())
            })
            .collect();
        UpstreamClient {
            driven: Connections::new(connector, connections, streams_per_connection),
            pools,
            streams_per_connection: streams_per_connection.max(1),
            tls,
            in_flight: Arc::default(),
            authentication: None,
        }
    }

    /// Counts a new stream to `upstream` on the connection it goes on.
    fn lease(&self, upstream: &str) -> InFlight {
        let mut counts = self.in_flight.lock().expect("never poisoned");
        // The upstream's name is allocated once, when its first stream opens.
        let key = match counts.get_key_value(upstream) {
            Some((key, _)) => key.clone(),
            None => {
                let key: Arc<str> = Arc::from(upstream);
                counts.insert(key.clone(), vec![0; self.pools.len()]);
                key
            }
        };
        let per_connection = counts.get_mut(&key).expect("present");
        let index = choose_connection(per_connection, self.streams_per_connection);
        per_connection[index] += 1;
        InFlight {
            counts: self.in_flight.clone(),
            upstream: key,
            index,
        }
    }

    /// Sends `authentication` on every request from now on.
    pub fn with_authentication(
        mut self,
        authentication: std::sync::Arc<crate::upstream::authentication::Authentication>,
    ) -> UpstreamClient {
        self.authentication = Some(authentication);
        self
    }

    pub fn authentication(
        &self,
    ) -> Option<&std::sync::Arc<crate::upstream::authentication::Authentication>> {
        self.authentication.as_ref()
    }

    /// The upstream TLS configuration, when requests go over TLS.
    pub fn origination(&self) -> Option<&Arc<Origination>> {
        self.tls.as_ref()
    }

    /// Sends `request` (its URI names the upstream) and gives its answer, whose body keeps
    /// the stream counted until it is read or dropped.
    pub async fn request(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Relayed>, hyper_util::client::legacy::Error> {
        if self.tls.is_some() {
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            *request.uri_mut() = http::Uri::from_parts(parts).expect("only the scheme changed");
        }
        if let Some(authentication) = &self.authentication {
            request
                .headers_mut()
                .insert("authentication", authentication.current());
        }
        let lease = self.lease(request.uri().authority().map_or("", |a| a.as_str()));
        let response = self.pools[lease.index].request(request).await?;
        Ok(response.map(|body| Relayed {
            body,
            _lease: lease,
        }))
    }

    /// Makes a call of the proxy's own (a health check, its telemetry) on the driven
    /// connections and reads its whole answer within `timeout`; `Err` says why there was
    /// none.
    pub async fn call(
        &self,
        call: Call<'_>,
        timeout: std::time::Duration,
    ) -> Result<Answer, CallError> {
        let by = std::time::Instant::now() + timeout;
        self.call_by(call, None, || by).await
    }

    /// Makes a call of the proxy's own (a batch, a report) on the driven connections
    /// ([`crate::upstream::driven`]) and reads its whole answer by a deadline that may
    /// move while the call runs: `deadline` is asked again whenever the one it gave passes,
    /// and the call times out only when it says a time already past. `progress` hears how
    /// far the request got.
    pub async fn call_by(
        &self,
        call: Call<'_>,
        progress: Option<Arc<Progress>>,
        deadline: impl Fn() -> std::time::Instant,
    ) -> Result<Answer, CallError> {
        let mut fields = Vec::new();
        if let Some(encoding) = call.encoding.and_then(|e| HeaderValue::from_str(e).ok()) {
            fields.push(("grpc-encoding", encoding));
        }
        if let Some(authentication) = &self.authentication {
            fields.push(("authentication", authentication.current()));
        }
        self.driven.call_by(call, fields, progress, deadline).await
    }

    /// The proxy's own calls open per driven connection to `upstream` (for tests and
    /// metrics).
    pub fn calls_in_flight(&self, upstream: &str) -> Vec<usize> {
        self.driven.in_flight(upstream)
    }

    /// Forwarded calls' streams open per connection to `upstream` (for tests and metrics).
    pub fn in_flight(&self, upstream: &str) -> Vec<usize> {
        self.in_flight
            .lock()
            .expect("never poisoned")
            .get(upstream)
            .cloned()
            .unwrap_or_default()
    }
}

/// An upstream's whole answer to a call: its gRPC status (from the trailers, the headers of a
/// trailers-only answer, or the HTTP status when there is none), message and body.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub message: String,
    pub body: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer in time")]
    TimedOut,
    /// Not connected, reset, or broken off while the answer was read.
    #[error("{0}")]
    Broken(String),
}

/// A stream counted against its connection; uncounted when dropped.
struct InFlight {
    counts: InFlightCounts,
    upstream: Arc<str>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("never poisoned");
        if let Some(per_connection) = counts.get_mut(&self.upstream) {
            per_connection[self.index] = per_connection[self.index].saturating_sub(1);
            if per_connection.iter().all(|&n| n == 0) {
                counts.remove(&self.upstream);
            }
        }
    }
}

/// An upstream's answer body; its stream stays counted until this is dropped.
pub struct Relayed {
    body: Incoming,
    _lease: InFlight,
}

impl HttpBody for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_fill_the_first_connection_before_the_next_opens() {
        assert_eq!(choose_connection(&[0, 0, 0], 100), 0);
        assert_eq!(choose_connection(&[99, 0, 0], 100), 0);
        assert_eq!(choose_connection(&[100, 0, 0], 100), 1);
        assert_eq!(choose_connection(&[100, 100, 7], 100), 2);
        // All saturated: the least busy takes the stream.
        assert_eq!(choose_connection(&[130, 101, 120], 100), 1);
    }

    #[test]
    fn leases_are_counted_per_connection_and_returned() {
        let client = UpstreamClient::new(3, 2);
        let leases: Vec<_> = (0..5).map(|_| client.lease("oap-0:11800")).collect();
        assert_eq!(client.in_flight("oap-0:11800"), [2, 2, 1]);
        assert_eq!(client.in_flight("oap-1:11800"), Vec::<usize>::new());
        drop(leases);
        assert_eq!(client.in_flight("oap-0:11800"), Vec::<usize>::new());
    }
}
