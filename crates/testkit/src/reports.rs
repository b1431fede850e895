//! SkyWalking reports as agents send them (field numbers from the data-collect protocol),
//! for tests and load tools.

use crate::protobuf::Pb;

/// A `SegmentObject` with one entry span: trace and segment ids from `id`.
pub fn segment(id: &str, service: &str, instance: &str) -> Vec<u8> {
    Pb::new()
        .str(1, id)
        .str(2, id)
        .msg(
            3,
            Pb::new()
                .varint(1, 0)
                .varint(2, u64::MAX)
                .str(6, "/checkout"),
        )
        .str(4, service)
        .str(5, instance)
        .done()
}

/// A `JVMMetricCollection` with one `JVMMetric` (time 1, cpu 2 → usagePercent 2).
pub fn jvm_metrics(service: &str, instance: &str, time_ms: u64) -> Vec<u8> {
    Pb::new()
        .msg(
            1,
            Pb::new()
                .varint(1, time_ms)
                .msg(2, Pb::new().double(2, 12.5)),
        )
        .str(2, service)
        .str(3, instance)
        .done()
}
