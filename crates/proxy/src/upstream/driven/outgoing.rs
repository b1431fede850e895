//! What a driven connection has yet to write, in order: the frames it encodes (HEADERS,
//! control frames, each DATA frame's 9-byte header) and, between them, the messages'
//! own buffers. Written with vectored writes straight from the buffers the messages
//! arrived in: nothing of a message is copied in user space.
//!
//! The last segment of each DATA frame carries a [`Mark`], reported when the socket has
//! taken all of it: that is when a call's bytes moved, and, on its last frame, when the
//! upstream was handed the whole request.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::BytesMut;

use crate::upstream::payload::Span;

/// A DATA frame written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub stream: u32,
    /// The frame ended the stream: the whole request was written.
    pub end: bool,
}

struct Segment {
    span: Span,
    mark: Option<Mark>,
}

#[derive(Default)]
pub(crate) struct Outgoing {
    segments: VecDeque<Segment>,
    /// Encoded frames not yet sealed into a segment; new frames go here.
    tail: BytesMut,
    /// Bytes of the first segment already written.
    front_written: usize,
    /// Bytes in `segments`, written or not.
    segment_bytes: usize,
}

impl Outgoing {
    /// Where frames are encoded, after everything queued so far.
    pub fn frames(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Queues message bytes (a DATA frame's payload) after the frames so far.
    pub fn push_data(&mut self, span: Span) {
        if span.is_empty() {
            return;
        }
        self.seal();
        self.segment_bytes += span.len();
        self.segments.push_back(Segment { span, mark: None });
    }

    /// Marks what was queued last (the end of a DATA frame).
    pub fn mark(&mut self, mark: Mark) {
        self.seal();
        if let Some(last) = self.segments.back_mut() {
            last.mark = Some(mark);
        }
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let bytes = self.tail.split().freeze();
            self.segment_bytes += bytes.len();
            self.segments.push_back(Segment {
                span: Span::One(bytes),
                mark: None,
            });
        }
    }

    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.segment_bytes - self.front_written + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next bytes to write, at most `max` slices.
    pub fn slices(&mut self, max: usize) -> Vec<IoSlice<'_>> {
        self.seal();
        let mut slices = Vec::with_capacity(max.min(64));
        let mut skip = self.front_written;
        for segment in &self.segments {
            if slices.len() == max {
                break;
            }
            segment.span.slices(skip, &mut slices, max);
            skip = 0;
        }
        slices
    }

    /// Takes `written` bytes off the front; `marked` hears of each DATA frame now wholly
    /// written.
    pub fn advance(&mut self, mut written: usize, mut marked: impl FnMut(Mark)) {
        while written > 0 {
            let Some(front) = self.segments.front() else {
                debug_assert!(false, "more written than queued");
                return;
            };
            let left = front.span.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front_written = 0;
            self.segment_bytes -= front.span.len();
            let mark = front.mark;
            self.segments.pop_front();
            if let Some(mark) = mark {
                marked(mark);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, Bytes};

    fn span(bytes: &'static [u8]) -> Span {
        Span::One(Bytes::from_static(bytes))
    }

    fn drain(out: &mut Outgoing, per_write: usize) -> (Vec<u8>, Vec<Mark>) {
        let mut wire = Vec::new();
        let mut marks = Vec::new();
        while !out.is_empty() {
            let slices = out.slices(3);
            let mut take = per_write;
            let mut n = 0;
            for slice in &slices {
                let part = take.min(slice.len());
                wire.extend_from_slice(&slice[..part]);
                take -= part;
                n += part;
            }
            drop(slices);
            out.advance(n, |m| marks.push(m));
        }
        (wire, marks)
    }

    #[test]
    fn frames_and_messages_come_out_in_order_and_marks_once_their_frame_is_written() {
        for per_write in [1, 4, 7, 1000] {
            let mut out = Outgoing::default();
            out.frames().put_slice(b"H1");
            out.push_data(span(b"aaa"));
            out.push_data(span(b"bb"));
            out.mark(Mark {
                stream: 1,
                end: false,
            });
            out.frames().put_slice(b"H2");
            out.push_data(span(b"c"));
            out.mark(Mark {
                stream: 1,
                end: true,
            });
            // An empty DATA frame: its header is what the mark waits on.
            out.frames().put_slice(b"H3");
            out.mark(Mark {
                stream: 3,
                end: true,
            });
            out.frames().put_slice(b"RST");
            assert_eq!(out.len(), 15);
            let (wire, marks) = drain(&mut out, per_write);
            assert_eq!(wire, b"H1aaabbH2cH3RST", "{per_write} bytes per write");
            assert_eq!(
                marks,
                [
                    Mark {
                        stream: 1,
                        end: false
                    },
                    Mark {
                        stream: 1,
                        end: true
                    },
                    Mark {
                        stream: 3,
                        end: true
                    }
                ]
            );
        }
    }

    #[test]
    fn a_mark_is_not_reported_while_its_frame_is_partly_written() {
        let mut out = Outgoing::default();
        out.frames().put_slice(b"HEAD");
        out.push_data(span(b"payload"));
        out.mark(Mark {
            stream: 5,
            end: true,
        });
        let mut marks = Vec::new();
        out.advance(10, |m| marks.push(m));
        assert!(marks.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(&out.slices(8)[0][..], b"d");
        out.advance(1, |m| marks.push(m));
        assert_eq!(marks.len(), 1);
        assert!(out.is_empty());
    }
}
