//! Chaos under steady load, with the disk queue: three upstreams, agents reporting all the
//! time, and then an upstream killed, the proxy killed with SIGKILL and started again on
//! the same journal, and upstreams restarted. Every segment the proxy acknowledged must
//! reach an upstream (duplicates are allowed, and counted), in every step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use skylift_e2e::agents::{Agent, AgentCounts, SEGMENTS, segment_id};
use skylift_e2e::{Process, Scratch, binary, free_port};
use skylift_testkit::http;
use skylift_testkit::sink::Sink;

const AGENTS: usize = 6;
const PER_CALL: u64 = 20;
const PERIOD: Duration = Duration::from_millis(50);

struct ProxyArgs {
    fsync: &'static str,
    port: u16,
    admin: u16,
    file: std::path::PathBuf,
    journal: std::path::PathBuf,
}

async fn start_proxy(args: &ProxyArgs, scratch: &Scratch, name: &str) -> Process {
    let mut command = Command::new(binary("skylift-proxy"));
    command
        .args(["--listen", &format!("127.0.0.1:{}", args.port)])
        .args(["--admin-listen", &format!("127.0.0.1:{}", args.admin)])
        .arg(format!("--upstreams-file={}", args.file.display()))
        .args(["--queue", "disk"])
        .arg(format!("--queue-dir={}", args.journal.display()))
        .args(["--fsync", args.fsync, "--fsync-interval", "100ms"])
        .args(["--flush-interval", "100ms", "--batch-size", "100"])
        .args(["--queue-partitions", "2", "--log-format", "json"]);
    let process = Process::spawn(name, command, scratch.path());
    let admin = args.admin;
    skylift_e2e::wait_ready("the proxy", &format!("127.0.0.1:{admin}")).await;
    process
}

