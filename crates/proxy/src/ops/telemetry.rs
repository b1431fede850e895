//! The proxy's own telemetry, reported to OAP as SkyWalking native meters so that OAP's
//! stock `satellite` rules turn them into `satellite_service_*` metrics, among them
//! `satellite_service_grpc_connect_count`, which the autoscaler scales the pool on.
//!
//! Sent every `--telemetry-interval` as one `MeterReportService/collectBatch` message: a
//! `MeterDataCollection` whose first `MeterData` names the service and instance.
//!
//! Names and labels are Satellite's, as OAP's stock `satellite.yaml` sums them: the
//! counters by `pipe` (and `status`), the queue gauges by `pipeline`. The CPU gauge is
//! Satellite's too: the host's CPU busy percent over the interval (gopsutil's
//! `cpu.Percent(interval, false)`, read from `/proc/stat`), not the process's.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::grpc::framing;
use crate::listen::state::State;
use crate::queue::DropReason;
use crate::upstream::driven::Call;

pub(crate) const PATH: &str = "/skywalking.v3.MeterReportService/collectBatch";

/// Who the proxy reports as, and where.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub service: String,
    pub instance: String,
    pub interval: Duration,
    /// A fixed OAP address; otherwise through the pool's upstreams, sticky by instance.
    pub upstream: Option<String>,
}

/// One meter sample.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Meter {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(number: u64, value: &[u8], out: &mut Vec<u8>) {
    varint(number << 3 | 2, out);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// `MeterDataCollection` with one `MeterData` per meter; service and instance on the first.
pub(crate) fn encode_collection(
    service: &str,
    instance: &str,
    timestamp_ms: i64,
    meters: &[Meter],
) -> Vec<u8> {
    let mut collection = Vec::new();
    for (i, meter) in meters.iter().enumerate() {
        // MeterSingleValue { name = 1, labels = 2 (Label { name = 1, value = 2 }), value = 3 (double) }
        let mut single = Vec::new();
        bytes_field(1, meter.name.as_bytes(), &mut single);
        for (name, value) in &meter.labels {
            let mut label = Vec::new();
            bytes_field(1, name.as_bytes(), &mut label);
            bytes_field(2, value.as_bytes(), &mut label);
            bytes_field(2, &label, &mut single);
        }
        varint(3 << 3 | 1, &mut single);
        single.extend_from_slice(&meter.value.to_le_bytes());
        // MeterData { singleValue = 1, service = 3, serviceInstance = 4, timestamp = 5 }
        let mut data = Vec::new();
        bytes_field(1, &single, &mut data);
        if i == 0 {
            bytes_field(3, service.as_bytes(), &mut data);
            bytes_field(4, instance.as_bytes(), &mut data);
        }
        varint(5 << 3, &mut data);
        varint(timestamp_ms as u64, &mut data);
        bytes_field(1, &data, &mut collection);
    }
    collection
}

/// The host's CPU time so far, in clock ticks: (busy, total), from the aggregate `cpu`
/// line of `/proc/stat` (user nice system idle iowait irq softirq steal ...). Busy is all
/// but idle and iowait, as gopsutil counts it.
fn host_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn read_host_cpu() -> Option<(u64, u64)> {
    host_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The busy percent between two readings of [`host_cpu`].
fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    (after.0.saturating_sub(before.0) as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
}

/// What the meters are made of, read from the proxy at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Readings {
    /// Open client connections plus the clients turned away at the limit lately (see
    /// [`crate::listen::turned_away`]), so the autoscaler sees demand above the limit.
    pub connections: usize,
    pub totals: crate::queue::Totals,
    /// Events each partition holds.
    pub capacity: usize,
    /// Events pending per partition.
    pub pending: Vec<usize>,
}

pub(crate) fn readings(state: &State) -> Readings {
    Readings {
        connections: state.connections.load(Ordering::Relaxed)
            + state.turned_away.count(Instant::now()),
        totals: state.queue.totals(),
        capacity: state.queue.config().capacity,
        pending: (0..state.queue.partitions())
            .map(|p| state.queue.pending(p))
            .collect(),
    }
}

/// The meters of these readings; `cpu_percent` is measured by the caller over the interval.
pub(crate) fn meters(readings: &Readings, cpu_percent: f64) -> Vec<Meter> {
    let totals = &readings.totals;
    // satellite.yaml sums the counters by `pipe`, the queue gauges by `pipeline`.
    let pipe = || ("pipe", "skylift".to_string());
    let pipeline = || ("pipeline", "skylift".to_string());
    let mut meters = vec![
        Meter {
            name: "sw_stl_grpc_server_connection_count",
            labels: vec![],
            value: readings.connections as f64,
        },
        Meter {
            name: "sw_stl_grpc_server_cpu_gauge",
            labels: vec![],
            value: cpu_percent,
        },
        Meter {
            name: "sw_stl_gatherer_receive_count",
            labels: vec![pipe(), ("status", "all".into())],
            value: totals.received as f64,
        },
        Meter {
            name: "sw_stl_gatherer_receive_count",
            labels: vec![pipe(), ("status", "abandoned".into())],
            value: (totals.dropped(DropReason::QueueFull)
                + totals.dropped(DropReason::QueueFullRejected)) as f64,
        },
        Meter {
            name: "sw_stl_queue_output_count",
            labels: vec![pipe()],
            value: (totals.forwarded + totals.dropped_total()) as f64,
        },
        Meter {
            name: "sw_stl_sender_output_count",
            labels: vec![pipe(), ("status", "success".into())],
            value: totals.forwarded as f64,
        },
        Meter {
            name: "sw_stl_sender_output_count",
            labels: vec![pipe(), ("status", "failure".into())],
            value: (totals.dropped(DropReason::UpstreamFailed)
                + totals.dropped(DropReason::RefusedByUpstream)
                + totals.dropped(DropReason::RetriesExhausted)) as f64,
        },
        Meter {
            name: "sw_stl_pipeline_queue_total_capacity",
            labels: vec![pipeline()],
            value: (readings.capacity * readings.pending.len()) as f64,
        },
    ];
    for (partition, pending) in readings.pending.iter().enumerate() {
        meters.push(Meter {
            name: "sw_stl_pipeline_queue_partition_size",
            labels: vec![pipeline(), ("partition", partition.to_string())],
            value: *pending as f64,
        });
    }
    meters
}

