//! The few protobuf fields the proxy reads: the service and instance of meter data, for
//! fixed routing. Only the wire format is walked; nothing else is decoded.

/// Why bytes are not a protobuf message (answered with `INVALID_ARGUMENT`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated varint at byte {0}")]
    Varint(usize),
    #[error("field {field} runs past the end of the message")]
    Overrun { field: u64 },
    #[error("unsupported wire type {wire_type} for field {field}")]
    WireType { field: u64, wire_type: u64 },
    #[error("field {field} is not UTF-8 text")]
    NotText { field: u64 },
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let start = *at;
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(WireError::Varint(start))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Varint(start))
}

/// The fields of a message, in order: `(field number, value)` where length-delimited
/// values are their bytes and scalars are empty.
fn fields(message: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), WireError>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= message.len() {
            return None;
        }
        let step = (|| {
            let key = varint(message, &mut at)?;
            let (field, wire_type) = (key >> 3, key & 7);
            let value: &[u8] = match wire_type {
                0 => {
                    varint(message, &mut at)?;
                    &[]
                }
                1 | 5 => {
                    let width = if wire_type == 1 { 8 } else { 4 };
                    if at + width > message.len() {
                        return Err(WireError::Overrun { field });
                    }
                    at += width;
                    &[]
                }
                2 => {
                    let len = usize::try_from(varint(message, &mut at)?)
                        .map_err(|_| WireError::Overrun { field })?;
                    let end = at
                        .checked_add(len)
                        .filter(|end| *end <= message.len())
                        .ok_or(WireError::Overrun { field })?;
                    let value = &message[at..end];
                    at = end;
                    value
                }
                _ => return Err(WireError::WireType { field, wire_type }),
            };
            Ok((field, value))
        })();
        if step.is_err() {
            at = message.len();
        }
        Some(step)
    })
}

/// The last value of string field `number` (protobuf's "last one wins"), if present.
pub fn string_field(message: &[u8], number: u64) -> Result<Option<&str>, WireError> {
    let mut found = None;
    for field in fields(message) {
        let (field, value) = field?;
        if field == number {
            found = Some(std::str::from_utf8(value).map_err(|_| WireError::NotText { field })?);
        }
    }
    Ok(found)
}

/// The first embedded message in field `number`.
pub fn first_message(message: &[u8], number: u64) -> Result<Option<&[u8]>, WireError> {
    for field in fields(message) {
        let (field, value) = field?;
        if field == number {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// MeterData: service = 3, serviceInstance = 4.
const METER_SERVICE: u64 = 3;
const METER_INSTANCE: u64 = 4;
/// MeterDataCollection: meterData = 1.
const COLLECTION_METER_DATA: u64 = 1;

/// The fixed-routing key `service\0instance` of a `MeterData` (the first message of a
/// `collect` stream), or `None` when it names no service.
pub fn meter_key(meter_data: &[u8]) -> Result<Option<String>, WireError> {
    let service = string_field(meter_data, METER_SERVICE)?.unwrap_or_default();
    let instance = string_field(meter_data, METER_INSTANCE)?.unwrap_or_default();
    Ok((!service.is_empty()).then(|| format!("{service}\0{instance}")))
}

/// The key of a `MeterDataCollection` (one `collectBatch` message): that of its first
/// `MeterData`, which carries the service and instance.
pub fn meter_batch_key(collection: &[u8]) -> Result<Option<String>, WireError> {
    match first_message(collection, COLLECTION_METER_DATA)? {
        Some(first) => meter_key(first),
        None => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes length-delimited fields (test helper; the proxy never encodes protobuf).
    pub(crate) fn message(fields: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let push_varint = |out: &mut Vec<u8>, mut v: u64| loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        };
        for (number, value) in fields {
            push_varint(&mut out, (number << 3) | 2);
            push_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value);
        }
        out
    }

    pub(crate) fn meter_data(service: &str, instance: &str) -> Vec<u8> {
        // singleValue = 1 (a nested message), service = 3, serviceInstance = 4, timestamp = 5 (varint)
        let single = message(&[(1, b"sw_stl_grpc_server_connection_count")]);
        let mut data = message(&[
            (1, &single),
            (3, service.as_bytes()),
            (4, instance.as_bytes()),
        ]);
        data.extend_from_slice(&[5 << 3, 0x96, 0x01]);
        data
    }

    #[test]
    fn meter_keys_come_from_service_and_instance() {
        let data = meter_data("checkout", "pod-7");
        assert_eq!(
            meter_key(&data).unwrap().as_deref(),
            Some("checkout\0pod-7")
        );
        let later_message = message(&[(1, b"only a value")]);
        assert_eq!(meter_key(&later_message).unwrap(), None);
        let collection = message(&[(1, &data), (1, &message(&[(1, b"x")]))]);
        assert_eq!(
            meter_batch_key(&collection).unwrap().as_deref(),
            Some("checkout\0pod-7")
        );
        assert_eq!(meter_batch_key(&[]).unwrap(), None);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(
            meter_key(&[3 << 3 | 2, 10, b'a']).unwrap_err(),
            WireError::Overrun { field: 3 }
        );
        assert_eq!(meter_key(&[0xff]).unwrap_err(), WireError::Varint(0));
        assert_eq!(
            meter_key(&[3 << 3 | 3]).unwrap_err(),
            WireError::WireType {
                field: 3,
                wire_type: 3
            }
        );
        assert_eq!(
            meter_key(&[3 << 3 | 2, 1, 0xff]).unwrap_err(),
            WireError::NotText { field: 3 }
        );
        // Every prefix of a valid message either decodes or errors.
        let data = meter_data("svc", "inst");
        for end in 0..data.len() {
            let _ = meter_key(&data[..end]);
        }
    }
}
