//! Serving certificates without cert-manager: when no certificate files are given, a
//! server (the adapter, the operator's admission webhook) keeps a CA and a serving
//! certificate for its Service in a Secret, serves with that certificate, and writes the
//! CA bundle where its caller reads it (an APIService's or a MutatingWebhookConfiguration's
//! `caBundle`), so the API server verifies it without `insecureSkipTLSVerify`.
//!
//! Every replica runs the same loop; the Secret is the one source of truth. Whoever finds
//! it missing or due for renewal writes it with optimistic concurrency (create, or update
//! at the version it read); a replica that loses the race reads the winner's certificates.
//! A new CA is added to the bundle in front of the old one, which stays until it expires,
//! so replicas still serving the old certificate keep being trusted during the change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::PostParams;

use crate::certs::{self, CertError, KeyedCert};
use crate::tls::{TlsError, TlsState};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// The type of the Secret, whoever creates it: the bundle and the chart declare it empty
/// (a `kubernetes.io/tls` Secret must hold a certificate), and a Secret's type can never
/// change, so a server that made it with another type would break the next `kubectl apply`.
pub const SECRET_TYPE: &str = "Opaque";

/// Secret keys, named as in a `kubernetes.io/tls` Secret.
const CA_BUNDLE: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "tls.crt";
const SERVING_KEY: &str = "tls.key";

/// The object whose clients verify the server with the CA bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaBundleTarget {
    /// `spec.caBundle` of this APIService (the aggregator calling the adapter).
    ApiService(String),
    /// `webhooks[].clientConfig.caBundle` of this MutatingWebhookConfiguration (the API
    /// server calling the operator's admission webhook).
    MutatingWebhook(String),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub secret_namespace: String,
    pub secret_name: String,
    /// Whose `caBundle` is kept; `None` publishes the bundle nowhere.
    pub ca_bundle_for: Option<CaBundleTarget>,
    /// `app.kubernetes.io/managed-by` of the Secret.
    pub manager: String,
    /// The names the serving certificate is for; the first is its common name.
    pub dns_names: Vec<String>,
    pub ca_lifetime: Duration,
    pub serving_lifetime: Duration,
    /// How often the Secret and the APIService are looked at again.
    pub check_every: Duration,
}

impl Settings {
    /// For the Service `service` in `namespace`, with the Secret at `secret`.
    pub fn new(service: &str, namespace: &str, secret: (String, String)) -> Settings {
        Settings {
            secret_namespace: secret.0,
            secret_name: secret.1,
            ca_bundle_for: None,
            manager: "skylift".into(),
            dns_names: service_names(service, namespace),
            ca_lifetime: 10 * YEAR,
            serving_lifetime: YEAR,
            check_every: Duration::from_secs(60),
        }
    }
}

/// The names a Service is reached by inside the cluster; the aggregator uses
/// `<service>.<namespace>.svc`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The CAs clients should trust: the current one first, then older ones not yet expired.
    pub ca_bundle: String,
    /// The current CA (its certificate is the first in the bundle).
    pub ca: KeyedCert,
    pub serving: KeyedCert,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    let bytes = data.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|t| !t.trim().is_empty())
}

/// The certificates in a Secret's data; `None` when any part is missing.
pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Option<Stored> {
    let ca_bundle = text(data, CA_BUNDLE)?;
    let ca_cert = certs::certificates(&ca_bundle).into_iter().next()?;
    let ca_cert_pem = pem_of(&ca_cert);
    Some(Stored {
        ca: KeyedCert {
            cert_pem: ca_cert_pem,
            key_pem: text(data, CA_KEY)?,
        },
        serving: KeyedCert {
            cert_pem: text(data, SERVING_CERT)?,
            key_pem: text(data, SERVING_KEY)?,
        },
        ca_bundle,
    })
}

fn pem_of(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// The Secret's data for `stored`.
pub fn to_secret_data(stored: &Stored) -> BTreeMap<String, ByteString> {
    [
        (CA_BUNDLE, &stored.ca_bundle),
        (CA_KEY, &stored.ca.key_pem),
        (SERVING_CERT, &stored.serving.cert_pem),
        (SERVING_KEY, &stored.serving.key_pem),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), ByteString(value.clone().into_bytes())))
    .collect()
}

/// The CA certificates of `bundle` still valid at `now`, as PEM.
fn unexpired(bundle: &str, now: i64) -> String {
    certs::certificates(bundle)
        .iter()
        .filter(|der| certs::validity_der(der).is_ok_and(|v| v.not_after > now))
        .map(|der| pem_of(der))
        .collect()
}

