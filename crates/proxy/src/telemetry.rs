//! The proxy's own telemetry, reported to OAP as SkyWalking native meters so that OAP's
//! stock `satellite` rules turn them into `satellite_service_*` metrics, among them
//! `satellite_service_grpc_connect_count`, which the autoscaler scales the pool on.
//!
//! Sent every `--telemetry-interval` as one `MeterReportService/collectBatch` message: a
//! `MeterDataCollection` whose first `MeterData` names the service and instance.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;

use crate::queue::DropReason;
use crate::state::State;
use crate::{framing, grpc};

pub const PATH: &str = "/skywalking.v3.MeterReportService/collectBatch";

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
pub struct Meter {
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
pub fn encode_collection(
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

/// CPU time of this process in seconds (utime + stime), from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks at USER_HZ, 100 per second.
    Some((utime + stime) / 100.0)
}

/// The meters of this moment; `cpu_percent` is measured by the caller over the interval.
/// The connection count includes the clients turned away at the limit lately (see
/// [`crate::demand`]), so the autoscaler sees demand above the limit.
pub fn snapshot(state: &State, cpu_percent: f64) -> Vec<Meter> {
    let totals = state.queue.totals();
    let pipe = || ("pipe", "skylift".to_string());
    let mut meters = vec![
        Meter {
            name: "sw_stl_grpc_server_connection_count",
            labels: vec![],
            value: (state.connections.load(Ordering::Relaxed)
                + state.turned_away.count(Instant::now())) as f64,
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
            value: totals.dropped(DropReason::UpstreamFailed) as f64,
        },
        Meter {
            name: "sw_stl_pipeline_queue_total_capacity",
            labels: vec![pipe()],
            value: (state.queue.config().capacity * state.queue.partitions()) as f64,
        },
    ];
    for partition in 0..state.queue.partitions() {
        meters.push(Meter {
            name: "sw_stl_pipeline_queue_partition_size",
            labels: vec![pipe(), ("partition", partition.to_string())],
            value: state.queue.pending(partition) as f64,
        });
    }
    meters
}

/// Reports every interval until the task is stopped.
pub async fn report(state: State, config: TelemetryConfig) {
    let key = format!("{}\0{}", config.service, config.instance);
    let mut last_cpu = cpu_seconds().unwrap_or(0.0);
    let mut last_at = Instant::now();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let cpu = cpu_seconds().unwrap_or(last_cpu);
        let elapsed = last_at.elapsed().as_secs_f64().max(0.001);
        let cpu_percent = ((cpu - last_cpu) / elapsed * 100.0).max(0.0);
        (last_cpu, last_at) = (cpu, Instant::now());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let message = encode_collection(
            &config.service,
            &config.instance,
            timestamp,
            &snapshot(&state, cpu_percent),
        );
        let target = match &config.upstream {
            Some(address) => Some(address.clone()),
            None => state
                .balancer
                .pick(Some(&key), &state.upstreams.snapshot(), Instant::now())
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
    let request = grpc::request(upstream, PATH, None, framing::frame(message))
        .ok_or_else(|| format!("{upstream} is not an address"))?;
    let response = tokio::time::timeout(Duration::from_secs(5), state.client.request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    match grpc::status_of(&parts.headers, collected.trailers()) {
        Some(0) => Ok(()),
        other => Err(format!("grpc-status {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

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
    fn cpu_time_is_read_from_proc() {
        let spent = cpu_seconds().expect("Linux has /proc/self/stat");
        assert!(spent >= 0.0);
    }
}
