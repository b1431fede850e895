//! A stand-in for an OAP node's HTTP port (12800: OAP's REST receivers, served by Armeria
//! annotated services), recording what each report path received per service. The paths
//! and the shape of each body are OAP's:
//! - `POST /v3/segment` a `SegmentObject`, `POST /v3/segments` a list of them
//!   (`receiver/trace/provider/handler/v8/rest/TraceSegmentReportHandler`);
//! - `POST /v3/management/reportProperties` an `InstanceProperties`, `POST
//!   /v3/management/keepAlive` an `InstancePingPkg` (the management receiver's REST
//!   handler);
//! - `POST /v3/logs` a list of `LogData` (the log receiver's REST handler);
//! - `POST /browser/perfData` a `BrowserPerfData`, `POST /browser/errorLog` a
//!   `BrowserErrorLog`, `POST /browser/errorLogs` a list of them (the browser receiver,
//!   where skywalking-client-js reports).
//!
//! In JSON (protobuf's JSON mapping), each object naming its `service`. As Armeria
//! answers: an unknown path 404, another method 405, a body that is not JSON of the
//! expected shape 400; a taken report 200 with an empty `Commands` (`{}`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Each path and whether it takes a list of reports or one.
const PATHS: [(&str, bool); 8] = [
    ("/v3/segment", false),
    ("/v3/segments", true),
    ("/v3/management/reportProperties", false),
    ("/v3/management/keepAlive", false),
    ("/v3/logs", true),
    ("/browser/perfData", false),
    ("/browser/errorLog", false),
    ("/browser/errorLogs", true),
];

#[derive(Default)]
struct Recorded {
    /// (path, service) → reports.
    reports: BTreeMap<(String, String), u64>,
    /// Requests answered other than 200, with their status.
    refused: Vec<(String, u16)>,
}

/// A running OAP HTTP stand-in; stops when dropped.
pub struct OapHttp {
    address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OapHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OapHttp {
    /// Serves HTTP/1.1 and HTTP/2 on `address`.
    pub async fn start_on(address: SocketAddr) -> std::io::Result<OapHttp> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let shared = recorded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(serve(request, &recorded).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(OapHttp {
            address,
            recorded,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Reports taken on `path`, per service.
    pub fn reports(&self, path: &str) -> BTreeMap<String, u64> {
        let recorded = self.recorded.lock().expect("never poisoned");
        recorded
            .reports
            .iter()
            .filter(|((p, _), _)| p == path)
            .map(|((_, service), n)| (service.clone(), *n))
            .collect()
    }

    /// Requests refused, with their status.
    pub fn refused(&self) -> Vec<(String, u16)> {
        self.recorded
            .lock()
            .expect("never poisoned")
            .refused
            .clone()
    }
}

fn answer(status: u16, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    response
}

async fn serve(
    request: Request<hyper::body::Incoming>,
    recorded: &Mutex<Recorded>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let refuse = |status: u16| {
        recorded
            .lock()
            .expect("never poisoned")
            .refused
            .push((path.clone(), status));
        answer(status, r#"{"error":"refused"}"#)
    };
    let Some((_, list)) = PATHS.iter().find(|(p, _)| *p == path) else {
        return refuse(404);
    };
    if request.method() != http::Method::POST {
        return refuse(405);
    }
    let Ok(body) = request.into_body().collect().await else {
        return refuse(400);
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return refuse(400);
    };
    let reports: Vec<&serde_json::Value> = match (&json, list) {
        (serde_json::Value::Array(items), true) => items.iter().collect(),
        (serde_json::Value::Object(_), false) => vec![&json],
        _ => return refuse(400),
    };
    let mut services = Vec::with_capacity(reports.len());
    for report in reports {
        match report.get("service").and_then(|s| s.as_str()) {
            Some(service) => services.push(service.to_string()),
            None => return refuse(400),
        }
    }
    let mut recorded = recorded.lock().expect("never poisoned");
    for service in services {
        *recorded.reports.entry((path.clone(), service)).or_default() += 1;
    }
    answer(200, "{}")
}
