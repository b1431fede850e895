//! Leader election between operator processes on the real control plane, judged by the API
//! server's audit log: a leader cut off from the API server (its connection frozen by a
//! relay the test stops) and a leader whose Lease calls alone are held back (everything
//! else it sends goes through) each stop reconciling within the renew deadline and exit, a
//! standby takes over, and no write of the old leader lands after the new one's first.
//! Each replica runs under a ServiceAccount of its own, bound as the chart binds the
//! operator's, so the audit log tells them apart.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;
use skylift_e2e::real::{create, install, namespace, operator_account, start_operator_as};
use skylift_e2e::{Process, Scratch, real_control_plane, wait_for};
use skylift_testkit::cluster::ControlPlane;
use skylift_testkit::cluster::audit;
use skylift_testkit::cluster::relay::{HttpRelay, TcpRelay};

const NS: &str = "leader";
/// The operator's renew deadline and lease duration (its main.rs).
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const LEASE_DURATION: Duration = Duration::from_secs(15);

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "skylift-system")
        .get_opt("skylift-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn wait_holder(client: &kube::Client, identity: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    wait_for(&format!("{identity} holding the Lease"), limit, || async {
        (holder(client).await? == identity).then_some(())
    })
    .await;
    started.elapsed()
}

/// Waits until `operator` stands by (another replica leads).
async fn standing_by(operator: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !operator.output().contains("standing by") {
        assert!(operator.is_running(), "{}", operator.tail(20));
        assert!(
            Instant::now() < deadline,
            "{} never stood by",
            operator.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `operator` has exited, and returns how long that took from `since`, and
/// its output.
async fn exited(operator: &mut Process, since: Instant, limit: Duration) -> Duration {
    while operator.is_running() {
        assert!(
            since.elapsed() < limit,
            "{} still runs {:?} after it lost the API server",
            operator.name,
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    since.elapsed()
}

async fn operator(
    plane: &ControlPlane,
    scratch: &Scratch,
    identity: &str,
    account: &str,
    server: Option<&str>,
) -> Process {
    start_operator_as(
        plane,
        scratch.path(),
        identity,
        account,
        server,
        &[("--webhook", "false".into())],
    )
    .await
}

/// A Satellite; its Deployment shows that the leader reconciled it.
async fn satellite(client: &kube::Client, name: &str) {
    create(
        client,
        NS,
        "Satellite",
        name,
        json!({"upstream": {"addresses": ["oap.example:11800"]}}),
    )
    .await;
}

async fn reconciled(client: &kube::Client, name: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let workload = format!("{name}-satellite");
    wait_for(
        &format!("{name} reconciled"),
        Duration::from_secs(60),
        || async { deployments.get_opt(&workload).await.ok()? },
    )
    .await;
}

/// Waits until `user` has written nothing but its Lease for two seconds, so that no write it decided
/// before a cut-off is still on its way across it (the relay would deliver it at the thaw,
/// and it would read as a write made after the freeze).
async fn settled(plane: &ControlPlane, user: &str) {
    wait_for(
        &format!("{user} settled"),
        Duration::from_secs(60),
        || async {
            let last = plane
                .audit()
                .into_iter()
                // Lease renewals go on all along; a late one is refused (its version is old).
                .filter(|e| e.user == user && e.resource != "leases")
                .filter_map(|e| e.time())
                .max()?;
            let quiet = Timestamp::now().as_millisecond() - last.as_millisecond();
            (quiet >= 2000).then_some(())
        },
    )
    .await;
}

/// The writes `user` made that the API server accepted at or after `since`.
fn writes_since(plane: &ControlPlane, user: &str, since: Timestamp) -> Vec<audit::Event> {
    plane
        .audit()
        .into_iter()
        .filter(|e| e.user == user && e.succeeded())
        .filter(|e| e.time().is_some_and(|t| t >= since))
        .collect()
}

#[tokio::test]
async fn a_leader_cut_off_or_slow_on_its_lease_stops_before_a_standby_takes_over() {
    let plane = real_control_plane!();
    install(plane).await;
    let client = plane.admin().await;
    namespace(plane, NS);
    let scratch = Scratch::new("real-leader");
    let users = [
        operator_account(plane, "leader-a").await,
        operator_account(plane, "leader-b").await,
        operator_account(plane, "leader-c").await,
        operator_account(plane, "leader-d").await,
    ];

    // A leader whose whole connection freezes.
    let relay = TcpRelay::start(([127, 0, 0, 1], 0).into(), plane.address);
    let through_relay = format!("https://{}", relay.address);
    let mut a = operator(plane, &scratch, "a", "leader-a", Some(&through_relay)).await;
    wait_holder(&client, "a", Duration::from_secs(30)).await;
    let mut b = operator(plane, &scratch, "b", "leader-b", None).await;
    standing_by(&mut b).await;
    satellite(&client, "before").await;
    reconciled(&client, "before").await;
    settled(plane, &users[0]).await;

    relay.freeze();
    let frozen = Instant::now();
    let frozen_at = Timestamp::now();
    satellite(&client, "during-freeze").await;
    let a_exit = exited(&mut a, frozen, RENEW_DEADLINE + Duration::from_secs(3)).await;
    assert!(a.output().contains("renew deadline"), "{}", a.tail(10));
    let failover = wait_holder(&client, "b", Duration::from_secs(40)).await + a_exit;
    reconciled(&client, "during-freeze").await;
    // Thawed: whatever the old leader had sent is delivered now; none of it may write.
    relay.thaw();
    satellite(&client, "after-thaw").await;
    reconciled(&client, "after-thaw").await;
    let late = writes_since(plane, &users[0], frozen_at);
    assert!(late.is_empty(), "the frozen leader wrote: {late:#?}");
    println!(
        "frozen connection: the old leader exited {:.1} s after the freeze, the standby led {:.1} s after it",
        a_exit.as_secs_f64(),
        failover.as_secs_f64()
    );

    // A leader whose Lease calls alone are held back, everything else it sends going through.
    let slow = HttpRelay::start(([127, 0, 0, 1], 0).into(), plane.address, &plane.ca);
    let through_slow = format!("https://{}", slow.address);
    let mut c = operator(plane, &scratch, "c", "leader-c", Some(&through_slow)).await;
    standing_by(&mut c).await;
    b.kill();
    wait_holder(&client, "c", LEASE_DURATION + Duration::from_secs(20)).await;
    let mut d = operator(plane, &scratch, "d", "leader-d", None).await;
    standing_by(&mut d).await;

    slow.hold("/leases/");
    let held = Instant::now();
    let held_at = Timestamp::now();
    // Work arrives all along: the old leader would reconcile it if it went on.
    let mut made = 0;
    let mut c_exit = None;
    while holder(&client).await.as_deref() != Some("d") {
        satellite(&client, &format!("while-held-{made}")).await;
        made += 1;
        if c_exit.is_none() && !c.is_running() {
            c_exit = Some(held.elapsed());
        }
        assert!(
            held.elapsed() < Duration::from_secs(60),
            "d never took over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let takeover = held.elapsed();
    let c_exit = match c_exit {
        Some(exit) => exit,
        None => exited(&mut c, held, RENEW_DEADLINE + Duration::from_secs(3)).await,
    };
    assert!(
        c_exit < RENEW_DEADLINE + Duration::from_secs(3),
        "the old leader ran {c_exit:?} after its Lease calls were held"
    );
    assert!(c_exit < takeover, "both led at once");
    assert!(c.output().contains("renew deadline"), "{}", c.tail(10));
    satellite(&client, "after-takeover").await;
    reconciled(&client, "after-takeover").await;
    slow.release();
    let old: Vec<audit::Event> = writes_since(plane, &users[2], held_at);
    let new: Vec<audit::Event> = writes_since(plane, &users[3], held_at);
    let first_new = new
        .iter()
        .filter_map(|e| e.time())
        .min()
        .expect("the new leader wrote");
    let after: Vec<String> = old
        .iter()
        .filter(|e| e.time().is_some_and(|t| t >= first_new))
        .map(|e| e.what())
        .collect();
    assert!(
        after.is_empty(),
        "the old leader wrote after the new one's first write ({first_new}): {after:#?}"
    );
    println!(
        "held Lease calls: the old leader exited {:.1} s after its Lease calls were held ({} writes before), the standby led {:.1} s after; {} Satellites made meanwhile",
        c_exit.as_secs_f64(),
        old.len(),
        takeover.as_secs_f64(),
        made
    );
    assert!(d.is_running());
    let _ = &users[1];
}
