//! OTLP/HTTP exports by affinity (`POST /v1/traces`, `/v1/metrics`, `/v1/logs` with
//! `Content-Type: application/x-protobuf`, gzip or not): the body is the export request,
//! its parts are posted to the collectors' HTTP port, the answer an `Export*ServiceResponse`
//! in protobuf. JSON exports, and other encodings, are forwarded whole and counted.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{AnswerError, NotSplit, OtlpAffinity, Outcome, Sent, deliver, read_answer};
use crate::grpc::Body;
use crate::grpc::message::{self, Decoded};
use crate::grpc::otlp::{self, Signal};
use crate::upstream::Pool;
use crate::upstream::http::{HttpUpstreams, Tried, forward_whole, outgoing, plain};

const PROTOBUF: &str = "application/x-protobuf";

/// One OTLP/HTTP export and where it goes.
pub(crate) struct Export<'a> {
    pub pool: &'a Pool,
    pub http: &'a HttpUpstreams,
    pub affinity: &'a OtlpAffinity,
    pub signal: Signal,
    pub peer: Option<IpAddr>,
    pub tls: bool,
}

impl Export<'_> {
    /// Sends the export (`parts` and its whole `body`) and answers the client.
    pub(crate) async fn send(&self, parts: &http::request::Parts, body: Bytes) -> Response<Body> {
        let whole = |reason: &'static str| {
            self.pool
                .metrics
                .otlp_forwarded_whole(self.signal.name(), reason);
            forward_whole(
                self.pool,
                self.http,
                parts,
                body.clone(),
                self.peer,
                self.tls,
            )
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(PROTOBUF) {
            let reason = if content_type.starts_with("application/json") {
                "json"
            } else {
                "content_type"
            };
            return whole(reason).await;
        }
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let message = match encoding {
            None | Some("identity") => body.clone(),
            Some("gzip") => match message::gunzip(&body, self.pool.max_message_bytes) {
                Decoded::Message(message) => message,
                Decoded::TooLarge => {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "skylift-proxy: request body larger than --max-message-bytes once decompressed",
                    );
                }
                Decoded::Unreadable(reason) => return whole(reason).await,
            },
            Some(_) => return whole("encoding").await,
        };
        let send = |upstream: String, part: Bytes| async move {
            self.send_part(&upstream, parts, part).await
        };
        match deliver(self.pool, self.affinity, self.signal, &message, send).await {
            Ok(tally) => match tally.outcome(self.signal) {
                Outcome::Taken => protobuf(Vec::new()),
                Outcome::Partial(lost, message) => protobuf(otlp::response(lost, &message)),
                Outcome::Refused(status, message) => plain(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    &message,
                ),
                Outcome::Late => plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "skylift-proxy: the collectors did not answer in time",
                ),
                Outcome::Unreachable(reason) => plain(StatusCode::BAD_GATEWAY, &reason),
            },
            Err(NotSplit::NoUpstream) => plain(
                StatusCode::BAD_GATEWAY,
                "skylift-proxy: no upstream is available",
            ),
            Err(NotSplit::Malformed) => whole("malformed").await,
        }
    }

    /// Posts one part to `upstream`'s HTTP port and reads what it made of it.
    async fn send_part(&self, upstream: &str, parts: &http::request::Parts, part: Bytes) -> Sent {
        // The part comes framed for gRPC; OTLP/HTTP posts the message alone.
        let mut request = outgoing(parts, part.slice(5..), self.peer, self.tls);
        request.headers_mut().remove(header::CONTENT_ENCODING);
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
        let timeout = self.pool.delivery.call_timeout + self.pool.delivery.answer_timeout;
        let response = match self.http.send(self.pool, upstream, request, timeout).await {
            Tried::Answered(response) => response,
            Tried::Unreachable(reason) | Tried::Failed(reason) => return Sent::Unreachable(reason),
            Tried::TimedOut(_) => return Sent::Late,
        };
        let status = response.status();
        let read = match tokio::time::timeout(timeout, read_answer(response.into_body())).await {
            Err(_) => return Sent::Late,
            Ok(Err(AnswerError::BrokeOff(err))) => {
                return Sent::Unreachable(format!("upstream {upstream} broke off: {err}"));
            }
            // Only the start is read of an answer too long to be an export answer.
            Ok(Err(AnswerError::TooLarge)) => Bytes::new(),
            Ok(Ok((read, _))) => read,
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&read[..read.len().min(512)])
                .trim()
                .to_string();
            return Sent::Refused(status.as_u16(), format!("{status} {text}"));
        }
        match otlp::rejected(&read) {
            Ok((rejected, message)) => Sent::Taken(rejected, message),
            // A 2xx said the data was taken, whatever else the answer holds.
            Err(_) => Sent::Taken(0, None),
        }
    }
}

fn protobuf(message: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    response
}