/// How often each segment id arrived, over every sink that ever ran.
fn deliveries(sinks: &[&Sink]) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    for sink in sinks {
        for message in sink.messages(SEGMENTS) {
            let id = segment_id(&message)
                .expect("an agent's segment")
                .to_string();
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Acknowledged segment ids per agent, split at the step boundaries recorded as the
/// number of acknowledged calls each agent had then.
fn acknowledged_in_steps(
    agents: &[(String, Arc<AgentCounts>)],
    marks: &[Vec<usize>],
) -> Vec<Vec<String>> {
    let mut steps = vec![Vec::new(); marks.len()];
    for (a, (instance, counts)) in agents.iter().enumerate() {
        let ranges = counts.acknowledged_numbers.lock().unwrap().clone();
        let mut from = 0;
        for (step, mark) in marks.iter().enumerate() {
            let to = mark[a].min(ranges.len());
            for range in &ranges[from..to] {
                steps[step].extend(range.clone().map(|n| format!("segment-{instance}-{n}")));
            }
            from = to;
        }
    }
    steps
}

/// Calls each agent must have had acknowledged before a step ends.
const SERVED: usize = 20;

/// Waits until every agent has had `calls` more calls acknowledged than at `since`.
async fn served(agents: &[(String, Arc<AgentCounts>)], since: &[usize], calls: usize, what: &str) {
    skylift_e2e::wait_for(what, Duration::from_secs(60), || async {
        calls_acknowledged(agents)
            .iter()
            .zip(since)
            .all(|(now, then)| *now >= then + calls)
            .then_some(())
    })
    .await;
}

fn calls_acknowledged(agents: &[(String, Arc<AgentCounts>)]) -> Vec<usize> {
    agents
        .iter()
        .map(|(_, counts)| counts.acknowledged_numbers.lock().unwrap().len())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disk_queue_synced_at_intervals_nothing_acknowledged_is_lost() {
    chaos("interval").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disk_queue_synced_always_nothing_acknowledged_is_lost() {
    chaos("always").await;
}

async fn chaos(fsync: &'static str) {
    println!("--fsync {fsync}");
    let scratch = Scratch::new(&format!("chaos-{fsync}"));
    let mut sinks = vec![
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
        Sink::start().await.unwrap(),
    ];
    let addresses: Vec<String> = sinks.iter().map(Sink::address).collect();
    let args = ProxyArgs {
        fsync,
        port: free_port(),
        admin: free_port(),
        file: scratch.path().join("endpoints.json"),
        journal: scratch.path().join("journal"),
    };
    std::fs::write(&args.file, skylift_e2e::endpoints_json(&addresses)).unwrap();
    let mut proxy = start_proxy(&args, &scratch, "proxy-1").await;

    let target: SocketAddr = format!("127.0.0.1:{}", args.port).parse().unwrap();
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| Agent::start(target, "chaos", &format!("agent{i}"), PER_CALL, PERIOD))
        .collect();
    let counts: Vec<(String, Arc<AgentCounts>)> = agents
        .iter()
        .map(|a| (a.instance.clone(), a.counts.clone()))
        .collect();
    let mut marks = Vec::new();
    let mut names = Vec::new();
    let step = |marks: &mut Vec<Vec<usize>>, names: &mut Vec<&'static str>, name| {
        marks.push(calls_acknowledged(&counts));
        names.push(name);
    };

    // Each step lasts until every agent has been served a few more calls (at one call per
    // 50 ms each), not for a set time.
    served(&counts, &[0; AGENTS], 2 * SERVED, "steady load").await;
    step(&mut marks, &mut names, "steady load");

    sinks[0].kill();
    served(
        &counts,
        marks.last().unwrap(),
        SERVED,
        "calls with upstream 0 dead",
    )
    .await;
    step(&mut marks, &mut names, "upstream 0 killed");

    // The kill must find acknowledged reports still queued, or the restart would have
    // nothing to read back: the live upstreams answer slowly until some are.
    for sink in &sinks[1..] {
        sink.set_delay(Duration::from_secs(2));
    }
    skylift_e2e::wait_for(
        "reports waiting in the queue",
        Duration::from_secs(20),
        || async {
            let (_, metrics) = http::get(&format!("http://127.0.0.1:{}/metrics", args.admin))
                .await
                .ok()?;
            (http::prometheus_sum(&metrics, "skylift_proxy_queue_size") > 0.0).then_some(())
        },
    )
    .await;
    proxy.kill();
    let _ = proxy.output();
    for sink in &sinks[1..] {
        sink.set_delay(Duration::ZERO);
    }
    let proxy2 = start_proxy(&args, &scratch, "proxy-2").await;
    served(
        &counts,
        marks.last().unwrap(),
        SERVED,
        "calls through the restarted proxy",
    )
    .await;
    step(&mut marks, &mut names, "proxy SIGKILLed and restarted");

    let restarted = Sink::start_keeping(addresses[0].parse().unwrap())
        .await
        .unwrap();
    sinks[1].kill();
    let killed_b = calls_acknowledged(&counts);
    served(&counts, &killed_b, SERVED, "calls with upstream 1 dead").await;
    let restarted_b = Sink::start_keeping(addresses[1].parse().unwrap())
        .await
        .unwrap();
    let restarted_all = calls_acknowledged(&counts);
    served(
        &counts,
        &restarted_all,
        SERVED,
        "calls with every upstream back",
    )
    .await;
    step(&mut marks, &mut names, "upstreams restarted");
    for agent in agents {
        agent.stop().await;
    }
    sinks.push(restarted);
    sinks.push(restarted_b);

    // Calls answered after the last mark (while the agents stopped) count in the last step.
    *marks.last_mut().unwrap() = vec![usize::MAX; AGENTS];
    let steps = acknowledged_in_steps(&counts, &marks);
    let all: Vec<&String> = steps.iter().flatten().collect();
    let sink_refs: Vec<&Sink> = sinks.iter().collect();
    // Everything acknowledged arrives within a few flush intervals and retries; what has
    // not after 30 s is reported lost below.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let seen = deliveries(&sink_refs);
        if all.iter().all(|id| seen.contains_key(*id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = deliveries(&sink_refs);
    let metrics = http::get(&format!("http://127.0.0.1:{}/metrics", args.admin))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let dropped = http::prometheus_sum(&metrics, "skylift_proxy_dropped_total");
    let recovered = http::prometheus_sum(&metrics, "skylift_proxy_journal_recovered_total");
    let corrupt = http::prometheus_sum(&metrics, "skylift_proxy_journal_corrupt_records_total");
    for (name, ids) in names.iter().zip(&steps) {
        let delivered = ids.iter().filter(|id| seen.contains_key(*id)).count();
        let duplicated: u32 = ids.iter().map(|id| seen.get(id).map_or(0, |n| n - 1)).sum();
        println!(
            "{name}: sent {} acknowledged, delivered {delivered}, duplicated {duplicated}, lost {}",
            ids.len(),
            ids.len() - delivered
        );
        assert!(!ids.is_empty(), "{name}: the agents kept reporting");
        assert_eq!(delivered, ids.len(), "{name}: acknowledged segments lost");
    }
    println!("after the restart: recovered {recovered}, corrupt {corrupt}, dropped {dropped}");
    assert!(recovered > 0.0, "the restart read the journal back");
    assert_eq!(dropped, 0.0);
    assert_eq!(corrupt, 0.0);
    drop(proxy2);
}
