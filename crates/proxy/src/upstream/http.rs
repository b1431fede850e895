//! HTTP requests forwarded to the upstreams' HTTP port (`--upstream-http-port`): OAP's REST
//! receivers and the browser agent's endpoints on 12800, an OpenTelemetry collector's
//! OTLP/HTTP on 4318. Each request is balanced on its own over the same upstreams, health
//! and ejection as gRPC, over HTTP/1.1 connections kept alive per upstream. A request's
//! body is read whole first (at most `--max-message-bytes`), so one an upstream could not
//! be reached for is sent to the next.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::balance::upstream_set::untried;
use crate::grpc::{Body, BoxError};
use crate::upstream::Pool;

/// Longest a connection to an upstream's HTTP port may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle upstream connections kept per upstream, and for how long. HTTP/1.1 carries one
/// request at a time: as many connections as requests in flight to one upstream are
/// kept for the next ones, or each burst would open (and close) connections anew.
const IDLE_PER_UPSTREAM: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The headers of one hop (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// How HTTP requests reach the upstreams.
pub struct HttpUpstreams {
    /// The upstreams' HTTP port.
    pub port: u16,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What trying one upstream gave.
pub(crate) enum Tried {
    Answered(Response<hyper::body::Incoming>),
    /// It could not be reached (nothing was sent): another may be tried.
    Unreachable(String),
    /// It broke off once the request was sent.
    Failed(String),
    /// It did not answer in time.
    TimedOut(String),
}

impl HttpUpstreams {
    pub fn new(port: u16) -> HttpUpstreams {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_UPSTREAM)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
        HttpUpstreams { port, client }
    }

    /// `upstream`'s (its gRPC address's) host at the HTTP port.
    pub(crate) fn address_of(&self, upstream: &str) -> String {
        let host = upstream.rsplit_once(':').map_or(upstream, |(host, _)| host);
        format!("{host}:{}", self.port)
    }

    /// Sends `request` (its URI a path) to `upstream`, within `timeout`; records the
    /// upstream's health as the gRPC calls do.
    pub(crate) async fn send(
        &self,
        pool: &Pool,
        upstream: &str,
        mut request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Tried {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let Ok(uri) = format!("http://{}{path}", self.address_of(upstream)).parse() else {
            return Tried::Unreachable(format!("cannot address upstream {upstream}"));
        };
        *request.uri_mut() = uri;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                pool.balancer.succeeded(upstream);
                Tried::Answered(response)
            }
            Ok(Err(err)) if err.is_connect() => {
                pool.balancer.failed(upstream, Instant::now());
                pool.metrics.ejected("failure");
                Tried::Unreachable(format!(
                    "upstream {} could not be reached: {}",
                    self.address_of(upstream),
                    crate::upstream::client::describe(&err)
                ))
            }
            Ok(Err(err)) => Tried::Failed(format!(
                "upstream {} failed: {}",
                self.address_of(upstream),
                crate::upstream::client::describe(&err)
            )),
            Err(_) => Tried::TimedOut(format!(
                "upstream {} did not answer within {timeout:?}",
                self.address_of(upstream)
            )),
        }
    }
}

/// The request as forwarded: the client's method, path and headers less those of its hop,
/// with `X-Forwarded-For` and `X-Forwarded-Proto` added.
pub(crate) fn outgoing(
    parts: &http::request::Parts,
    body: Bytes,
    peer: Option<IpAddr>,
    tls: bool,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    // The body is whole: its length is known, whatever framing the client used.
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    // HTTP/2 requests carry their host as `:authority`.
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    if let Some(peer) = peer {
        let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {peer}"),
            None => peer.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            headers.insert("x-forwarded-for", value);
        }
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    *request.headers_mut() = headers;
    request
}

/// Removes the headers of one hop, and those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The upstream's answer as the client gets it: its status, headers (less those of its
/// hop) and body, streamed.
pub(crate) fn relay(response: Response<hyper::body::Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// An answer the proxy makes itself: `status` and a line of text.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Forwards a whole request round-robin: to the next upstream, and on to another (up to
/// three) while the one tried cannot be reached.
pub(crate) async fn forward_whole(
    pool: &Pool,
    http: &HttpUpstreams,
    parts: &http::request::Parts,
    body: Bytes,
    peer: Option<IpAddr>,
    tls: bool,
) -> Response<Body> {
    let timeout = pool.delivery.call_timeout + pool.delivery.answer_timeout;
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = String::from("no upstream is available");
    for _ in 0..3 {
        let remaining = untried(&pool.upstreams.snapshot(), &tried);
        let Some(upstream) = pool.balancer.pick(None, &remaining, Instant::now()) else {
            break;
        };
        tried.push(upstream.address.clone());
        let request = outgoing(parts, body.clone(), peer, tls);
        match http.send(pool, &upstream.address, request, timeout).await {
            Tried::Answered(response) => return relay(response),
            Tried::Unreachable(reason) => last_error = reason,
            Tried::Failed(reason) => {
                return plain(StatusCode::BAD_GATEWAY, &format!("skylift-proxy: {reason}"));
            }
            Tried::TimedOut(reason) => {
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("skylift-proxy: {reason}"),
                );
            }
        }
    }
    plain(
        StatusCode::BAD_GATEWAY,
        &format!("skylift-proxy: {last_error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_port_replaces_the_grpc_port() {
        let http = HttpUpstreams::new(12800);
        assert_eq!(http.address_of("10.0.0.7:11800"), "10.0.0.7:12800");
        assert_eq!(http.address_of("[fd00::7]:11800"), "[fd00::7]:12800");
        assert_eq!(
            http.address_of("oap-0.oap.obs.svc:11800"),
            "oap-0.oap.obs.svc:12800"
        );
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_forwarding_is_said() {
        let request = Request::post("http://proxy:11800/v3/segments?x=1")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-forwarded-for", "192.0.2.1")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let out = outgoing(
            &parts,
            Bytes::from_static(b"[]"),
            Some("10.1.2.3".parse().unwrap()),
            false,
        );
        assert_eq!(out.uri(), "/v3/segments?x=1");
        let headers = out.headers();
        for gone in ["connection", "x-hop", "keep-alive", "transfer-encoding"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["host"], "proxy:11800");
        assert_eq!(headers["content-type"], "application/json");
    }
}
