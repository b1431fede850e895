//! Pure computation of status conditions from what was observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use skylift_api::common::condition;

/// Something that stops a resource from working as declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason, e.g. `OAPServerNotFound`.
    pub reason: &'static str,
    /// What is wrong and what to do, for `kubectl describe`.
    pub message: String,
}

/// Replica counts of a workload as its Deployment reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment controller has seen the latest Deployment spec.
    pub observed: bool,
}

impl Rollout {
    pub fn of(deployment: Option<&Deployment>, desired: i32) -> Self {
        let Some(deployment) = deployment else {
            return Rollout {
                desired,
                ..Rollout::default()
            };
        };
        let status = deployment.status.clone().unwrap_or_default();
        Rollout {
            desired,
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.is_some()
                && status.observed_generation >= deployment.metadata.generation,
        }
    }

    pub fn of_stateful_set(
        set: Option<&k8s_openapi::api::apps::v1::StatefulSet>,
        desired: i32,
    ) -> Self {
        let Some(set) = set else {
            return Rollout {
                desired,
                ..Rollout::default()
            };
        };
        let status = set.status.clone().unwrap_or_default();
        Rollout {
            desired,
            replicas: status.replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.is_some()
                && status.observed_generation >= set.metadata.generation,
        }
    }

    /// A DaemonSet wants one pod per eligible node: its controller's count is the desired
    /// one.
    pub fn of_daemon_set(set: Option<&k8s_openapi::api::apps::v1::DaemonSet>) -> Self {
        let Some(set) = set else {
            return Rollout::default();
        };
        let status = set.status.clone().unwrap_or_default();
        Rollout {
            desired: status.desired_number_scheduled,
            replicas: status.current_number_scheduled,
            ready: status.number_ready,
            updated: status.updated_number_scheduled.unwrap_or(0),
            observed: status.observed_generation.is_some()
                && status.observed_generation >= set.metadata.generation,
        }
    }

    fn settled(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.replicas == self.desired
            && self.ready >= self.desired
    }
}

/// What the conditions are computed from.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub rollout: Rollout,
    /// Published upstream count, for pools (None for OAPServer).
    pub upstreams: Option<usize>,
    pub problems: &'a [Problem],
}

/// `Ready`, `Progressing` and `Degraded`, keeping each condition's last transition time
/// unless its status changes.
pub fn conditions(previous: &[Condition], observed: &Observed<'_>, now: Time) -> Vec<Condition> {
    let rollout = observed.rollout;
    let no_upstreams = observed.upstreams == Some(0);

    let degraded = match observed.problems.first() {
        Some(problem) => ("True", problem.reason, problem.message.clone()),
        None if no_upstreams => (
            "True",
            "NoReadyUpstreams",
            "no upstream endpoint is ready; the pool cannot forward data".to_string(),
        ),
        None => (
            "False",
            "AsExpected",
            "nothing stands in the way".to_string(),
        ),
    };
    let progressing = if rollout.settled() {
        (
            "False",
            "Stable",
            format!(
                "{} of {} replicas updated and ready",
                rollout.ready, rollout.desired
            ),
        )
    } else if rollout.replicas != rollout.desired {
        (
            "True",
            "Scaling",
            format!(
                "scaling from {} to {} replicas",
                rollout.replicas, rollout.desired
            ),
        )
    } else {
        (
            "True",
            "RollingOut",
            format!(
                "{} of {} replicas updated, {} ready",
                rollout.updated, rollout.desired, rollout.ready
            ),
        )
    };
    let ready = if !observed.problems.is_empty() {
        ("False", degraded.1, degraded.2.clone())
    } else if no_upstreams {
        ("False", "NoReadyUpstreams", degraded.2.clone())
    } else if rollout.ready < rollout.desired {
        (
            "False",
            "ReplicasNotReady",
            format!("{} of {} replicas ready", rollout.ready, rollout.desired),
        )
    } else {
        (
            "True",
            "AllReplicasReady",
            format!("{} of {} replicas ready", rollout.ready, rollout.desired),
        )
    };

    [
        (condition::READY, ready),
        (condition::PROGRESSING, progressing),
        (condition::DEGRADED, degraded),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: observed.generation,
            last_transition_time,
        }
    })
    .collect()
}

