//! Forwarding a request to one upstream and relaying its answer: streaming both ways with
//! headers, trailers and status kept (unknown services, bidirectional tasks), or buffered
//! and retried on another upstream when the upstream cannot be reached (sync calls).

use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Limited};

use crate::balance::upstream_set::untried;
use crate::grpc::{self, Body, BoxError, Code};
use crate::h2::RequestBody;
use crate::upstream::Pool;
use crate::upstream::client::Relayed;
use crate::upstream::payload::Payload;
use crate::upstream::request::{UpstreamBody, upstream_body};

/// The URI of a call on `upstream`: on `path` when given (a known method's registered
/// name), else on the client's own path.
fn upstream_uri(upstream: &str, original: &Uri, path: Option<&str>) -> Option<Uri> {
    let path = path.unwrap_or_else(|| original.path_and_query().map_or("/", |p| p.as_str()));
    format!("http://{upstream}{path}").parse().ok()
}

fn relay(response: Response<Relayed>) -> Response<Body> {
    response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// Streams the request to one upstream (no retry: the body is not kept).
pub(crate) async fn pass_through(
    pool: &Pool,
    path: Option<&str>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let deadline = grpc::timeout(request.headers()).map(|d| tokio::time::Instant::now() + d);
    let upstreams = pool.upstreams.snapshot();
    let key = pool.routing.hash_key(request.headers());
    let Some(upstream) = pool
        .balancer
        .pick(key.as_deref(), &upstreams, Instant::now())
    else {
        return grpc::error(Code::Unavailable, "skylift-proxy: no upstream is available");
    };
    let (mut parts, body) = request.into_parts();
    let Some(uri) = upstream_uri(&upstream.address, &parts.uri, path) else {
        return grpc::error(Code::Internal, "skylift-proxy: cannot address the upstream");
    };
    parts.uri = uri;
    let body = body
        .map_frame(|frame| frame.map_data(Payload::from))
        .map_err(|never| match never {})
        .boxed();
    let outgoing = Request::from_parts(parts, body);
    match attempt(pool, &upstream.address, outgoing, deadline).await {
        Attempt::Answered(response) => response,
        Attempt::DeadlineExceeded => deadline_exceeded(),
        Attempt::Failed(reason) => {
            grpc::error(Code::Unavailable, &format!("skylift-proxy: {reason}"))
        }
    }
}

/// What one try at an upstream gave.
pub(crate) enum Attempt {
    Answered(Response<Body>),
    DeadlineExceeded,
    /// The upstream could not be reached or broke off; the reason says which.
    Failed(String),
}

/// Sends `request` to `upstream` within `deadline`, records the upstream's health, and
/// relays its answer.
pub(crate) async fn attempt(
    pool: &Pool,
    upstream: &str,
    request: Request<UpstreamBody>,
    deadline: Option<tokio::time::Instant>,
) -> Attempt {
    let call = pool.client.request(request);
    let result = match deadline {
        Some(at) => match tokio::time::timeout_at(at, call).await {
            Ok(result) => result,
            Err(_) => return Attempt::DeadlineExceeded,
        },
        None => call.await,
    };
    match result {
        Ok(response) => {
            pool.balancer.succeeded(upstream);
            Attempt::Answered(relay(response))
        }
        Err(err) => {
            pool.balancer.failed(upstream, Instant::now());
            pool.metrics.ejected("failure");
            Attempt::Failed(format!("upstream {upstream} failed: {err}"))
        }
    }
}

pub(crate) fn deadline_exceeded() -> Response<Body> {
    grpc::error(
        Code::DeadlineExceeded,
        "skylift-proxy: deadline exceeded waiting for the upstream",
    )
}

/// Reads a buffered call's whole body, within `--max-message-bytes` (and its header);
/// `Err` is the answer when it cannot be.
pub(crate) async fn read_body(pool: &Pool, body: RequestBody) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, pool.max_message_bytes + 5)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(grpc::error(
            Code::ResourceExhausted,
            "skylift-proxy: request larger than --max-message-bytes",
        )),
        Err(err) => Err(grpc::error(
            Code::Internal,
            &format!("skylift-proxy: reading the request: {err}"),
        )),
    }
}

/// Sends a unary or short client-streaming call to an upstream and relays its answer; an
/// upstream that cannot be reached is skipped for the next (up to three), within the
/// call's `grpc-timeout`.
pub(crate) async fn sync_call(
    pool: &Pool,
    path: Option<&str>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let deadline = grpc::timeout(request.headers()).map(|d| tokio::time::Instant::now() + d);
    let key = pool.routing.hash_key(request.headers());
    let (parts, body) = request.into_parts();
    match read_body(pool, body).await {
        Ok(body) => send_whole(pool, key.as_deref(), path, &parts, body, deadline).await,
        Err(answer) => answer,
    }
}

/// Sends a buffered call (`parts` and `body`) to the upstream `key` or the policy picks,
/// and on to another (up to three) while the one tried cannot be reached.
pub(crate) async fn send_whole(
    pool: &Pool,
    key: Option<&str>,
    path: Option<&str>,
    parts: &http::request::Parts,
    body: Bytes,
    deadline: Option<tokio::time::Instant>,
) -> Response<Body> {
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = String::from("no upstream is available");
    for _ in 0..3 {
        let remaining = untried(&pool.upstreams.snapshot(), &tried);
        let Some(upstream) = pool.balancer.pick(key, &remaining, Instant::now()) else {
            break;
        };
        tried.push(upstream.address.clone());
        let Some(uri) = upstream_uri(&upstream.address, &parts.uri, path) else {
            continue;
        };
        let mut outgoing = Request::new(upstream_body(body.clone()));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = parts.headers.clone();
        match attempt(pool, &upstream.address, outgoing, deadline).await {
            Attempt::Answered(response) => return response,
            Attempt::DeadlineExceeded => return deadline_exceeded(),
            Attempt::Failed(reason) => last_error = reason,
        }
    }
    grpc::error(Code::Unavailable, &format!("skylift-proxy: {last_error}"))
}
