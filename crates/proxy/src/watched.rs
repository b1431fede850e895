//! Files read again when they change (certificates, tokens from mounted Secrets): the
//! modification time and size of each, looked at periodically. Kubernetes updates a
//! mounted Secret by swapping a symlink, which this sees as a change of the file.

use std::path::PathBuf;
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

/// Calls `changed` whenever one of `paths` changes, looking every `every`. Runs until
/// aborted.
pub async fn on_change(paths: Vec<PathBuf>, every: Duration, mut changed: impl FnMut()) {
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
