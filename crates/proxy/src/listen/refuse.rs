//! Turning away a connection over `--max-connections` in HTTP/2 terms: after the client's
//! connection preface, an empty SETTINGS frame and a GOAWAY whose debug data says why, so
//! the client reconnects (through the Service, to another replica) and its operator can read
//! the reason. A client that does not speak HTTP/2 is just closed. This runs in its own task,
//! so accepting other connections is never delayed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::h2::frame::PREFACE;
use crate::h2::frame::{self, Reason};

/// What happened to a refused connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client got a GOAWAY with the reason.
    GoAway,
    /// The client did not start with the HTTP/2 preface: closed.
    NotHttp2,
    /// The client said nothing in time: closed.
    Silent,
}

/// The SETTINGS and GOAWAY frames sent to a refused client: last stream 0 (nothing was
/// processed), NO_ERROR (the client may retry elsewhere).
pub(crate) fn goaway_frames(reason: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    frame::settings(&[], &mut out);
    frame::goaway(0, Reason::NoError, reason.as_bytes(), &mut out);
    out.to_vec()
}

/// Refuses `io` with `reason`, waiting at most `patience` for the client's preface.
pub async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    reason: &str,
    patience: Duration,
) -> Refusal {
    let mut preface = [0u8; PREFACE.len()];
    let read = tokio::time::timeout(patience, io.read_exact(&mut preface)).await;
    let refusal = match read {
        Err(_) => Refusal::Silent,
        Ok(Err(_)) => Refusal::NotHttp2,
        Ok(Ok(_)) if &preface != PREFACE => Refusal::NotHttp2,
        Ok(Ok(_)) => {
            let _ = io.write_all(&goaway_frames(reason)).await;
            let _ = io.flush().await;
            Refusal::GoAway
        }
    };
    let _ = io.shutdown().await;
    // Read what the client still sends before closing: closing with unread data makes the
    // kernel reset the connection, which can destroy the GOAWAY before the client reads it.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::frame::kind::{GOAWAY as FRAME_GOAWAY, SETTINGS as FRAME_SETTINGS};

    /// Parses frames as an HTTP/2 client would: (type, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            out.push((bytes[3], bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn an_http2_client_over_the_limit_gets_goaway_with_the_reason() {
        let (mut client, server) = tokio::io::duplex(4096);
        let refused = tokio::spawn(async move {
            refuse(
                server,
                "skylift-proxy: connection limit of 10 reached; reconnect to another replica",
                Duration::from_secs(1),
            )
            .await
        });
        client.write_all(PREFACE).await.unwrap();
        client
            .write_all(&[0, 0, 0, FRAME_SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        drop(client);
        assert_eq!(refused.await.unwrap(), Refusal::GoAway);
        let frames = frames(&received);
        assert_eq!(frames[0], (FRAME_SETTINGS, vec![]));
        let (kind, payload) = &frames[1];
        assert_eq!(*kind, FRAME_GOAWAY);
        assert_eq!(&payload[..8], &[0; 8], "last stream 0, NO_ERROR");
        assert_eq!(
            std::str::from_utf8(&payload[8..]).unwrap(),
            "skylift-proxy: connection limit of 10 reached; reconnect to another replica"
        );
    }

    #[tokio::test]
    async fn other_clients_are_just_closed() {
        let (mut client, server) = tokio::io::duplex(4096);
        let refused = tokio::spawn(refuse(server, "full", Duration::from_secs(1)));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert!(received.is_empty());
        drop(client);
        assert_eq!(refused.await.unwrap(), Refusal::NotHttp2);

        let (client, server) = tokio::io::duplex(4096);
        let started = tokio::time::Instant::now();
        assert_eq!(
            refuse(server, "full", Duration::from_millis(50)).await,
            Refusal::Silent
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(client);
    }
}
