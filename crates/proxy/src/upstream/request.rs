//! Request bodies sent upstream through hyper's client (forwarded calls, OTLP affinity
//! parts): HTTP/2 bodies whose data is a [`Payload`].

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
