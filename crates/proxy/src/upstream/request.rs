//! Calls the proxy makes itself (batches, health probes, its telemetry) and bodies it sends
//! upstream: HTTP/2 requests whose data is a [`Payload`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::HeaderValue;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};

use crate::grpc::BoxError;
use crate::upstream::payload::Payload;

/// A request body sent upstream.
pub(crate) type UpstreamBody = BoxBody<Payload, BoxError>;

/// An upstream request body of the given data.
pub(crate) fn upstream_body(payload: impl Into<Payload>) -> UpstreamBody {
    http_body_util::Full::new(payload.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `request` with a flag that turns true once the client starts sending its body: the
/// stream was opened on a connection, so the upstream may have received it (a call that
/// failed before that reached nobody).
pub(crate) fn watched(
    request: http::Request<UpstreamBody>,
) -> (http::Request<UpstreamBody>, Arc<AtomicBool>) {
    let sent = Arc::new(AtomicBool::new(false));
    let flag = sent.clone();
    let request = request.map(|body| {
        Watched {
            body,
            sent: Some(flag),
        }
        .boxed()
    });
    (request, sent)
}

/// A body that says when it is first polled.
struct Watched {
    body: UpstreamBody,
    sent: Option<Arc<AtomicBool>>,
}

impl hyper::body::Body for Watched {
    type Data = Payload;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Payload>, BoxError>>> {
        if let Some(sent) = self.sent.take() {
            sent.store(true, Ordering::Relaxed);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A gRPC call the proxy makes itself (a batch, a health probe, its telemetry): `POST` of
/// `body` (already framed) to `path` on `upstream`, `grpc-encoding` set when the messages
/// are compressed. `None` when the two do not make a URI.
pub fn request(
    upstream: &str,
    path: &str,
    encoding: Option<&str>,
    body: impl Into<Payload>,
) -> Option<http::Request<UpstreamBody>> {
    let uri: http::Uri = format!("http://{upstream}{path}").parse().ok()?;
    let mut request = http::Request::post(uri)
        .body(upstream_body(body))
        .expect("a URI and a method make a valid request");
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(encoding) = encoding.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert("grpc-encoding", encoding);
    }
    Some(request)
}