/// Whether `stored` must be replaced at `now`, and with what: `None` to keep it.
pub fn plan(
    stored: Option<&Stored>,
    settings: &Settings,
    now: i64,
) -> Result<Option<Stored>, CertError> {
    let new_authority = || {
        certs::new_authority(
            &format!("{}-ca@{now}", settings.secret_name),
            now,
            settings.ca_lifetime,
        )
    };
    let issue = |ca: &KeyedCert| {
        certs::issue_serving(ca, &settings.dns_names, now, settings.serving_lifetime)
    };
    let Some(stored) = stored else {
        let ca = new_authority()?;
        return Ok(Some(Stored {
            ca_bundle: ca.cert_pem.clone(),
            serving: issue(&ca)?,
            ca,
        }));
    };
    let ca_due = !certs::validity(&stored.ca.cert_pem).is_ok_and(|v| !v.renewal_due(now));
    if ca_due {
        let ca = new_authority()?;
        return Ok(Some(Stored {
            ca_bundle: format!("{}{}", ca.cert_pem, unexpired(&stored.ca_bundle, now)),
            serving: issue(&ca)?,
            ca,
        }));
    }
    let serving = certs::certificates(&stored.serving.cert_pem);
    let serving_ok = serving.first().is_some_and(|leaf| {
        certs::validity_der(leaf).is_ok_and(|v| !v.renewal_due(now))
            && certs::dns_names(leaf).is_ok_and(|names| names == settings.dns_names)
    });
    if serving_ok {
        return Ok(None);
    }
    Ok(Some(Stored {
        ca_bundle: unexpired(&stored.ca_bundle, now),
        serving: issue(&stored.ca)?,
        ca: stored.ca.clone(),
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("Secret {0}: {1}")]
    Secret(String, kube::Error),
    #[error("another replica wrote Secret {0} first")]
    Conflict(String),
    /// Writing the CA bundle into `<kind> <name>`.
    #[error("{0}: {1}")]
    Publish(String, kube::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// One look at the Secret and the APIService: certificates made or renewed when due,
/// served, and the CA bundle published.
pub async fn reconcile(
    client: &kube::Client,
    settings: &Settings,
    tls: &TlsState,
) -> Result<(), BootstrapError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.secret_namespace);
    let secret_id = format!("{}/{}", settings.secret_namespace, settings.secret_name);
    let existing = secrets
        .get_opt(&settings.secret_name)
        .await
        .map_err(|e| BootstrapError::Secret(secret_id.clone(), e))?;
    let stored = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(from_secret_data);
    let now = chrono::Utc::now().timestamp();
    let stored = match plan(stored.as_ref(), settings, now)? {
        None => stored.expect("plan keeps only what exists"),
        Some(next) => {
            let written = match existing {
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(settings.secret_name.clone()),
                            namespace: Some(settings.secret_namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                settings.manager.clone(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        type_: Some(SECRET_TYPE.into()),
                        data: Some(to_secret_data(&next)),
                        ..Secret::default()
                    };
                    secrets.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // Written at the version read: a concurrent writer makes this a 409.
                    secret.data = Some(to_secret_data(&next));
                    secrets
                        .replace(&settings.secret_name, &PostParams::default(), &secret)
                        .await
                }
            };
            match written {
                Ok(_) => {}
                Err(err) if is_conflict(&err) => return Err(BootstrapError::Conflict(secret_id)),
                Err(err) => return Err(BootstrapError::Secret(secret_id, err)),
            }
            let until = certs::validity(&next.serving.cert_pem)
                .map(|v| chrono::DateTime::from_timestamp(v.not_after, 0).unwrap_or_default())
                .unwrap_or_default();
            tracing::info!(secret = %secret_id, names = ?settings.dns_names, %until, "serving certificate issued");
            next
        }
    };
    tls.set_serving(&stored.serving.cert_pem, &stored.serving.key_pem)?;
    match &settings.ca_bundle_for {
        Some(CaBundleTarget::ApiService(name)) => {
            publish_to_apiservice(client, name, &stored.ca_bundle).await?
        }
        Some(CaBundleTarget::MutatingWebhook(name)) => {
            publish_to_webhook(client, name, &stored.ca_bundle).await?
        }
        None => {}
    }
    Ok(())
}

/// Writes `ca_bundle` into every webhook of the MutatingWebhookConfiguration when it
/// differs.
async fn publish_to_webhook(
    client: &kube::Client,
    name: &str,
    ca_bundle: &str,
) -> Result<(), BootstrapError> {
    let wanted = ByteString(ca_bundle.as_bytes().to_vec());
    publish_into(
        client,
        name,
        |configuration: &mut MutatingWebhookConfiguration| {
            let mut changed = false;
            for webhook in configuration.webhooks.iter_mut().flatten() {
                if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                    webhook.client_config.ca_bundle = Some(wanted.clone());
                    changed = true;
                }
            }
            changed
        },
    )
    .await
}

/// Writes `ca_bundle` into the APIService's `caBundle` when it differs.
async fn publish_to_apiservice(
    client: &kube::Client,
    name: &str,
    ca_bundle: &str,
) -> Result<(), BootstrapError> {
    let wanted = ByteString(ca_bundle.as_bytes().to_vec());
    publish_into(client, name, |apiservice: &mut APIService| {
        let spec = apiservice.spec.get_or_insert_with(Default::default);
        if spec.ca_bundle.as_ref() == Some(&wanted) && spec.insecure_skip_tls_verify != Some(true) {
            return false;
        }
        spec.ca_bundle = Some(wanted);
        // The API server refuses a caBundle together with insecureSkipTLSVerify.
        spec.insecure_skip_tls_verify = None;
        true
    })
    .await
}

/// Reads the cluster-scoped object `name`, lets `set` put the CA bundle in (it answers
/// whether anything changed), and writes it back at the version read: a concurrent writer
/// makes it a conflict, and the next look reads again.
async fn publish_into<K>(
    client: &kube::Client,
    name: &str,
    set: impl FnOnce(&mut K) -> bool,
) -> Result<(), BootstrapError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let what = format!("{} {name}", K::kind(&()));
    let api: Api<K> = Api::all(client.clone());
    let error = |e| BootstrapError::Publish(what.clone(), e);
    let mut object = api.get(name).await.map_err(error)?;
    if !set(&mut object) {
        return Ok(());
    }
    match api.replace(name, &PostParams::default(), &object).await {
        Ok(_) => {
            tracing::info!(object = %what, "caBundle written");
            Ok(())
        }
        Err(err) if is_conflict(&err) => Err(BootstrapError::Conflict(what.clone())),
        Err(err) => Err(error(err)),
    }
}

