//! Calls the proxy makes itself (batches, health probes, its telemetry) and bodies it sends
//! upstream: HTTP/2 requests whose data is a [`Payload`].

use http::HeaderValue;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

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
