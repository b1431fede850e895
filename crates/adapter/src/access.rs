//! Who may call, decided by the cluster as k8s.io/apiserver delegates it: the front-proxy
//! settings watched in `kube-system/extension-apiserver-authentication`, bearer tokens
//! checked with `TokenReview`, and every request authorized with a `SubjectAccessReview`.
//! Token reviews and decisions are kept for a short while, so the HPA's reads every 15 s
//! cost the API server a review per interval, not one per read.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::watcher;

use crate::auth::{self, AUTHENTICATION_CONFIGMAP, Attributes, FrontProxy, Identity};
use crate::cache::Cache;
use crate::tls::TlsState;

pub use skylift_certs::serve::ClientCert;

/// An authorizer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the front proxy's certificate (CN {0:?}) is not among requestheader-allowed-names")]
    FrontProxyNotAllowed(String),
    #[error("the front proxy's request names no user")]
    NoUser,
    #[error("the token could not be reviewed: {0}")]
    TokenReview(String),
    #[error("the request could not be authorized: {0}")]
    AccessReview(String),
}

pub struct Access {
    client: kube::Client,
    front_proxy: RwLock<Option<Arc<FrontProxy>>>,
    tokens: Cache<String, Result<Option<Identity>, AccessError>>,
    decisions: Cache<(Identity, Attributes), Result<Decision, AccessError>>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Access {
    /// `ttl`: how long token reviews and authorization decisions are kept.
    pub fn new(client: kube::Client, ttl: Duration) -> Arc<Access> {
        Arc::new(Access {
            client,
            front_proxy: RwLock::new(None),
            tokens: Cache::new(ttl),
            decisions: Cache::new(ttl),
        })
    }

    pub fn set_front_proxy(&self, front_proxy: Option<FrontProxy>) {
        *self.front_proxy.write().expect("never poisoned") = front_proxy.map(Arc::new);
    }

    /// The caller: by front-proxy certificate and headers, else by bearer token; `None`
    /// for an anonymous caller.
    pub async fn authenticate(
        &self,
        cert: &ClientCert,
        headers: &HeaderMap,
    ) -> Result<Option<Identity>, AccessError> {
        let front_proxy = self.front_proxy.read().expect("never poisoned").clone();
        // The TLS layer accepted the certificate only if it chains to the front-proxy CA.
        if let (Some(common_name), Some(front_proxy)) = (&cert.common_name, front_proxy) {
            if !front_proxy.allows(common_name) {
                return Err(AccessError::FrontProxyNotAllowed(common_name.clone()));
            }
            return front_proxy
                .identity(headers)
                .map(Some)
                .ok_or(AccessError::NoUser);
        }
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let client = self.client.clone();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        self.tokens
            .get(token.to_string(), move || {
                async move {
                    let answer = Api::<TokenReview>::all(client)
                        .create(&PostParams::default(), &review)
                        .await
                        .map_err(|e| AccessError::TokenReview(e.to_string()))?;
                    let status = answer.status.unwrap_or_default();
                    if status.authenticated != Some(true) {
                        return Ok(None);
                    }
                    let user = status.user.unwrap_or_default();
                    Ok(Some(Identity {
                        user: user.username.unwrap_or_default(),
                        groups: user.groups.unwrap_or_default(),
                        extra: user.extra.unwrap_or_default().into_iter().collect(),
                    }))
                }
                .boxed()
            })
            .await
    }

    /// Whether `identity` may do what `attributes` say, as the cluster's authorizers decide.
    pub async fn authorize(
        &self,
        identity: &Identity,
        attributes: &Attributes,
    ) -> Result<Decision, AccessError> {
        let client = self.client.clone();
        let key = (identity.clone(), attributes.clone());
        let asked = key.clone();
        self.decisions
            .get(key, move || {
                // Built only when the review is sent, not on every cached decision.
                let review = auth::access_review(&asked.0, &asked.1);
                async move {
                    let answer = Api::<SubjectAccessReview>::all(client)
                        .create(&PostParams::default(), &review)
                        .await
                        .map_err(|e| AccessError::AccessReview(e.to_string()))?;
                    let status = answer.status.unwrap_or_default();
                    Ok(Decision {
                        allowed: status.allowed && status.denied != Some(true),
                        reason: status.reason.unwrap_or_default(),
                    })
                }
                .boxed()
            })
            .await
    }
}

/// Keeps the front-proxy settings (and so the CA client certificates are verified against)
/// in step with `kube-system/extension-apiserver-authentication`. `loaded` turns true once
/// the ConfigMap has been read (or found missing) the first time.
pub async fn watch_front_proxy(
    client: kube::Client,
    access: Arc<Access>,
    tls: Arc<TlsState>,
    loaded: tokio::sync::watch::Sender<bool>,
) {
    let (namespace, name) = AUTHENTICATION_CONFIGMAP;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).boxed();
    let apply = |configmap: Option<ConfigMap>| {
        let data = configmap.and_then(|c| c.data).unwrap_or_default();
        match auth::front_proxy(&data) {
            Ok(front_proxy) => {
                let ca = front_proxy.as_ref().map(|f| f.client_ca.clone());
                if let Err(err) = tls.set_client_ca(ca.as_deref()) {
                    tracing::error!(error = %err, "the requestheader CA in {namespace}/{name} is unusable; keeping the previous one");
                    return;
                }
                if front_proxy.is_none() {
                    tracing::warn!(
                        "{namespace}/{name} has no requestheader-client-ca-file: the aggregator cannot be authenticated"
                    );
                }
                access.set_front_proxy(front_proxy);
            }
            Err(err) => tracing::error!(error = %err, "front-proxy settings not applied"),
        }
    };
    // Whether the (re)list under way has found the ConfigMap: a relist reports what
    // exists, not what went away while the watch was down.
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(configmap)) => apply(Some(configmap)),
            Ok(watcher::Event::InitApply(configmap)) => {
                listed = true;
                apply(Some(configmap));
            }
            Ok(watcher::Event::Delete(_)) => apply(None),
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitDone) => {
                if !listed {
                    apply(None);
                }
                loaded.send_if_modified(|done| !std::mem::replace(done, true));
            }
            Err(err) => {
                tracing::warn!(error = %err, "watching {namespace}/{name}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer(&headers), Some("abc.def"));
        headers.insert("authorization", HeaderValue::from_static("bearer  xyz "));
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", HeaderValue::from_static("Basic dTpw"));
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
