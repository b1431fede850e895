//! Relays between a program and the API server, on a runtime of their own (they outlive any
//! one test's runtime).
//!
//! - [`TcpRelay`]: bytes both ways; [`TcpRelay::freeze`] stops them (every connection,
//!   and new ones, hang as on a partitioned network) until [`TcpRelay::thaw`].
//! - [`HttpRelay`]: terminates TLS as `kubernetes.default.svc` and forwards each request;
//!   [`HttpRelay::hold`] holds back the calls on one kind of object alone (the Lease, say)
//!   while every other call goes through, as when the API server or etcd is slow for one
//!   resource.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::pki::TestCa;

/// The runtime relays run on, alive for the whole test process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("skylift-test-relay")
            .enable_all()
            .build()
            .expect("the relays' runtime")
    })
}

/// Binds `address` on the relays' runtime.
fn bind(address: SocketAddr) -> TcpListener {
    let std_listener =
        std::net::TcpListener::bind(address).unwrap_or_else(|e| panic!("binding {address}: {e}"));
    std_listener.set_nonblocking(true).unwrap();
    let _guard = runtime().enter();
    TcpListener::from_std(std_listener).unwrap()
}

/// Forwards TCP connections from where it listens to `target`.
pub struct TcpRelay {
    pub address: SocketAddr,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on `listen` (port 0: any) and forwards to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> TcpRelay {
        let listener = bind(listen);
        let address = listener.local_addr().unwrap();
        let frozen = watch::Sender::new(false);
        let flag = frozen.clone();
        let task = runtime().spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let flag = flag.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, flag.clone()),
                        pump(server_read, client_write, flag),
                    );
                });
            }
        });
        TcpRelay {
            address,
            frozen,
            task,
        }
    }

    /// Stops every byte, both ways, on every connection; connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, waiting while frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Frozen while waiting for bytes: what arrives now waits for the thaw.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// An HTTP relay in front of the API server: TLS as `kubernetes.default.svc` (signed by
/// the cluster CA), each request forwarded with its headers (bearer tokens pass; client
/// certificates do not), responses streamed back (watches included).
pub struct HttpRelay {
    pub address: SocketAddr,
    /// Requests whose path contains this are held back (none: every request goes).
    held: watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpRelay {
    /// Listens on `listen` and forwards to the API server at `target` (which trusts `ca`).
    pub fn start(listen: SocketAddr, target: SocketAddr, ca: &TestCa) -> HttpRelay {
        let listener = bind(listen);
        let address = listener.local_addr().unwrap();
        let (cert, key) = ca.server_identity(&["kubernetes.default.svc"]);
        let config = Arc::new(server_config(&cert, &key));
        let upstream = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.cert_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let held_paths = watch::Sender::new(None);
        let held = held_paths.clone();
        let base = format!("https://{target}");
        let task = runtime().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let config = config.clone();
                let upstream = upstream.clone();
                let base = base.clone();
                let held = held.subscribe();
                tokio::spawn(async move {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        forward(request, upstream.clone(), base.clone(), held.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpRelay {
            address,
            held: held_paths,
            task,
        }
    }

    /// Holds back every request whose path contains `matching` (`/leases/`,
    /// `namespaces/kube-system/configmaps`) until [`HttpRelay::release`]; the caller sees no
    /// answer meanwhile, and every other request goes through.
    pub fn hold(&self, matching: &str) {
        self.held.send_replace(Some(matching.to_string()));
    }

    pub fn release(&self) {
        self.held.send_replace(None);
    }
}

impl Drop for HttpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(cert: &str, key: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

type RelayBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn forward(
    request: hyper::Request<Incoming>,
    upstream: reqwest::Client,
    base: String,
    mut held: watch::Receiver<Option<String>>,
) -> Result<hyper::Response<RelayBody>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let _ = held
        .wait_for(|held| !held.as_deref().is_some_and(|m| path.contains(m)))
        .await;
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut outgoing = upstream.request(parts.method, format!("{base}{path}"));
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = match outgoing.body(body).send().await {
        Ok(response) => response,
        Err(err) => {
            let body = Full::new(Bytes::from(err.to_string()))
                .map_err(|never| match never {})
                .boxed();
            return Ok(hyper::Response::builder().status(502).body(body).unwrap());
        }
    };
    let mut answer = hyper::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
            answer = answer.header(name, value);
        }
    }
    let chunks = futures::stream::unfold(response, |mut response| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk)), response)),
            Ok(None) => None,
            Err(err) => Some((Err(std::io::Error::other(err)), response)),
        }
    });
    Ok(answer.body(StreamBody::new(chunks).boxed()).unwrap())
}
