//! The body of a request handed to a handler task (forwarded calls): data arrives from the
//! connection over a channel, and each chunk the handler takes returns its size to the
//! client's flow-control window, so a handler that stops reading holds its client back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::signal::Signal;

/// What the connection passes to a handler's request body.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// A request body fed by the connection. It ends when the client ends the stream; when the
/// client resets the stream or the connection closes, the handler's task is cancelled, so
/// no error is ever seen here.
#[derive(Debug)]
pub(crate) struct RequestBody {
    stream: u32,
    chunks: Option<UnboundedReceiver<Chunk>>,
    signals: UnboundedSender<Signal>,
}

impl RequestBody {
    pub fn new(
        stream: u32,
        chunks: Option<UnboundedReceiver<Chunk>>,
        signals: UnboundedSender<Signal>,
    ) -> RequestBody {
        RequestBody {
            stream,
            chunks,
            signals,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(chunks) = self.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        match chunks.poll_recv(cx) {
            Poll::Ready(Some(Chunk::Data(data))) => {
                let taken = u32::try_from(data.len()).expect("frames are below 16 MiB");
                let _ = self.signals.send(Signal::Consumed {
                    stream: self.stream,
                    bytes: taken,
                });
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Chunk::Trailers(trailers))) => {
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(None) => {
                self.chunks = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_none()
    }
}
