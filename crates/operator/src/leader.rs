//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run
//! and only one reconciles.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// Where the Lease lives and how long a holder keeps it without renewing.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leadership lost: {0}")]
    Lost(String),
    #[error("talking to the API server about the Lease: {0}")]
    Api(#[from] kube::Error),
}

/// What a Lease says about who leads, at time `now`.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseState {
    Ours,
    HeldByOther(String),
    Free,
}

/// Pure decision: may `identity` take or keep this Lease?
pub fn lease_state(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseState {
    let Some(spec) = spec else {
        return LeaseState::Free;
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return LeaseState::Free;
    };
    if holder == identity {
        return LeaseState::Ours;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match renewed {
        Some(renewed) if renewed + duration > now => LeaseState::HeldByOther(holder.to_string()),
        _ => LeaseState::Free,
    }
}

/// Takes part in the election; returns once this process holds the Lease.
pub async fn acquire(client: Client, settings: &LeaseSettings) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut announced = false;
    loop {
        match try_hold(&api, settings).await {
            Ok(true) => {
                tracing::info!(lease = %settings.name, identity = %settings.identity, "became leader");
                return Ok(());
            }
            Ok(false) => {}
            // Someone else wrote the Lease first; look again.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => tracing::warn!(error = %err, "could not read or write the Lease"),
        }
        if !announced {
            tracing::info!(lease = %settings.name, "another replica leads; standing by");
            announced = true;
        }
        tokio::time::sleep(settings.retry_every).await;
    }
}

/// Renews the Lease forever; returns only when leadership is lost (the caller exits, so a
/// replica never reconciles without holding the Lease).
pub async fn hold(client: Client, settings: LeaseSettings) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(settings.renew_every).await;
        match try_hold(&api, &settings).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return LeaderError::Lost("another replica holds the Lease".into()),
            Err(err) if last_renewal.elapsed() < settings.duration => {
                tracing::warn!(error = %err, "renewing the Lease failed; retrying");
            }
            Err(err) => {
                return LeaderError::Lost(format!(
                    "could not renew within the lease duration: {err}"
                ));
            }
        }
    }
}

/// One attempt to take or renew the Lease. The write carries the resourceVersion that was
/// read, so two replicas can never both succeed.
async fn try_hold(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(&settings.name).await?;
    let state = lease_state(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &settings.identity,
        now,
    );
    if let LeaseState::HeldByOther(_) = state {
        return Ok(false);
    }
    let previous = existing
        .as_ref()
        .and_then(|l| l.spec.clone())
        .unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(settings.duration.as_secs()).unwrap_or(15)),
        acquire_time: if state == LeaseState::Ours {
            previous.acquire_time
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0)
                + i32::from(state != LeaseState::Ours && existing.is_some()),
        ),
        ..LeaseSpec::default()
    };
    match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(mut lease) => {
            lease.spec = Some(spec);
            let name = lease.name_any();
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_secs).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_respected_until_it_expires() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            lease_state(Some(&spec("b", 990)), "a", now),
            LeaseState::HeldByOther("b".into())
        );
        assert_eq!(
            lease_state(Some(&spec("b", 980)), "a", now),
            LeaseState::Free
        );
        assert_eq!(
            lease_state(Some(&spec("a", 990)), "a", now),
            LeaseState::Ours
        );
        assert_eq!(lease_state(None, "a", now), LeaseState::Free);
    }
}
