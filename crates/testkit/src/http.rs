//! A minimal HTTP/1.1 client for test and load tools that read small local endpoints
//! (`/metrics`, `/healthz`, the double's write counters, the OAP stand-in's control API)
//! without an HTTP client crate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Status code and body of `GET url` (`http://host:port/path` only).
pub async fn get(url: &str) -> std::io::Result<(u16, String)> {
    request("GET", url).await
}

/// Status code and body of an empty `POST url`.
pub async fn post(url: &str) -> std::io::Result<(u16, String)> {
    request("POST", url).await
}

async fn request(method: &str, url: &str) -> std::io::Result<(u16, String)> {
    let invalid = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {url}"))
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None => (rest, "/".to_string()),
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{method} {url} timed out"),
            )
        })??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("not an HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// Joins a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The sum of every sample of `metric` (all label sets) in a Prometheus text exposition,
/// as `GET /metrics` answers it.
pub fn prometheus_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.0; reported as 0.
        + 0.0
}
