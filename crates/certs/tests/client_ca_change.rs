//! The aggregator keeps one HTTP/2 connection and sends every request over it. A connection
//! it made before the server knew the front-proxy CA carries no client certificate (the
//! server never asked for one), so every request on it would be unauthenticated for as long
//! as it stays open. When the client CA changes, the listener closes the connections
//! accepted under the old one, and the client's next request arrives with its certificate.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use skylift_certs::certs::{issue_serving, new_authority};
use skylift_certs::serve::{ClientCert, serve};
use skylift_certs::tls::TlsState;
use skylift_testkit::pki::TestCa;

const HOST: &str = "skylift-adapter.skylift-system.svc";

async fn who(Extension(cert): Extension<ClientCert>) -> String {
    cert.common_name.unwrap_or_else(|| "nobody".into())
}

#[tokio::test]
async fn connections_made_before_the_client_ca_was_known_are_closed_when_it_arrives() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = chrono::Utc::now().timestamp();
    let day = Duration::from_secs(86_400);
    let server_ca = new_authority("serving-ca", now, day).unwrap();
    let serving = issue_serving(&server_ca, &[HOST.into()], now, day).unwrap();
    let tls = TlsState::new();
    tls.set_serving(&serving.cert_pem, &serving.key_pem)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        tls.clone(),
        Router::new().route("/who", get(who)),
    ));

    // The aggregator's client: HTTP/2, one pooled connection, its front-proxy certificate
    // presented whenever the server asks for one.
    let front_proxy_ca = TestCa::new("front-proxy-ca");
    let identity = front_proxy_ca.client_identity_pem("front-proxy-client");
    let client = reqwest::Client::builder()
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(server_ca.cert_pem.as_bytes()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .resolve(HOST, address)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://{HOST}:{}/who", address.port());
    let caller = async || -> String {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.text().await.unwrap()
    };
    assert_eq!(
        caller().await,
        "nobody",
        "no client CA yet: no certificate asked"
    );

    tls.set_client_ca(Some(&front_proxy_ca.cert_pem)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = caller().await;
        if seen == "front-proxy-client" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection made before the client CA is still used: the caller is {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