/// The conditions after a reconcile failed (`reason`, `message`): `Degraded` says so,
/// `Ready` and `Progressing` stay as they were (what runs keeps running), and a resource
/// that never got as far as a status is not Ready. `None` when they already say so.
pub fn failed(
    previous: &[Condition],
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> Option<Vec<Condition>> {
    let already = previous.iter().any(|c| {
        c.type_ == condition::DEGRADED
            && c.status == "True"
            && c.reason == reason
            && c.message == message
    });
    if already {
        return None;
    }
    let mut conditions: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != condition::DEGRADED)
        .cloned()
        .collect();
    if !conditions.iter().any(|c| c.type_ == condition::READY) {
        conditions.push(Condition {
            type_: condition::READY.into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        });
    }
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == condition::DEGRADED && c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    conditions.push(Condition {
        type_: condition::DEGRADED.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    });
    Some(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reconcile_is_degraded_once_and_keeps_what_runs_ready() {
        let healthy = conditions(
            &[],
            &Observed {
                generation: Some(2),
                rollout: Rollout {
                    desired: 1,
                    replicas: 1,
                    ready: 1,
                    updated: 1,
                    observed: true,
                },
                upstreams: None,
                problems: &[],
            },
            time(100),
        );
        let failed_once = failed(
            &healthy,
            "ApplyFailed",
            "applying Deployment oap: invalid",
            Some(3),
            time(200),
        )
        .unwrap();
        let degraded = find(&failed_once, condition::DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ApplyFailed")
        );
        assert_eq!(degraded.message, "applying Deployment oap: invalid");
        assert_eq!(degraded.last_transition_time, time(200));
        assert_eq!(
            find(&failed_once, condition::READY).status,
            "True",
            "still running"
        );
        assert_eq!(failed_once.len(), 3);
        // Retried with the same failure: nothing to write.
        assert_eq!(
            failed(
                &failed_once,
                "ApplyFailed",
                "applying Deployment oap: invalid",
                Some(3),
                time(300)
            ),
            None
        );
        // Another failure: reported, still degraded since the first.
        let other = failed(
            &failed_once,
            "StatusFailed",
            "writing the status: conflict",
            Some(3),
            time(300),
        )
        .unwrap();
        assert_eq!(
            find(&other, condition::DEGRADED).last_transition_time,
            time(200)
        );
        // A resource that never had a status is not Ready either.
        let first = failed(
            &[],
            "ApplyFailed",
            "applying Service x: forbidden",
            Some(1),
            time(5),
        )
        .unwrap();
        assert_eq!(find(&first, condition::READY).status, "False");
        assert_eq!(find(&first, condition::READY).reason, "ApplyFailed");
    }

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn settled(n: i32) -> Rollout {
        Rollout {
            desired: n,
            replicas: n,
            ready: n,
            updated: n,
            observed: true,
        }
    }

    #[test]
    fn a_settled_pool_with_upstreams_is_ready() {
        let observed = Observed {
            generation: Some(2),
            rollout: settled(2),
            upstreams: Some(3),
            problems: &[],
        };
        let conditions = conditions(&[], &observed, time(10));
        assert_eq!(find(&conditions, "Ready").status, "True");
        assert_eq!(find(&conditions, "Progressing").status, "False");
        assert_eq!(find(&conditions, "Degraded").status, "False");
        assert!(conditions.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn a_missing_oapserver_degrades_with_its_reason() {
        let problems = [Problem {
            reason: "OAPServerNotFound",
            message: "OAPServer \"x\" not found".into(),
        }];
        let observed = Observed {
            generation: Some(1),
            rollout: settled(1),
            upstreams: Some(0),
            problems: &problems,
        };
        let conditions = conditions(&[], &observed, time(10));
        let degraded = find(&conditions, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "OAPServerNotFound")
        );
        assert_eq!(find(&conditions, "Ready").status, "False");
    }

    #[test]
    fn scaling_is_progressing_and_transition_times_only_move_on_change() {
        let scaling = Rollout {
            desired: 3,
            replicas: 2,
            ready: 2,
            updated: 2,
            observed: true,
        };
        let first = conditions(
            &[],
            &Observed {
                generation: Some(1),
                rollout: scaling,
                upstreams: None,
                problems: &[],
            },
            time(10),
        );
        assert_eq!(find(&first, "Progressing").reason, "Scaling");
        let again = conditions(
            &first,
            &Observed {
                generation: Some(1),
                rollout: scaling,
                upstreams: None,
                problems: &[],
            },
            time(20),
        );
        assert_eq!(again, first, "nothing changed, so nothing moves");
        let done = conditions(
            &again,
            &Observed {
                generation: Some(1),
                rollout: settled(3),
                upstreams: None,
                problems: &[],
            },
            time(30),
        );
        assert_eq!(find(&done, "Progressing").last_transition_time, time(30));
        assert_eq!(find(&done, "Degraded").last_transition_time, time(10));
    }
}
