//! Federation forwarding: copies of the reports a federation pool takes (by default the
//! meters and JVM/CLR/management reports) also reach its upstreams, compressed, keyed and in
//! order, from a queue of their own, while local delivery goes on unchanged whatever the
//! federation upstream does.

mod support;

use std::sync::Arc;
use std::time::Duration;

use skylift_proxy::federation::DEFAULT_PROTOCOLS;
use skylift_proxy::queue::{DropReason, QueueConfig};
use skylift_proxy::upstream::client::UpstreamClient;
use skylift_proxy::upstream::delivery::Delivery;
use skylift_testkit::protobuf::Pb;
use skylift_testkit::sink::Sink;
use support::*;

/// A `MeterDataCollection` of `instance` for round `round`: the instance's MeterData, then
/// enough meters (named after the round) to be worth compressing.
fn meter_collection(instance: &str, round: usize) -> Vec<u8> {
    let mut collection = Pb::new().msg(
        1,
        Pb::new()
            .msg(1, Pb::new().str(1, "instance_jvm_cpu").double(3, 12.5))
            .str(3, "checkout")
            .str(4, instance)
            .varint(5, 1_700_000_000_000 + round as u64),
    );
    for meter in 0..12 {
        collection = collection.msg(
            1,
            Pb::new().msg(
                1,
                Pb::new()
                    .str(1, &format!("round_{round:03}_meter_{meter}"))
                    .double(3, meter as f64),
            ),
        );
    }
    collection.done()
}

const INSTANCES: [&str; 3] = ["pod-1", "pod-2", "pod-3"];

/// Sends `rounds` rounds of one collectBatch call (a collection per instance) and one
/// segment stream; every call must be answered OK.
async fn report_rounds(proxy: &Proxy, rounds: std::ops::Range<usize>) {
    let client = client();
    for round in rounds {
        let collections: Vec<Vec<u8>> = INSTANCES
            .iter()
            .map(|i| meter_collection(i, round))
            .collect();
        let (status, _, _) = call(&client, proxy.address, METERS, framed(&collections), &[]).await;
        assert_eq!(status, 0, "meters of round {round}");
        let segments = [segment(&format!("segment-{round}"))];
        let (status, _, _) = call(&client, proxy.address, SEGMENTS, framed(&segments), &[]).await;
        assert_eq!(status, 0, "segment of round {round}");
    }
}

/// A proxy in front of `local` whose federation pool (`federation`, the default
/// protocols) has a queue of `queue`.
async fn federating(local: &Sink, federation: Vec<String>, queue: QueueConfig) -> Proxy {
    proxy_federating(
        &[local],
        federation,
        DEFAULT_PROTOCOLS.to_vec(),
        queue,
        Delivery::default(),
        UpstreamClient::new(4, 100),
    )
    .await
}

fn federation_queue() -> QueueConfig {
    QueueConfig {
        batch_size: 500,
        ..queue_config()
    }
}

fn federation(proxy: &Proxy) -> &skylift_proxy::federation::Federation {
    proxy
        .state
        .federation
        .as_deref()
        .expect("a federation pool")
}

/// Local delivery: every report of `rounds` rounds at the local sink, the local queue
/// balanced with nothing dropped.
async fn delivered_locally(proxy: &Proxy, local: &Sink, rounds: usize) {
    eventually("every report at the local OAP", || {
        local.messages(METERS).len() == 3 * rounds && local.messages(SEGMENTS).len() == rounds
    })
    .await;
    eventually("the local queue settled", || {
        let totals = proxy.state.queue.totals();
        totals.pending == 0 && totals.balances()
    })
    .await;
    assert_eq!(proxy.state.queue.totals().dropped_total(), 0);
}

