//! What becomes of an HTTP request that is not a gRPC call (`--upstream-http-port`), over
//! HTTP/1.1 or HTTP/2: its body read whole within `--max-message-bytes` (413 beyond it;
//! 408 when it stops arriving for `--header-timeout`),
//! then an OTLP/HTTP export sent by affinity when `--otlp-affinity` is on, and anything
//! else forwarded whole to the next upstream's HTTP port.

use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::grpc::otlp::Signal;
use crate::grpc::{Body, BoxError};
use crate::listen::state::State;
use crate::upstream::affinity;
use crate::upstream::http::{forward_whole, plain};

/// Answers one HTTP request from `peer` (over TLS when `tls`).
pub(crate) async fn handle<B>(
    state: &State,
    peer: Option<IpAddr>,
    tls: bool,
    request: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let response = answer(state, peer, tls, request).await;
    state.metrics.http_answered(response.status());
    response
}

async fn answer<B>(
    state: &State,
    peer: Option<IpAddr>,
    tls: bool,
    request: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let Some(http) = &state.http else {
        return plain(
            StatusCode::NOT_FOUND,
            "skylift-proxy: only gRPC is served here (no --upstream-http-port)",
        );
    };
    let max = state.limits.max_message_bytes;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before the body is read (and before `100 Continue` is sent for it).
    if declared.is_some_and(|length| length > max as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body, max, state.limits.header_timeout).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    if let Some(affinity) = &state.otlp_affinity
        && parts.method == Method::POST
        && let Some(signal) = Signal::of_http_path(parts.uri.path())
    {
        let export = affinity::http::Export {
            pool: &state.pool,
            http,
            affinity,
            signal,
            peer,
            tls,
        };
        return export.send(&parts, body).await;
    }
    forward_whole(&state.pool, http, &parts, body, peer, tls).await
}

/// The whole body, at most `max` bytes, each piece of it within `gap` of the one before
/// (as nginx's `client_body_timeout`: a client trickling its body holds nothing for long);
/// `Err` is the answer when it cannot be read.
async fn read_body<B>(body: B, max: usize, gap: Duration) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(Limited::new(body, max));
    let mut read = BytesMut::new();
    loop {
        match tokio::time::timeout(gap, body.frame()).await {
            Err(_) => {
                return Err(plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "skylift-proxy: the request body stopped arriving (--header-timeout)",
                ));
            }
            Ok(None) => return Ok(read.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(err))) if err.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large());
            }
            Ok(Some(Err(err))) => {
                return Err(plain(
                    StatusCode::BAD_REQUEST,
                    &format!("skylift-proxy: reading the request body: {err}"),
                ));
            }
        }
    }
}

fn too_large() -> Response<Body> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        "skylift-proxy: request body larger than --max-message-bytes",
    )
}
