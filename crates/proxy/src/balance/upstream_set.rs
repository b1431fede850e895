//! The set of upstreams and where it comes from: `--upstream HOST:PORT` flags, a watched
//! `--upstreams-file` in the operator's `endpoints.json` format, or (through the same
//! [`UpstreamSet`]) the operator's ConfigMap. Senders read the current set as an immutable
//! snapshot; a change replaces the snapshot and wakes whoever waits for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skylift_api::{UpstreamEndpoint, UpstreamEndpoints};
use tokio::sync::watch;

use crate::balance::route::Upstream;

/// Why an upstream list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an endpoint list ({{\"endpoints\":[{{\"address\":\"host:port\",\"weight\":1}}]}}): {source}"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("upstream {0:?} is not HOST:PORT")]
    Address(String),
}

/// Checks `HOST:PORT` (`[v6]:port` for IPv6).
pub(crate) fn parse_address(address: &str) -> Result<String, UpstreamsError> {
    let bad = || UpstreamsError::Address(address.to_string());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(address.to_string())
}

/// The upstreams of an endpoint document that take new work, in its order, without
/// duplicates. Draining endpoints are left out: work already sent to them finishes (the
/// client keeps their connections while streams are open), nothing new goes there.
pub(crate) fn from_endpoints(document: &UpstreamEndpoints) -> Vec<Upstream> {
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(document.endpoints.len());
    for UpstreamEndpoint {
        address,
        weight,
        draining,
        ..
    } in &document.endpoints
    {
        if !draining && !upstreams.iter().any(|u| u.address == *address) {
            upstreams.push(Upstream {
                address: address.clone(),
                weight: *weight,
            });
        }
    }
    upstreams
}

/// The draining endpoints of a document (and not also listed as taking work).
pub fn draining(document: &UpstreamEndpoints) -> Vec<String> {
    draining_besides(document, &from_endpoints(document))
}

/// The draining endpoints of a document that are not among `routable`, each once.
fn draining_besides(document: &UpstreamEndpoints, routable: &[Upstream]) -> Vec<String> {
    let mut draining: Vec<String> = Vec::new();
    for endpoint in document.endpoints.iter().filter(|e| e.draining) {
        let address = &endpoint.address;
        if !routable.iter().any(|u| u.address == *address) && !draining.contains(address) {
            draining.push(address.clone());
        }
    }
    draining
}

/// Reads an endpoint document from a file.
pub(crate) fn read_file(path: &Path) -> Result<UpstreamEndpoints, UpstreamsError> {
    let text = std::fs::read_to_string(path).map_err(|source| UpstreamsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let document = UpstreamEndpoints::from_json(&text).map_err(|source| UpstreamsError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(document)
}

/// The upstreams not among those `tried` (addresses), for a retry elsewhere.
pub(crate) fn untried<T: AsRef<str>>(upstreams: &[Upstream], tried: &[T]) -> Vec<Upstream> {
    upstreams
        .iter()
        .filter(|u| !tried.iter().any(|t| t.as_ref() == u.address))
        .cloned()
        .collect()
}

/// What changed between two upstream sets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Marked draining since the last document.
    pub draining: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.draining.is_empty()
    }
}

pub(crate) fn diff(before: &[Upstream], after: &[Upstream]) -> Change {
    Change {
        added: after
            .iter()
            .filter(|a| !before.iter().any(|b| b.address == a.address))
            .map(|a| a.address.clone())
            .collect(),
        removed: before
            .iter()
            .filter(|b| !after.iter().any(|a| a.address == b.address))
            .map(|b| b.address.clone())
            .collect(),
        draining: Vec::new(),
    }
}

/// The current upstreams, shared by everyone that routes.
#[derive(Clone)]
pub struct UpstreamSet {
    current: watch::Sender<Arc<Vec<Upstream>>>,
    /// Endpoints listed as draining (for metrics and logs; they get no new work).
    draining: Arc<std::sync::Mutex<Vec<String>>>,
}