/// Keeps the certificates current for as long as the server runs.
pub async fn run(client: kube::Client, settings: Settings, tls: Arc<TlsState>) {
    loop {
        let wait = match reconcile(&client, &settings, &tls).await {
            Ok(()) => settings.check_every,
            Err(BootstrapError::Conflict(what)) => {
                tracing::debug!(%what, "lost a write race; reading again");
                Duration::from_millis(200)
            }
            Err(err) => {
                tracing::warn!(error = %err, "serving certificate bootstrap; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn settings() -> Settings {
        let mut settings = Settings::new(
            "skylift-adapter",
            "skylift-system",
            ("skylift-system".into(), "skylift-adapter-tls".into()),
        );
        settings.ca_lifetime = Duration::from_secs(30 * DAY as u64);
        settings.serving_lifetime = Duration::from_secs(3 * DAY as u64);
        settings
    }

    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_missing_secret_gets_a_ca_and_a_serving_certificate_that_are_kept() {
        let settings = settings();
        let made = plan(None, &settings, NOW).unwrap().unwrap();
        assert_eq!(made.ca_bundle, made.ca.cert_pem);
        let round_trip = from_secret_data(&to_secret_data(&made)).unwrap();
        assert_eq!(round_trip, made);
        assert_eq!(plan(Some(&made), &settings, NOW + DAY).unwrap(), None);
        let leaf = certs::certificates(&made.serving.cert_pem).remove(0);
        assert_eq!(
            certs::dns_names(&leaf).unwrap()[0],
            "skylift-adapter.skylift-system.svc"
        );
    }

    #[test]
    fn the_serving_certificate_is_renewed_by_the_same_ca_in_its_last_third() {
        let settings = settings();
        let made = plan(None, &settings, NOW).unwrap().unwrap();
        let renewed = plan(Some(&made), &settings, NOW + 2 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(renewed.ca, made.ca);
        assert_eq!(renewed.ca_bundle, made.ca_bundle);
        assert_ne!(renewed.serving, made.serving);
        let mut other_names = settings.clone();
        other_names.dns_names = super::service_names("renamed", "skylift-system");
        assert!(plan(Some(&made), &other_names, NOW).unwrap().is_some());
    }

    #[test]
    fn a_new_ca_is_trusted_beside_the_old_one_until_the_old_one_expires() {
        let settings = settings();
        let made = plan(None, &settings, NOW).unwrap().unwrap();
        let rotated = plan(Some(&made), &settings, NOW + 21 * DAY)
            .unwrap()
            .unwrap();
        assert_ne!(rotated.ca, made.ca);
        let bundle = certs::certificates(&rotated.ca_bundle);
        assert_eq!(bundle.len(), 2, "new CA first, the old one kept");
        assert_eq!(pem_of(&bundle[0]), rotated.ca.cert_pem);
        assert_eq!(pem_of(&bundle[1]), made.ca.cert_pem);
        // Once the old CA has expired, the next renewal drops it.
        let later = plan(Some(&rotated), &settings, NOW + 31 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(certs::certificates(&later.ca_bundle).len(), 1);
    }

    #[test]
    fn a_secret_missing_a_part_is_not_read() {
        let made = plan(None, &settings(), NOW).unwrap().unwrap();
        let mut data = to_secret_data(&made);
        data.remove(SERVING_KEY);
        assert_eq!(from_secret_data(&data), None);
    }

    #[test]
    fn the_ca_is_read_back_as_it_was_written() {
        let made = plan(None, &settings(), NOW).unwrap().unwrap();
        let der = certs::certificates(&made.ca.cert_pem).remove(0);
        assert_eq!(pem_of(&der), made.ca.cert_pem.replace("\r\n", "\n"));
    }
}