/// Reports every interval until the task is stopped.
pub async fn report(state: State, config: TelemetryConfig) {
    let key = format!("{}\0{}", config.service, config.instance);
    let mut last_cpu = read_host_cpu();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let cpu = read_host_cpu();
        let cpu_percent = match (last_cpu, cpu) {
            (Some(before), Some(after)) => busy_percent(before, after),
            _ => 0.0,
        };
        last_cpu = cpu;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let message = encode_collection(
            &config.service,
            &config.instance,
            timestamp,
            &meters(&readings(&state), cpu_percent),
        );
        let target = match &config.upstream {
            Some(address) => Some(address.clone()),
            None => state
                .pool
                .balancer
                .pick(Some(&key), &state.pool.upstreams.snapshot(), Instant::now())
                .map(|u| u.address),
        };
        let Some(target) = target else {
            tracing::debug!("no upstream for telemetry yet");
            continue;
        };
        if let Err(err) = send(&state, &target, &message).await {
            tracing::debug!(upstream = %target, error = %err, "sending telemetry failed");
        }
    }
}

async fn send(state: &State, upstream: &str, message: &[u8]) -> Result<(), String> {
    let call = Call {
        upstream,
        path: PATH,
        encoding: None,
        payload: framing::frame(message).into(),
    };
    let answer = state
        .pool
        .client
        .call(call, Duration::from_secs(5))
        .await
        .map_err(|err| err.to_string())?;
    match answer.code {
        0 => Ok(()),
        code => Err(format!("grpc-status {code}: {}", answer.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::wire;

    #[test]
    fn the_collection_names_service_and_instance_on_its_first_meter() {
        let meters = vec![
            Meter {
                name: "sw_stl_grpc_server_connection_count",
                labels: vec![],
                value: 11.0,
            },
            Meter {
                name: "sw_stl_gatherer_receive_count",
                labels: vec![("pipe", "skylift".into()), ("status", "all".into())],
                value: 5.0,
            },
        ];
        let encoded = encode_collection("satellite-service", "pod-1", 1_700_000_000_000, &meters);
        // The proxy's own routing-key reader sees the service and instance.
        assert_eq!(
            wire::meter_batch_key(&encoded).unwrap().as_deref(),
            Some("satellite-service\0pod-1")
        );
        let first = wire::first_message(&encoded, 1).unwrap().unwrap();
        let single = wire::first_message(first, 1).unwrap().unwrap();
        assert_eq!(
            wire::string_field(single, 1).unwrap(),
            Some("sw_stl_grpc_server_connection_count")
        );
        // value = 3, a little-endian double, right after the tag 0x19.
        let at = single.iter().rposition(|b| *b == 0x19).unwrap();
        assert_eq!(
            f64::from_le_bytes(single[at + 1..at + 9].try_into().unwrap()),
            11.0
        );
    }

    #[test]
    fn the_cpu_gauge_is_the_hosts_busy_percent_as_satellite_reports_it() {
        let before = host_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n").unwrap();
        assert_eq!(before, (200, 1000));
        // 150 more busy ticks and 50 more idle ones: 75 % busy.
        let after = host_cpu("cpu  200 0 150 750 100 0 0 0 0 0\n").unwrap();
        assert_eq!(busy_percent(before, after), 75.0);
        assert_eq!(busy_percent(after, after), 0.0);
        assert!(read_host_cpu().is_some(), "Linux has /proc/stat");
    }

    #[test]
    fn queue_gauges_are_labelled_pipeline_and_counters_pipe() {
        let labels = |name: &str, meters: &[Meter]| -> Vec<&'static str> {
            meters
                .iter()
                .filter(|m| m.name == name)
                .flat_map(|m| m.labels.iter().map(|(k, _)| *k))
                .collect()
        };
        let meters = meters(
            &Readings {
                pending: vec![3, 4],
                ..Readings::default()
            },
            12.5,
        );
        for gauge in [
            "sw_stl_pipeline_queue_total_capacity",
            "sw_stl_pipeline_queue_partition_size",
        ] {
            assert!(labels(gauge, &meters).contains(&"pipeline"), "{gauge}");
            assert!(!labels(gauge, &meters).contains(&"pipe"), "{gauge}");
        }
        for counter in [
            "sw_stl_gatherer_receive_count",
            "sw_stl_queue_output_count",
            "sw_stl_sender_output_count",
        ] {
            assert!(labels(counter, &meters).contains(&"pipe"), "{counter}");
        }
    }
}