impl UpstreamSet {
    pub fn new(initial: Vec<Upstream>) -> Self {
        UpstreamSet {
            current: watch::Sender::new(Arc::new(initial)),
            draining: Arc::default(),
        }
    }

    /// A set made from an endpoint document.
    pub(crate) fn of_document(document: &UpstreamEndpoints) -> Self {
        let set = UpstreamSet::new(Vec::new());
        set.publish(document);
        set
    }

    /// Replaces the set with an endpoint document's, returning what changed; upstreams
    /// marked draining leave the set as removed ones do, and are reported as draining.
    pub fn publish(&self, document: &UpstreamEndpoints) -> Change {
        let routable = from_endpoints(document);
        let draining = draining_besides(document, &routable);
        let newly_draining: Vec<String> = {
            let mut listed = self.draining.lock().expect("never poisoned");
            let newly = draining
                .iter()
                .filter(|a| !listed.contains(a))
                .cloned()
                .collect();
            *listed = draining;
            newly
        };
        let mut change = self.replace(routable);
        change.removed.retain(|a| !newly_draining.contains(a));
        change.draining = newly_draining;
        change
    }

    /// The endpoints listed as draining.
    pub fn draining(&self) -> Vec<String> {
        self.draining.lock().expect("never poisoned").clone()
    }

    /// The set now.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Upstream>> {
        self.current.borrow().clone()
    }

    /// Replaces the set, returning what changed (nothing is published when nothing did).
    pub fn replace(&self, next: Vec<Upstream>) -> Change {
        let mut change = Change::default();
        self.current.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            change = diff(current, &next);
            *current = Arc::new(next);
            true
        });
        change
    }

    /// Wakes on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Vec<Upstream>>> {
        self.current.subscribe()
    }
}

/// Logs what changed in the upstream set, if anything.
pub(crate) fn log_change(change: &Change) {
    if !change.is_empty() {
        tracing::info!(added = ?change.added, removed = ?change.removed, draining = ?change.draining, "upstreams changed");
    }
}

