//! Files read again when they change (certificates, tokens from mounted Secrets): the
//! modification time and size of each, looked at periodically. Kubernetes updates a
//! mounted Secret by swapping a symlink, which this sees as a change of the file.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// Rebuilds `current` with `build` whenever one of `paths` changes, looking every `every`;
/// a change that cannot be used is logged and the last good value kept. `what` names the
/// files in the logs. Runs until aborted.
pub(crate) async fn reload<T, E: std::fmt::Display>(
    paths: Vec<PathBuf>,
    every: Duration,
    what: &'static str,
    current: &RwLock<T>,
    build: impl Fn() -> Result<T, E>,
) {
    on_change(paths, every, || match build() {
        Ok(value) => {
            *current.write().expect("never poisoned") = value;
            tracing::info!(files = what, "reloaded");
        }
        Err(err) => {
            tracing::warn!(error = %err, files = what, "changed files unusable; keeping the last good ones")
        }
    })
    .await
}

/// Calls `changed` whenever one of `paths` changes, looking every `every`. Runs until
/// aborted.
async fn on_change(paths: Vec<PathBuf>, every: Duration, mut changed: impl FnMut()) {
    let mut last = stamp(&paths);
    loop {
        tokio::time::sleep(every).await;
        let now = stamp(&paths);
        if now != last {
            last = now;
            changed();
        }
    }
}
