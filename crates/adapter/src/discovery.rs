//! Watches `OAPServer`s (cluster-wide, read-only) and keeps the [`Directory`] up to date
//! with each one's HTTP address, so reads can go to the OAP of their namespace.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use skylift_api::oapserver::OAPServer;

use crate::oaps::Directory;

const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// The namespace, name and HTTP address (`http://host:port`) of an `OAPServer`.
fn described(oap: &OAPServer) -> (String, String, Option<String>) {
    let http = oap
        .status
        .as_ref()
        .and_then(|status| status.address.as_ref())
        .and_then(|address| address.http.clone());
    (oap.namespace().unwrap_or_default(), oap.name_any(), http)
}

/// Runs until the process ends; a failing watch (no permission, the CRD not installed) is
/// retried with backoff and logged.
pub async fn watch_oapservers(client: kube::Client, directory: Arc<Directory>) {
    let api: Api<OAPServer> = Api::all(client);
    let mut relisted: Vec<(String, String)> = Vec::new();
    let mut events = watcher(api, watcher::Config::default()).boxed();
    // A cluster without the CRD (the adapter installed alone) or without the permission
    // fails every time: said once, then retried ever more slowly, up to a minute apart.
    let mut failing = false;
    let mut retry = RETRY_FIRST;
    while let Some(event) = events.next().await {
        if event.is_ok() && failing {
            tracing::info!("watching OAPServers again");
            failing = false;
            retry = RETRY_FIRST;
        }
        match event {
            Ok(watcher::Event::Apply(oap)) => {
                let (namespace, name, http) = described(&oap);
                directory.set_server(&namespace, &name, http.as_deref());
            }
            Ok(watcher::Event::Delete(oap)) => {
                let (namespace, name, _) = described(&oap);
                tracing::info!(%namespace, %name, "OAPServer gone");
                directory.remove_server(&namespace, &name);
            }
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(oap)) => {
                let (namespace, name, http) = described(&oap);
                directory.set_server(&namespace, &name, http.as_deref());
                relisted.push((namespace, name));
            }
            // Those that vanished while the watch was down go too.
            Ok(watcher::Event::InitDone) => directory.retain_servers(&relisted),
            Err(err) => {
                if failing {
                    tracing::debug!(error = %err, "watching OAPServers failed again");
                } else {
                    tracing::warn!(error = %err, "watching OAPServers failed; reads name OAPServers in vain until it works (retrying, up to a minute apart)");
                    failing = true;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MOST);
            }
        }
    }
}
