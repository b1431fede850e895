//! What OAP reads from each report to attribute it: the service and instance a message
//! names, by method (field numbers from SkyWalking's data-collect protocol), and the meter
//! samples of `MeterReportService` streams.

use bytes::Bytes;

use super::proto::{self, Malformed, Value};

/// The method name without the package prefix older agents leave out
/// (`/skywalking.v3.LogReportService/collect` → `LogReportService/collect`).
pub fn method(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, _)) => &path[service.rfind('.').map_or(0, |dot| dot + 1)..],
        None => path,
    }
}

/// Where a method's messages name their service and instance.
fn key_fields(method: &str) -> Option<(u64, u64)> {
    Some(match method {
        "TraceSegmentReportService/collect" => (4, 5),
        "LogReportService/collect" => (2, 3),
        "JVMMetricReportService/collect" | "CLRMetricReportService/collect" => (2, 3),
        "ManagementService/reportInstanceProperties"
        | "ManagementService/keepAlive"
        | "ProfileTask/getProfileTaskCommands" => (1, 2),
        "ConfigurationDiscoveryService/fetchConfigurations" => (1, 0),
        _ => return None,
    })
}

/// Service and instance named by one message (empty when the method names none).
fn named(message: &[u8], fields: (u64, u64)) -> Result<(String, String), Malformed> {
    let service = proto::string(message, fields.0)?.unwrap_or_default();
    let instance = if fields.1 == 0 {
        String::new()
    } else {
        proto::string(message, fields.1)?.unwrap_or_default()
    };
    Ok((service, instance))
}

/// One meter sample as OAP's meter analyzer receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of one meter report (a `collect` stream, or one `collectBatch` message),
/// with who sent it and when.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterReport {
    pub service: String,
    pub instance: String,
    pub timestamp_ms: i64,
    pub samples: Vec<Sample>,
}

fn labels(single: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    proto::messages(single, 2)?
        .into_iter()
        .map(|label| {
            Ok((
                proto::string(label, 1)?.unwrap_or_default(),
                proto::string(label, 2)?.unwrap_or_default(),
            ))
        })
        .collect()
}

fn double(value: Value<'_>) -> f64 {
    match value {
        Value::Fixed64(bits) => f64::from_bits(bits),
        _ => 0.0,
    }
}

/// The samples of one `MeterData`: a single value, or a histogram as one sample per bucket
/// labelled `le` (OAP's reading of a native histogram).
fn samples(data: &[u8]) -> Result<Vec<Sample>, Malformed> {
    let mut out = Vec::new();
    for single in proto::messages(data, 1)? {
        let mut sample = Sample {
            name: proto::string(single, 1)?.unwrap_or_default(),
            labels: labels(single)?,
            value: 0.0,
        };
        for (number, value) in proto::fields(single)? {
            if number == 3 {
                sample.value = double(value);
            }
        }
        out.push(sample);
    }
    for histogram in proto::messages(data, 2)? {
        let name = proto::string(histogram, 1)?.unwrap_or_default();
        let labels = labels(histogram)?;
        for bucket in proto::messages(histogram, 3)? {
            let (mut le, mut count, mut negative_infinity) = (0.0, 0u64, false);
            for (number, value) in proto::fields(bucket)? {
                match (number, value) {
                    (1, value) => le = double(value),
                    (2, Value::Varint(v)) => count = v,
                    (3, Value::Varint(v)) => negative_infinity = v != 0,
                    _ => {}
                }
            }
            let mut labels = labels.clone();
            let le = if negative_infinity {
                "-Infinity".to_string()
            } else {
                le.to_string()
            };
            labels.push(("le".into(), le));
            out.push(Sample {
                name: name.clone(),
                labels,
                value: count as f64,
            });
        }
    }
    Ok(out)
}

