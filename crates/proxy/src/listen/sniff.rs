//! Telling an HTTP/2 client from an HTTP/1.1 one on a cleartext connection, by its first
//! bytes and without taking them: HTTP/2 opens with its connection preface (`PRI *
//! HTTP/2.0`, RFC 9113 §3.4), which no HTTP/1.1 request line does.

use std::time::Duration;

use tokio::net::TcpStream;

/// The start of the HTTP/2 preface: enough to tell it from any HTTP/1.1 method.
const PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spoken {
    Http2,
    Http1,
    /// It closed (or failed) before saying anything.
    Closed,
}

/// What `bytes` (a connection's first bytes) say, `None` while they could still be
/// either.
pub(crate) fn spoken(bytes: &[u8]) -> Option<Spoken> {
    if !PREFACE.starts_with(&bytes[..bytes.len().min(PREFACE.len())]) {
        Some(Spoken::Http1)
    } else if bytes.len() >= PREFACE.len() {
        Some(Spoken::Http2)
    } else {
        None
    }
}

/// Waits for `stream`'s first bytes, at most `within`; one that says too little in time
/// is left to HTTP/2, whose own header timeout closes it.
pub(crate) async fn first_bytes(stream: &TcpStream, within: Duration) -> Spoken {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; PREFACE.len()];
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Spoken::Http2,
            Ok(Err(_) | Ok(0)) => return Spoken::Closed,
            Ok(Ok(n)) => {
                if let Some(spoken) = spoken(&buf[..n]) {
                    return spoken;
                }
                // A prefix of the preface so far (a byte or a few): peek returns at
                // once while they wait unread, so look again shortly.
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                seen = n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_and_request_lines_are_told_apart() {
        assert_eq!(
            spoken(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Spoken::Http2)
        );
        assert_eq!(spoken(b"POST /v1/traces HTTP/1.1\r\n"), Some(Spoken::Http1));
        assert_eq!(spoken(b"PUT "), Some(Spoken::Http1));
        assert_eq!(spoken(b"GET / HTTP/1.1\r\n"), Some(Spoken::Http1));
        assert_eq!(spoken(b"PR"), None);
        assert_eq!(spoken(b"P"), None);
        assert_eq!(spoken(b"PRI * HTTP/1.1"), Some(Spoken::Http1));
        // TLS sent to the cleartext port is not HTTP/2.
        assert_eq!(spoken(&[0x16, 0x03, 0x01]), Some(Spoken::Http1));
    }
}
