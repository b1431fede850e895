//! Who a client is, and the kubeconfig that says so.

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

/// How a client proves who it is.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A client certificate signed by the cluster CA (PEM).
    Certificate { cert: String, key: String },
    /// A bearer token (a ServiceAccount's, from TokenRequest).
    Token(String),
}

impl Identity {
    pub fn cert_pem(&self) -> &str {
        match self {
            Identity::Certificate { cert, .. } => cert,
            Identity::Token(_) => "",
        }
    }

    pub fn key_pem(&self) -> &str {
        match self {
            Identity::Certificate { key, .. } => key,
            Identity::Token(_) => "",
        }
    }
}

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A kubeconfig reaching `server`, trusting `ca_pem`, and checking the server's certificate
/// as `kubernetes.default.svc` (as a pod does), whatever address `server` has.
pub fn text(server: &str, ca_pem: &str, identity: &Identity) -> String {
    let user = match identity {
        Identity::Certificate { cert, key } => format!(
            "{{client-certificate-data: {}, client-key-data: {}}}",
            base64(cert),
            base64(key)
        ),
        Identity::Token(token) => format!("{{token: {token}}}"),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: \"{server}\", certificate-authority-data: {ca}, tls-server-name: kubernetes.default.svc}}
users:
- name: test
  user: {user}
contexts:
- name: test
  context: {{cluster: test, user: test}}
current-context: test
",
        ca = base64(ca_pem),
    )
}

/// A client from a kubeconfig's text.
pub async fn client(kubeconfig: &str) -> kube::Client {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("a kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client configuration");
    kube::Client::try_from(config).expect("a client")
}

/// A token of the ServiceAccount `namespace/name`, valid for an hour, asked for by `admin`.
pub async fn service_account_token(admin: &kube::Client, namespace: &str, name: &str) -> Identity {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token of ServiceAccount {namespace}/{name}: {e}"));
    Identity::Token(
        answer
            .status
            .expect("TokenRequest answers with a token")
            .token,
    )
}
