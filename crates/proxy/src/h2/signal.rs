//! Handler tasks (forwarded calls) and their connection talk through signals: the task
//! sends its response as encoded header blocks and data, the request body reports what it
//! consumed. Response data is bounded by credits the connection returns as it writes, so a
//! client that stops reading holds back the handler, not the proxy's memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;

use super::frame::Reason;
use super::headers;

/// Response bytes a handler may have given its connection and not yet seen written.
pub(crate) const RESPONSE_CREDIT: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) enum Signal {
    /// The response's header block; `end` when there is no body (trailers-only).
    Head {
        stream: u32,
        block: Bytes,
        end: bool,
    },
    /// Response data; `credit` is returned to the handler once it is written.
    Data {
        stream: u32,
        data: Bytes,
        end: bool,
        credit: u32,
    },
    Trailers {
        stream: u32,
        block: Bytes,
    },
    /// The response broke off: the stream is reset.
    Reset {
        stream: u32,
        reason: Reason,
    },
    /// Request body data taken by the handler: room in the client's window again.
    Consumed {
        stream: u32,
        bytes: u32,
    },
    /// The handler's task ended (sent last, or on the way out of a panic).
    Finished {
        stream: u32,
    },
}

/// Sends `Finished` however the task ends.
struct FinishGuard {
    stream: u32,
    signals: UnboundedSender<Signal>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let _ = self.signals.send(Signal::Finished {
            stream: self.stream,
        });
    }
}

/// Relays a handler's response to its connection: any HTTP body (the protocol knows
/// nothing of what the application puts in it).
pub(crate) async fn respond<B>(
    stream: u32,
    response: impl Future<Output = Response<B>>,
    signals: UnboundedSender<Signal>,
    credits: Arc<Semaphore>,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let _finished = FinishGuard {
        stream,
        signals: signals.clone(),
    };
    let (parts, mut body) = response.await.into_parts();
    let mut block = BytesMut::new();
    headers::encode_response(parts.status, &parts.headers, &mut block);
    let end = body.is_end_stream();
    let _ = signals.send(Signal::Head {
        stream,
        block: block.freeze(),
        end,
    });
    if end {
        return;
    }
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                tracing::debug!(stream, error = %err, "response body broke off");
                let _ = signals.send(Signal::Reset {
                    stream,
                    reason: Reason::Internal,
                });
                return;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let credit = data.len().min(RESPONSE_CREDIT);
                let credit = u32::try_from(credit).expect("credit is bounded");
                let Ok(permit) = credits.acquire_many(credit).await else {
                    return;
                };
                permit.forget();
                let _ = signals.send(Signal::Data {
                    stream,
                    data,
                    end: false,
                    credit,
                });
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let mut block = BytesMut::new();
                    headers::encode_fields(&trailers, &mut block);
                    let _ = signals.send(Signal::Trailers {
                        stream,
                        block: block.freeze(),
                    });
                    return;
                }
            }
        }
    }
    let _ = signals.send(Signal::Data {
        stream,
        data: Bytes::new(),
        end: true,
        credit: 0,
    });
}
