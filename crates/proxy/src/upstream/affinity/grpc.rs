//! OTLP/gRPC exports by affinity: the export's one message read (gunzipped), its parts
//! sent as calls of the same method, the answer an `Export*ServiceResponse`.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};

use super::{
    AnswerError, MAX_ANSWER_BYTES, NotSplit, OtlpAffinity, Outcome, Sent, deliver, read_answer,
};
use crate::grpc::message::{self, Decoded};
use crate::grpc::otlp::{self, Signal};
use crate::grpc::{self, Body, Code};
use crate::h2::RequestBody;
use crate::upstream::Pool;
use crate::upstream::forward::{self, Attempt};
use crate::upstream::request::upstream_body;

/// Answers an OTLP export of `signal`, sent by affinity.
pub(crate) async fn export(
    pool: &Pool,
    affinity: &OtlpAffinity,
    signal: Signal,
    request: Request<RequestBody>,
) -> Response<Body> {
    let deadline = grpc::timeout(request.headers()).map(|d| tokio::time::Instant::now() + d);
    let (parts, body) = request.into_parts();
    let body = match forward::read_body(pool, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let encoding = parts
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok());
    let whole = |reason: &'static str| {
        pool.metrics.otlp_forwarded_whole(signal.name(), reason);
        forward::send_whole(pool, None, None, &parts, body.clone(), deadline)
    };
    let message = match message::single(&body, encoding, pool.max_message_bytes) {
        Decoded::Message(message) => message,
        Decoded::TooLarge => {
            return grpc::error(
                Code::ResourceExhausted,
                "skylift-proxy: request larger than --max-message-bytes once decompressed",
            );
        }
        Decoded::Unreadable(reason) => return whole(reason).await,
    };
    let headers = part_headers(&parts.headers);
    let path = parts.uri.path();
    // Parts are sent within the client's deadline, else within the pool's call and answer
    // timeouts: a collector that never answers must not hold the client forever.
    let deadline = deadline.unwrap_or_else(|| {
        tokio::time::Instant::now() + pool.delivery.call_timeout + pool.delivery.answer_timeout
    });
    let send = |upstream: String, part: Bytes| {
        let headers = &headers;
        async move { send_part(pool, &upstream, path, headers, part, deadline).await }
    };
    match deliver(pool, affinity, signal, &message, send).await {
        Ok(tally) => match tally.outcome(signal) {
            Outcome::Taken => grpc::answer(&[]),
            Outcome::Partial(lost, message) => grpc::answer(&otlp::response(lost, &message)),
            Outcome::Refused(code, message) => grpc::error(code, &message),
            Outcome::Late => forward::deadline_exceeded(),
            Outcome::Unreachable(reason) => grpc::error(Code::Unavailable, &reason),
        },
        Err(NotSplit::NoUpstream) => {
            grpc::error(Code::Unavailable, "skylift-proxy: no upstream is available")
        }
        Err(NotSplit::Malformed) => whole("malformed").await,
    }
}

/// The client's headers for a part: its body is re-encoded uncompressed, so neither its
/// length nor its encoding carry over, and the collector is asked for a plain answer.
fn part_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove("grpc-encoding");
    headers.remove("grpc-accept-encoding");
    headers
}

/// Sends one part to `upstream` and reads what it made of it.
async fn send_part(
    pool: &Pool,
    upstream: &str,
    path: &str,
    headers: &HeaderMap,
    framed: Bytes,
    deadline: tokio::time::Instant,
) -> Sent {
    let Ok(uri) = format!("http://{upstream}{path}").parse() else {
        return Sent::Unreachable(format!("cannot address upstream {upstream}"));
    };
    let mut request = Request::new(upstream_body(framed));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers.clone();
    let response = match forward::attempt(pool, upstream, request, Some(deadline)).await {
        Attempt::Answered(response) => response,
        Attempt::DeadlineExceeded => return Sent::Late,
        Attempt::Failed(reason) => return Sent::Unreachable(reason),
    };
    let (head, body) = response.into_parts();
    let (answer, trailers) = match tokio::time::timeout_at(deadline, read_answer(body)).await {
        Ok(Ok(read)) => read,
        Ok(Err(AnswerError::BrokeOff(reason))) => {
            return Sent::Unreachable(format!("upstream {upstream} broke off: {reason}"));
        }
        Ok(Err(AnswerError::TooLarge)) => {
            return Sent::Unreachable(format!("upstream {upstream}: answer larger than 64 KiB"));
        }
        Err(_) => return Sent::Late,
    };
    let code = grpc::status_of(&head.headers, trailers.as_ref());
    let message = grpc::message_of(&head.headers, trailers.as_ref());
    match code {
        Some(0) => {}
        Some(code) => return Sent::Refused(code, message),
        None => {
            return Sent::Refused(
                grpc::status_of_http(head.status),
                format!("answered HTTP {} without a gRPC status", head.status),
            );
        }
    }
    let encoding = head
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok());
    // An empty body is an answer of defaults: full success.
    if answer.is_empty() {
        return Sent::Taken(0, None);
    }
    match message::single(&answer, encoding, MAX_ANSWER_BYTES) {
        Decoded::Message(bytes) => match otlp::rejected(&bytes) {
            Ok((rejected, message)) => Sent::Taken(rejected, message),
            // The status said OK: the data was taken, whatever else the answer holds.
            Err(_) => Sent::Taken(0, None),
        },
        _ => Sent::Taken(0, None),
    }
}
