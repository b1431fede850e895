//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run
//! and only one reconciles.
//!
//! The algorithm is client-go's `leaderelection`: a replica never compares another's
//! `renewTime` with its own clock (the two clocks may disagree by minutes). It remembers
//! when *it* last saw the Lease record change, on its own monotonic clock, and takes the
//! Lease only once the record has stood still for a whole lease duration. The leader gives
//! up when it could not renew within the renew deadline, which is shorter than the lease
//! duration, so it stops reconciling before any standby can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

/// Where the Lease lives and the election's timings (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long standbys wait after the Lease last changed before taking it.
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it gives up; below `duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys look again.
    pub retry_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leadership lost: {0}")]
    Lost(String),
    #[error(
        "the Lease's namespace {0:?} does not exist: create it, or point --leader-election-namespace at one that does"
    )]
    NamespaceMissing(String),
    #[error("talking to the API server about the Lease: {0}")]
    Api(#[from] kube::Error),
}

/// What a Lease says about who leads.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseState {
    Ours,
    HeldByOther(String),
    Free,
}

/// The parts of a Lease record whose change shows its holder is alive (client-go compares
/// the whole record).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    acquire_time: Option<Timestamp>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration_seconds: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone(),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

/// What one replica has seen of the Lease: the record and when, on its own clock, it last
/// changed. Pure: times are given.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Looks at the Lease as read at `now` (local monotonic time) and says who leads.
    pub fn judge(&mut self, spec: Option<&LeaseSpec>, identity: &str, now: Instant) -> LeaseState {
        let Some(spec) = spec else {
            self.seen = None;
            return LeaseState::Free;
        };
        let record = Record::of(spec);
        let changed_at = match &self.seen {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.seen = Some((record, changed_at));
        let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
            return LeaseState::Free;
        };
        if holder == identity {
            return LeaseState::Ours;
        }
        let seconds = spec.lease_duration_seconds.unwrap_or(15).max(1);
        let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(15));
        if changed_at + duration > now {
            LeaseState::HeldByOther(holder.to_string())
        } else {
            LeaseState::Free
        }
    }

    /// Our own write is what we saw last: the clock restarts from it.
    fn wrote(&mut self, spec: &LeaseSpec, now: Instant) {
        self.seen = Some((Record::of(spec), now));
    }
}

/// Takes part in the election; returns once this process holds the Lease (and the
/// observer that holding goes on with).
pub async fn acquire(client: Client, settings: &LeaseSettings) -> Result<Observer, LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observer = Observer::default();
    let mut announced = false;
    loop {
        // An attempt the API server does not answer is given up after the renew deadline,
        // as client-go bounds it, and tried again.
        let attempt = tokio::time::timeout(
            settings.renew_deadline,
            try_hold(&api, settings, &mut observer),
        )
        .await
        .unwrap_or_else(|_| Err(unanswered(settings)));
        match attempt {
            Ok(true) => {
                tracing::info!(lease = %settings.name, identity = %settings.identity, "became leader");
                return Ok(observer);
            }
            Ok(false) => {}
            // Someone else wrote the Lease first; look again.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            // Creating in a namespace that is not there: nobody can ever lead here.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(LeaderError::NamespaceMissing(settings.namespace.clone()));
            }
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
/// replica never reconciles without holding the Lease). Every attempt is bounded by what
/// is left of the renew deadline: a Lease call the API server is slow to answer (the rest
/// of the connection working or not) ends the leadership at the deadline, not whenever the
/// call returns, so the leader has stopped before a standby can take over (the lease
/// duration after the Lease last changed).
pub async fn hold(client: Client, settings: LeaseSettings, mut observer: Observer) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut last_renewal = Instant::now();
    loop {
        tokio::time::sleep(settings.retry_every).await;
        let left = settings
            .renew_deadline
            .saturating_sub(last_renewal.elapsed());
        let attempt = tokio::time::timeout(left, try_hold(&api, &settings, &mut observer))
            .await
            .unwrap_or_else(|_| Err(unanswered(&settings)));
        match attempt {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => return LeaderError::Lost("another replica holds the Lease".into()),
            Err(err) if last_renewal.elapsed() < settings.renew_deadline => {
                tracing::warn!(error = %err, "renewing the Lease failed; retrying");
            }
            Err(err) => {
                return LeaderError::Lost(format!(
                    "could not renew within the renew deadline ({:?}): {err}",
                    settings.renew_deadline
                ));
            }
        }
    }
}

/// A Lease call given up on: the API server did not answer in time.
fn unanswered(settings: &LeaseSettings) -> kube::Error {
    kube::Error::Service(
        format!(
            "no answer about Lease {}/{} within the renew deadline ({:?})",
            settings.namespace, settings.name, settings.renew_deadline
        )
        .into(),
    )
}

/// One attempt to take or renew the Lease. The write carries the resourceVersion that was
/// read, so two replicas can never both succeed.
async fn try_hold(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observer: &mut Observer,
) -> Result<bool, kube::Error> {
    let existing = api.get_opt(&settings.name).await?;
    let state = observer.judge(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &settings.identity,
        Instant::now(),
    );
    if let LeaseState::HeldByOther(_) = state {
        return Ok(false);
    }
    // Wall-clock times only inform people reading the Lease; no replica decides on them.
    let now = Timestamp::now();
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
                spec: Some(spec.clone()),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
        Some(mut lease) => {
            lease.spec = Some(spec.clone());
            let name = lease.name_any();
            api.replace(&name, &PostParams::default(), &lease).await?;
        }
    }
    observer.wrote(&spec, Instant::now());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The other replica's Lease as it writes it: renewed at `renewed` by its own clock.
    fn held_by(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_that_keeps_changing_is_respected_and_one_that_stands_still_expires() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let wall = |secs: i64| Timestamp::from_second(1_000_000 + secs).unwrap();
        let mut observer = Observer::default();
        // Renewed every 2 s: held throughout, however long.
        for tick in 0..30 {
            let state = observer.judge(
                Some(&held_by("b", wall(tick * 2))),
                "a",
                at(tick as u64 * 2),
            );
            assert_eq!(state, LeaseState::HeldByOther("b".into()), "tick {tick}");
        }
        // The holder dies at 58 s: the record stands still; free 15 s after it was last seen
        // to change, not before.
        let last = held_by("b", wall(58));
        assert_eq!(
            observer.judge(Some(&last), "a", at(72)),
            LeaseState::HeldByOther("b".into())
        );
        assert_eq!(observer.judge(Some(&last), "a", at(73)), LeaseState::Free);
        assert_eq!(
            observer.judge(Some(&held_by("a", wall(0))), "a", at(74)),
            LeaseState::Ours
        );
        assert_eq!(
            Observer::default().judge(None, "a", at(0)),
            LeaseState::Free
        );
    }

    #[test]
    fn a_skewed_clock_neither_steals_a_live_lease_nor_guards_a_dead_one() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // The leader's clock is an hour behind ours: its renewTime always looks long
        // expired. Comparing it with our clock would take the Lease from a live leader.
        let behind = |secs: i64| Timestamp::from_second(1_000_000 - 3600 + secs).unwrap();
        let mut observer = Observer::default();
        for tick in 0..10 {
            let state = observer.judge(
                Some(&held_by("b", behind(tick * 2))),
                "a",
                at(tick as u64 * 2),
            );
            assert_eq!(state, LeaseState::HeldByOther("b".into()), "tick {tick}");
        }
        // The leader's clock is an hour ahead: its renewTime looks valid for an hour more.
        // Once it stops renewing, the Lease is still free after one lease duration.
        let ahead = held_by("c", Timestamp::from_second(1_000_000 + 3600).unwrap());
        let mut observer = Observer::default();
        assert_eq!(
            observer.judge(Some(&ahead), "a", at(0)),
            LeaseState::HeldByOther("c".into())
        );
        assert_eq!(observer.judge(Some(&ahead), "a", at(16)), LeaseState::Free);
    }

    /// A client whose API server takes every request and never answers.
    fn unanswering_client() -> Client {
        let service = tower::service_fn(|_request: http::Request<kube::client::Body>| {
            futures::future::pending::<
                Result<http::Response<kube::client::Body>, std::convert::Infallible>,
            >()
        });
        Client::new(service, "default")
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_calls_go_unanswered_stops_at_the_renew_deadline() {
        let settings = LeaseSettings {
            namespace: "skylift-system".into(),
            name: "skylift-operator".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        };
        let started = Instant::now();
        let lost = tokio::time::timeout(
            Duration::from_secs(60),
            hold(unanswering_client(), settings.clone(), Observer::default()),
        )
        .await
        .expect("leadership given up, not held while the Lease call hangs");
        let held_for = started.elapsed();
        assert!(
            matches!(&lost, LeaderError::Lost(why) if why.contains("renew deadline")),
            "{lost}"
        );
        // Given up at the deadline (counted from the last renewal), before any standby may
        // take over (the lease duration after the last change it saw).
        assert!(
            held_for >= settings.renew_deadline && held_for < settings.duration,
            "held for {held_for:?}"
        );
    }

    #[test]
    fn our_own_write_restarts_the_clock() {
        let start = Instant::now();
        let mut observer = Observer::default();
        let ours = held_by("a", Timestamp::from_second(1_000_000).unwrap());
        observer.wrote(&ours, start);
        // Another replica took it over (with a write we then read): held from that moment.
        let theirs = held_by("b", Timestamp::from_second(1_000_001).unwrap());
        let later = start + Duration::from_secs(20);
        assert_eq!(
            observer.judge(Some(&theirs), "a", later),
            LeaseState::HeldByOther("b".into())
        );
    }
}