/// Keeps `set` equal to the file at `path`, checking every `every` (250 ms keeps a change
/// well within a second). An unreadable or invalid file keeps the last good set and is
/// reported through `on_error`.
pub(crate) async fn follow_file(
    set: UpstreamSet,
    path: PathBuf,
    every: Duration,
    on_error: impl Fn(&UpstreamsError),
) {
    // `None`: not looked at yet; `Some(None)`: missing; `Some(Some(stamp))`: seen as it was then.
    let mut seen: Option<Option<(SystemTime, u64)>> = None;
    loop {
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        // Each new state of the file is read (and an error reported) once.
        if seen != Some(stamp) {
            match read_file(&path) {
                Ok(document) => log_change(&set.publish(&document)),
                Err(err) => on_error(&err),
            }
            seen = Some(stamp);
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(address: &str, weight: u32) -> Upstream {
        Upstream {
            address: address.into(),
            weight,
        }
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for good in [
            "oap:11800",
            "10.0.0.1:11800",
            "[fd00::1]:11800",
            "oap.obs.svc.cluster.local:1",
        ] {
            assert!(parse_address(good).is_ok(), "{good}");
        }
        for bad in [
            "oap",
            "oap:",
            ":11800",
            "oap:0",
            "oap:70000",
            "fd00::1:11800",
            "[nope]:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_operators_document_becomes_the_upstream_set() {
        let document = UpstreamEndpoints::from_json(
            r#"{"endpoints":[{"address":"10.1.2.3:11800","weight":1,"pod":"oap-7c9f-x2"},
                             {"address":"10.1.2.4:11800","weight":3},
                             {"address":"10.1.2.3:11800","weight":1},
                             {"address":"10.1.2.5:11800","weight":1,"draining":true}]}"#,
        )
        .unwrap();
        assert_eq!(
            from_endpoints(&document),
            vec![up("10.1.2.3:11800", 1), up("10.1.2.4:11800", 3)]
        );
        assert_eq!(draining(&document), ["10.1.2.5:11800"]);
    }

    #[test]
    fn an_endpoint_marked_draining_leaves_the_set_and_is_reported_as_draining() {
        let document = |text: &str| UpstreamEndpoints::from_json(text).unwrap();
        let set = UpstreamSet::of_document(&document(
            r#"{"endpoints":[{"address":"a:1","weight":1},{"address":"b:1","weight":1}]}"#,
        ));
        let change = set.publish(&document(
            r#"{"endpoints":[{"address":"a:1","weight":1},{"address":"b:1","weight":1,"draining":true}]}"#,
        ));
        assert_eq!(
            change,
            Change {
                added: vec![],
                removed: vec![],
                draining: vec!["b:1".into()]
            }
        );
        assert_eq!(*set.snapshot(), vec![up("a:1", 1)]);
        assert_eq!(set.draining(), ["b:1"]);
        // Then gone from the document: nothing more to report, nothing draining.
        let change = set.publish(&document(r#"{"endpoints":[{"address":"a:1","weight":1}]}"#));
        assert!(change.is_empty(), "{change:?}");
        assert!(set.draining().is_empty());
    }

    #[test]
    fn replacing_the_set_reports_what_changed_and_only_publishes_changes() {
        let set = UpstreamSet::new(vec![up("a:1", 1), up("b:1", 1)]);
        let mut changes = set.subscribe();
        changes.mark_unchanged();
        assert_eq!(
            set.replace(vec![up("a:1", 1), up("b:1", 1)]),
            Change::default()
        );
        assert!(!changes.has_changed().unwrap());
        let change = set.replace(vec![up("b:1", 1), up("c:1", 1)]);
        assert_eq!(
            change,
            Change {
                added: vec!["c:1".into()],
                removed: vec!["a:1".into()],
                draining: vec![],
            }
        );
        assert!(changes.has_changed().unwrap());
        assert_eq!(set.snapshot().len(), 2);
    }

    #[tokio::test]
    async fn a_changed_file_is_followed_and_a_broken_one_keeps_the_last_good_set() {
        let dir = std::env::temp_dir().join(format!("skylift-upstreams-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.json");
        std::fs::write(&path, "{").unwrap();
        let set = UpstreamSet::new(Vec::new());
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let follower = {
            let (set, path, errors) = (set.clone(), path.clone(), errors.clone());
            tokio::spawn(follow_file(
                set,
                path,
                Duration::from_millis(20),
                move |e| errors.lock().unwrap().push(e.to_string()),
            ))
        };
        let wait_for_error = |n: usize| {
            let errors = errors.clone();
            tokio::time::timeout(Duration::from_secs(1), async move {
                while errors.lock().unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        wait_for_error(1)
            .await
            .expect("a file that is broken from the start is reported");
        let mut changes = set.subscribe();
        std::fs::write(&path, r#"{"endpoints":[{"address":"a:1","weight":1}]}"#).unwrap();
        tokio::time::timeout(Duration::from_secs(1), changes.wait_for(|s| s.len() == 1))
            .await
            .unwrap()
            .unwrap();

        std::fs::write(
            &path,
            r#"{"endpoints":[{"address":"a:1","weight":1},{"address":"b:1","weight":2}]}"#,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(1), changes.wait_for(|s| s.len() == 2))
            .await
            .unwrap()
            .unwrap();

        std::fs::write(&path, "not json at all, and longer than before").unwrap();
        wait_for_error(2)
            .await
            .expect("a broken update is reported");
        assert_eq!(set.snapshot().len(), 2, "the last good set stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let errors = errors.lock().unwrap().clone();
        assert_eq!(
            errors.len(),
            2,
            "each broken state is reported once: {errors:?}"
        );
        assert!(
            errors[1].contains("is not an endpoint list"),
            "{}",
            errors[1]
        );
        follower.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