#[tokio::test]
async fn copies_of_meters_reach_the_federation_oap_compressed_keyed_and_in_order() {
    let local = Sink::start().await.unwrap();
    let (f1, f2) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let proxy = federating(&local, vec![f1.address(), f2.address()], federation_queue()).await;
    report_rounds(&proxy, 0..20).await;
    delivered_locally(&proxy, &local, 20).await;
    eventually("every meter collection at the federation OAPs", || {
        f1.messages(METERS).len() + f2.messages(METERS).len() == 60
    })
    .await;
    // Segments are not federated by default.
    assert_eq!(f1.messages(SEGMENTS).len() + f2.messages(SEGMENTS).len(), 0);
    let totals = federation(&proxy).queue.totals();
    assert_eq!(
        (totals.received, totals.forwarded, totals.pending),
        (60, 60, 0)
    );
    assert!(totals.balances());
    // What the federation OAPs read is what the agents sent.
    let mut sent: Vec<Vec<u8>> = (0..20)
        .flat_map(|round| INSTANCES.iter().map(move |i| meter_collection(i, round)))
        .collect();
    let mut arrived: Vec<Vec<u8>> = f1
        .messages(METERS)
        .into_iter()
        .chain(f2.messages(METERS))
        .map(|m| m.to_vec())
        .collect();
    sent.sort();
    arrived.sort();
    assert_eq!(arrived, sent);
    // Compressed on the wire: every collection, at a fraction of its size.
    let (compressed, wire) = (
        f1.compressed().0 + f2.compressed().0,
        f1.compressed().1 + f2.compressed().1,
    );
    let plain: usize = sent.iter().map(|m| m.len() + 5).sum();
    assert_eq!(compressed, 60);
    assert!(
        (wire as usize) < plain * 2 / 3,
        "{wire} bytes on the wire for {plain} bytes of meters"
    );
    // Each instance's meters at one federation OAP, in the order they were reported.
    for instance in INSTANCES {
        let at = |sink: &Sink| -> Vec<usize> {
            sink.meter_reports()
                .iter()
                .filter(|r| r.instance == instance)
                .map(|r| {
                    let name = &r
                        .samples
                        .iter()
                        .find(|s| s.name.starts_with("round_"))
                        .unwrap()
                        .name;
                    name["round_".len().."round_".len() + 3].parse().unwrap()
                })
                .collect()
        };
        let (on_1, on_2) = (at(&f1), at(&f2));
        assert!(
            on_1.is_empty() || on_2.is_empty(),
            "{instance} split over both federation OAPs"
        );
        let rounds = if on_1.is_empty() { on_2 } else { on_1 };
        assert_eq!(rounds, (0..20).collect::<Vec<_>>(), "{instance}");
    }
}

#[tokio::test]
async fn local_delivery_is_unchanged_while_the_federation_oap_is_down_and_it_drains_when_back() {
    let local = Sink::start().await.unwrap();
    // An address with nothing listening yet.
    let address = address_nobody_listens_on();
    let proxy = federating(&local, vec![address.to_string()], federation_queue()).await;
    report_rounds(&proxy, 0..20).await;
    delivered_locally(&proxy, &local, 20).await;
    let totals = federation(&proxy).queue.totals();
    assert_eq!((totals.received, totals.forwarded), (60, 0));
    assert_eq!(
        totals.pending, 60,
        "the copies wait in the federation queue"
    );
    let back = Sink::start_keeping(address).await.unwrap();
    eventually_within(
        "the federation queue drained",
        Duration::from_secs(20),
        || back.messages(METERS).len() == 60,
    )
    .await;
    eventually("both queues balanced", || {
        let totals = federation(&proxy).queue.totals();
        totals.forwarded == 60 && totals.pending == 0 && totals.balances()
    })
    .await;
    assert!(proxy.state.queue.totals().balances());
}

#[tokio::test]
async fn local_delivery_is_unchanged_while_the_federation_oap_takes_a_second_per_call() {
    let local = Sink::start().await.unwrap();
    let slow = Sink::start().await.unwrap();
    slow.set_delay(Duration::from_secs(1));
    let proxy = federating(
        &local,
        vec![slow.address()],
        QueueConfig {
            // One copy per call, so the federation upstream is slower than the reports.
            batch_size: 1,
            ..federation_queue()
        },
    )
    .await;
    report_rounds(&proxy, 0..8).await;
    delivered_locally(&proxy, &local, 8).await;
    assert!(
        federation(&proxy).queue.totals().pending > 0,
        "local delivery finished while the slow federation OAP still has copies to take"
    );
    eventually_within(
        "the slow federation OAP took every copy",
        Duration::from_secs(30),
        || slow.messages(METERS).len() == 24,
    )
    .await;
    eventually("the federation queue balanced", || {
        let totals = federation(&proxy).queue.totals();
        totals.forwarded == 24 && totals.pending == 0 && totals.balances()
    })
    .await;
}

