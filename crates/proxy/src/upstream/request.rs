//! Calls the proxy makes itself (batches, health probes, its telemetry) and bodies it sends
//! upstream: HTTP/2 requests whose data is a [`Payload`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};

use crate::grpc::BoxError;
use crate::upstream::payload::{Payload, Progress, Tracked};

/// A request body sent upstream.
pub(crate) type UpstreamBody = BoxBody<Payload, BoxError>;

/// An upstream request body of the given data.
pub(crate) fn upstream_body(payload: impl Into<Payload>) -> UpstreamBody {
    http_body_util::Full::new(payload.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `request` with its [`Progress`].
pub(crate) fn watched(
    request: http::Request<UpstreamBody>,
) -> (http::Request<UpstreamBody>, Arc<Progress>) {
    let progress = Arc::new(Progress::default());
    let watcher = progress.clone();
    let request = request.map(|body| {
        Watched {
            body,
            progress: watcher,
        }
        .boxed()
    });
    (request, progress)
}

/// A body that tells its [`Progress`].
struct Watched {
    body: UpstreamBody,
    progress: Arc<Progress>,
}

impl hyper::body::Body for Watched {
    type Data = Payload;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Payload>, BoxError>>> {
        self.progress.set_sent();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let progress = &self.progress;
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| {
                    frame.map_data(|data| {
                        Payload::Tracked(Box::new(Tracked::new(data, progress.clone())))
                    })
                })
            })
        })
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