/// A run of `MeterData` as one report: service, instance and time from the first message.
fn meter_report(datas: &[&[u8]]) -> Result<Option<MeterReport>, Malformed> {
    let Some(first) = datas.first() else {
        return Ok(None);
    };
    let mut timestamp_ms = 0;
    for (number, value) in proto::fields(first)? {
        if let (5, Value::Varint(v)) = (number, value) {
            timestamp_ms = v as i64;
        }
    }
    let mut report = MeterReport {
        service: proto::string(first, 3)?.unwrap_or_default(),
        instance: proto::string(first, 4)?.unwrap_or_default(),
        timestamp_ms,
        samples: Vec::new(),
    };
    for data in datas {
        report.samples.extend(samples(data)?);
    }
    Ok(Some(report))
}

/// What one call (all of its messages) carried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Call {
    /// (service, instance) per message, in order.
    pub named: Vec<(String, String)>,
    pub meter_reports: Vec<MeterReport>,
}

/// Reads a call on `path` the way OAP's receivers do.
pub fn read(path: &str, messages: &[Bytes]) -> Result<Call, Malformed> {
    let method = method(path);
    let mut call = Call::default();
    match method {
        "MeterReportService/collect" => {
            let datas: Vec<&[u8]> = messages.iter().map(|m| m.as_ref()).collect();
            if let Some(report) = meter_report(&datas)? {
                let who = (report.service.clone(), report.instance.clone());
                call.named = vec![who; messages.len()];
                call.meter_reports.push(report);
            }
        }
        "MeterReportService/collectBatch" => {
            for message in messages {
                let datas = proto::messages(message, 1)?;
                match meter_report(&datas)? {
                    Some(report) => {
                        call.named
                            .push((report.service.clone(), report.instance.clone()));
                        call.meter_reports.push(report);
                    }
                    None => call.named.push(Default::default()),
                }
            }
        }
        // SegmentCollection: each segment names its own service.
        "TraceSegmentReportService/collectInSync" => {
            for message in messages {
                let first = proto::messages(message, 1)?.first().copied().unwrap_or(&[]);
                call.named.push(named(first, (4, 5))?);
            }
        }
        _ => {
            for message in messages {
                call.named.push(match key_fields(method) {
                    Some(fields) => named(message, fields)?,
                    None => Default::default(),
                });
            }
        }
    }
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn methods_are_read_with_or_without_the_package() {
        assert_eq!(
            method("/skywalking.v3.LogReportService/collect"),
            "LogReportService/collect"
        );
        assert_eq!(
            method("/LogReportService/collect"),
            "LogReportService/collect"
        );
    }

    #[test]
    fn a_segment_names_its_service_and_instance() {
        let segment = [field(1, b"trace"), field(4, b"shop"), field(5, b"shop-1")].concat();
        let call = read(
            "/skywalking.v3.TraceSegmentReportService/collect",
            &[Bytes::from(segment)],
        )
        .unwrap();
        assert_eq!(call.named, vec![("shop".into(), "shop-1".into())]);
    }

    #[test]
    fn a_meter_batch_carries_service_instance_time_and_samples() {
        let mut single = [field(1, b"sw_stl_grpc_server_connection_count")].concat();
        single.push(0x19);
        single.extend_from_slice(&11.0f64.to_le_bytes());
        let mut data = [
            field(1, &single),
            field(3, b"satellite-service"),
            field(4, b"a"),
        ]
        .concat();
        data.extend_from_slice(&[0x28, 0x2a]); // timestamp = 42
        let batch = field(1, &data);
        let call = read(
            "/skywalking.v3.MeterReportService/collectBatch",
            &[Bytes::from(batch)],
        )
        .unwrap();
        assert_eq!(
            call.meter_reports,
            vec![MeterReport {
                service: "satellite-service".into(),
                instance: "a".into(),
                timestamp_ms: 42,
                samples: vec![Sample {
                    name: "sw_stl_grpc_server_connection_count".into(),
                    labels: vec![],
                    value: 11.0,
                }],
            }]
        );
    }
}