#[tokio::test]
async fn a_federation_oap_refusing_the_data_costs_local_delivery_nothing() {
    let local = Sink::start().await.unwrap();
    let refusing = Sink::start().await.unwrap();
    // Its meter receiver is off: UNIMPLEMENTED for every meter call.
    refusing.disable(METERS);
    let proxy = federating(&local, vec![refusing.address()], federation_queue()).await;
    report_rounds(&proxy, 0..20).await;
    delivered_locally(&proxy, &local, 20).await;
    eventually("the refused copies counted", || {
        federation(&proxy)
            .queue
            .totals()
            .dropped(DropReason::RefusedByUpstream)
            == 60
    })
    .await;
    let totals = federation(&proxy).queue.totals();
    assert!(totals.balances() && totals.pending == 0);
    // Refusing data is not failing: the federation OAP stays in its pool.
    let metrics = federation(&proxy).pool.metrics.encode();
    assert!(
        !metrics.contains("skylift_proxy_federation_upstream_ejections_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_federation_queue_drops_copies_counted_while_local_delivery_goes_on() {
    let local = Sink::start().await.unwrap();
    let address = address_nobody_listens_on();
    let proxy = federating(
        &local,
        vec![address.to_string()],
        QueueConfig {
            capacity: 10,
            ..federation_queue()
        },
    )
    .await;
    report_rounds(&proxy, 0..40).await;
    delivered_locally(&proxy, &local, 40).await;
    let totals = federation(&proxy).queue.totals();
    assert_eq!(totals.received, 120);
    assert!(totals.pending <= 20, "{totals:?}");
    assert_eq!(totals.dropped(DropReason::QueueFull), 120 - totals.pending);
    assert!(totals.balances());
    let dropped = format!(
        "skylift_proxy_federation_dropped_total{{protocol=\"meter\",reason=\"queue_full\"}} {}",
        120 - totals.pending
    );
    let metrics = federation(&proxy).pool.metrics.encode();
    assert!(metrics.contains(&dropped), "{metrics}");
}

#[tokio::test]
async fn a_remote_federation_oap_is_reached_over_mutual_tls_with_its_own_token() {
    use skylift_proxy::upstream::authentication::Authentication;
    use skylift_proxy::upstream::tls::{Origination, UpstreamTlsFiles};
    let dir = std::env::temp_dir().join(format!("skylift-federation-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server_ca, client_ca) = (
        skylift_testkit::pki::TestCa::new("central oap ca"),
        skylift_testkit::pki::TestCa::new("proxy client ca"),
    );
    // The central OAP: its certificate names its public host, it wants a client
    // certificate and its own token; the local OAP wants neither.
    let central = mutual_tls_sink(&server_ca, &["oap.central.example.com"], &client_ca).await;
    central.require_authentication(Some("central-token"));
    let local = Sink::start().await.unwrap();
    std::fs::write(dir.join("ca.crt"), &server_ca.cert_pem).unwrap();
    let identity = client_ca.client_identity_pem("skylift-proxy");
    std::fs::write(dir.join("tls.pem"), &identity).unwrap();
    std::fs::write(dir.join("token"), "central-token\n").unwrap();
    let origination = Origination::load(UpstreamTlsFiles {
        ca: dir.join("ca.crt"),
        client_cert: Some((dir.join("tls.pem"), dir.join("tls.pem"))),
        server_name: Some("oap.central.example.com".into()),
    })
    .unwrap();
    let client = UpstreamClient::with_tls(2, 100, Some(Arc::new(origination)))
        .with_authentication(Arc::new(Authentication::load(dir.join("token")).unwrap()));
    let proxy = proxy_federating(
        &[&local],
        vec![central.address()],
        DEFAULT_PROTOCOLS.to_vec(),
        federation_queue(),
        Delivery::default(),
        client,
    )
    .await;
    report_rounds(&proxy, 0..5).await;
    delivered_locally(&proxy, &local, 5).await;
    eventually("the copies at the central OAP", || {
        central.messages(METERS).len() == 15
    })
    .await;
    assert_eq!(
        (central.tls_failures(), central.unauthenticated()),
        (0, 0),
        "every call to the central OAP was over its TLS, with its token"
    );
    let _ = std::fs::remove_dir_all(dir);
}
