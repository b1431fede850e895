//! Reconciling a `BanyanDB`: its StatefulSet and Services, and its status (whose address
//! the OAPServers referring to it take as their storage targets).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use skylift_api::{BanyanDB, WorkloadStatus};

use super::report::{next_look, publish_changes, sort_results};
use super::workload::report;
use super::{Context, Error};
use crate::build::{banyandb as build, selector_string};
use crate::status::Rollout;

pub async fn reconcile(db: Arc<BanyanDB>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("BanyanDB");
    if db.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = db.uid().unwrap_or_default();
    let namespace = db.namespace().unwrap_or_default();
    let name = db.name_any();
    let objects = build::build(&db);
    let stores = &ctx.stores;
    let results = [
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.grpc_service)
                .await,
        ),
        (
            "Service",
            ctx.apply(&stores.services, &uid, objects.http_service)
                .await,
        ),
        (
            "StatefulSet",
            ctx.apply(&stores.stateful_sets, &uid, objects.stateful_set)
                .await,
        ),
    ];
    let (mut changes, mut problems) = (Vec::new(), Vec::new());
    sort_results(results, &mut changes, &mut problems)?;
    publish_changes(&ctx, db.as_ref(), &changes).await;

    let set: Option<StatefulSet> = stores
        .stateful_sets
        .get(&namespace, &build::workload_name(&name))
        .and_then(|cached| cached.typed());
    let status = WorkloadStatus {
        selector: Some(selector_string(&build::pod_selector(&name))),
        address: Some(build::address(&db)),
        ..WorkloadStatus::default()
    };
    let rollout = Rollout::of_stateful_set(set.as_ref(), db.spec.replicas);
    report(
        &ctx,
        db.as_ref(),
        db.status.as_ref(),
        status,
        rollout,
        &problems,
    )
    .await?;
    Ok(next_look(&problems))
}
