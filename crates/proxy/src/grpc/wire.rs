//! The few protobuf fields the proxy reads or writes: the service and instance of meter
//! data (fixed routing), the set header of a meter stream, Envoy's identifier. Only the wire
//! format is walked and spliced; nothing else is decoded.

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

/// One field of a message: its number, its value (the bytes of a length-delimited value,
/// empty for scalars) and where its whole encoding (key included) lies in the message.
struct Field<'a> {
    number: u64,
    value: &'a [u8],
    span: std::ops::Range<usize>,
}

/// The fields of a message, in order.
fn spans(message: &[u8]) -> impl Iterator<Item = Result<Field<'_>, WireError>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= message.len() {
            return None;
        }
        let start = at;
        let step = (|| {
            let key = fast_varint(message, &mut at)?;
            let (field, wire_type) = (key >> 3, key & 7);
            let value: &[u8] = match wire_type {
                0 => {
                    fast_varint(message, &mut at)?;
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
                    let len = usize::try_from(fast_varint(message, &mut at)?)
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
            Ok(Field {
                number: field,
                value,
                span: start..at,
            })
        })();
        if step.is_err() {
            at = message.len();
        }
        Some(step)
    })
}

/// The fields of a message, in order: `(field number, value)` where length-delimited
/// values are their bytes and scalars are empty.
fn fields(message: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), WireError>> {
    spans(message).map(|field| field.map(|f| (f.number, f.value)))
}

/// The encodings (keys included) of every occurrence of the given fields, in order:
/// bytes that, put in front of another message of the same type, give it those fields.
pub(crate) fn encoded_fields(message: &[u8], numbers: &[u64]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    for field in spans(message) {
        let field = field?;
        if numbers.contains(&field.number) {
            out.extend_from_slice(&message[field.span]);
        }
    }
    Ok(out)
}

/// Whether the message is well-formed protobuf at its top level: every field's key,
/// wire type and length fit. (What its length-delimited fields hold is not looked into:
/// that takes the message's schema.)
pub fn check(message: &[u8]) -> Result<(), WireError> {
    // The same walk as `spans`, without building fields: this runs on every message.
    let mut at = 0usize;
    while at < message.len() {
        let key = fast_varint(message, &mut at)?;
        let field = key >> 3;
        let skip = match key & 7 {
            0 => {
                fast_varint(message, &mut at)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(fast_varint(message, &mut at)?)
                .map_err(|_| WireError::Overrun { field })?,
            wire_type => return Err(WireError::WireType { field, wire_type }),
        };
        at = at
            .checked_add(skip)
            .filter(|end| *end <= message.len())
            .ok_or(WireError::Overrun { field })?;
    }
    Ok(())
}

/// [`varint`], with the one-byte case (most keys and short lengths) first.
#[inline(always)]
fn fast_varint(bytes: &[u8], at: &mut usize) -> Result<u64, WireError> {
    match bytes.get(*at) {
        Some(&byte) if byte < 0x80 => {
            *at += 1;
            Ok(u64::from(byte))
        }
        _ => varint(bytes, at),
    }
}

/// The message without any occurrence of the given fields.
pub(crate) fn without_fields(message: &[u8], numbers: &[u64]) -> Result<Vec<u8>, WireError> {
    // Sized first: what is left may be most of the message (an Envoy message without its
    // identifier) or a small part of it (an OTLP resource without its spans).
    let mut kept = 0;
    for field in spans(message) {
        let field = field?;
        if !numbers.contains(&field.number) {
            kept += field.span.len();
        }
    }
    let mut out = Vec::with_capacity(kept);
    for field in spans(message) {
        let field = field?;
        if !numbers.contains(&field.number) {
            out.extend_from_slice(&message[field.span]);
        }
    }
    Ok(out)
}

/// The values of every occurrence of length-delimited field `number`, in order.
pub(crate) fn values_of(message: &[u8], number: u64) -> Result<Vec<&[u8]>, WireError> {
    let mut values = Vec::new();
    for field in fields(message) {
        let (field, value) = field?;
        if field == number {
            values.push(value);
        }
    }
    Ok(values)
}

/// The last value of length-delimited field `number` (protobuf's "last one wins").
pub(crate) fn last_value(message: &[u8], number: u64) -> Result<Option<&[u8]>, WireError> {
    let mut last = None;
    for field in fields(message) {
        let (field, value) = field?;
        if field == number {
            last = Some(value);
        }
    }
    Ok(last)
}

/// The last value of varint field `number`, if present.
pub(crate) fn varint_field(message: &[u8], number: u64) -> Result<Option<u64>, WireError> {
    let mut found = None;
    for field in spans(message) {
        let field = field?;
        if field.number == number {
            let mut at = field.span.start;
            let key = varint(message, &mut at)?;
            if key & 7 == 0 {
                found = Some(varint(message, &mut at)?);
            }
        }
    }
    Ok(found)
}

/// Appends varint field `number`.
pub(crate) fn put_varint_field(out: &mut bytes::BytesMut, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

/// Whether field `number` occurs in the message.
pub(crate) fn has_field(message: &[u8], number: u64) -> Result<bool, WireError> {
    for field in fields(message) {
        if field?.0 == number {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Appends a length-delimited field `number` whose value is `parts` one after another.
pub(crate) fn put_length_delimited(out: &mut bytes::BytesMut, number: u64, parts: &[&[u8]]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, parts.iter().map(|p| p.len() as u64).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends the key and length of a length-delimited field `number` of `len` bytes (its
/// value to follow).
pub(crate) fn put_field_header(out: &mut bytes::BytesMut, number: u64, len: usize) {
    put_varint(out, number << 3 | 2);
    put_varint(out, len as u64);
}

fn put_varint(out: &mut bytes::BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.extend_from_slice(&[(value as u8) | 0x80]);
        value >>= 7;
    }
    out.extend_from_slice(&[value as u8]);
}

/// The encoded length of a length-delimited field with a value of `len` bytes.
pub(crate) fn length_delimited_len(number: u64, len: usize) -> usize {
    let varint_len = |v: u64| (64 - (v | 1).leading_zeros() as usize).div_ceil(7);
    varint_len(number << 3 | 2) + varint_len(len as u64) + len
}

/// The last value of string field `number` (protobuf's "last one wins"), if present.
pub(crate) fn string_field(message: &[u8], number: u64) -> Result<Option<&str>, WireError> {
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
pub(crate) fn first_message(message: &[u8], number: u64) -> Result<Option<&[u8]>, WireError> {
    for field in fields(message) {
        let (field, value) = field?;
        if field == number {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// MeterData: service = 3, serviceInstance = 4, timestamp = 5.
const METER_SERVICE: u64 = 3;
const METER_INSTANCE: u64 = 4;
const METER_TIMESTAMP: u64 = 5;
/// MeterDataCollection: meterData = 1.
pub(crate) const COLLECTION_METER_DATA: u64 = 1;
/// LogData: service = 2.
pub(crate) const LOG_SERVICE: u64 = 2;
/// Event: layer = 9 (required since OAP 9.0).
pub(crate) const EVENT_LAYER: u64 = 9;

/// The fields of a `collect` stream's first MeterData that describe the whole set
/// (service, instance, timestamp), encoded.
pub(crate) fn meter_set_header(first: &[u8]) -> Result<Vec<u8>, WireError> {
    encoded_fields(first, &[METER_SERVICE, METER_INSTANCE, METER_TIMESTAMP])
}

/// The fixed-routing key `service\0instance` of a `MeterData` (the first message of a
/// `collect` stream), or `None` when it names no service.
pub(crate) fn meter_key(meter_data: &[u8]) -> Result<Option<String>, WireError> {
    let service = string_field(meter_data, METER_SERVICE)?.unwrap_or_default();
    let instance = string_field(meter_data, METER_INSTANCE)?.unwrap_or_default();
    Ok((!service.is_empty()).then(|| format!("{service}\0{instance}")))
}

/// The key of a `MeterDataCollection` (one `collectBatch` message): that of its first
/// `MeterData`, which carries the service and instance.
pub(crate) fn meter_batch_key(collection: &[u8]) -> Result<Option<String>, WireError> {
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
    fn fields_are_copied_with_their_keys_and_written_back_as_readable_fields() {
        let data = meter_data("checkout", "pod-7");
        let header = meter_set_header(&data).unwrap();
        // A later message of the stream, with the set header put in front, names the set.
        let later = message(&[(1, b"value")]);
        let mut both = header.clone();
        both.extend_from_slice(&later);
        assert_eq!(
            meter_key(&both).unwrap().as_deref(),
            Some("checkout\0pod-7")
        );
        assert!(has_field(&both, 5).unwrap(), "the timestamp comes along");
        assert!(!has_field(&later, 3).unwrap());

        let mut out = bytes::BytesMut::new();
        put_length_delimited(&mut out, 1, &[&header, &later]);
        assert_eq!(
            out.len(),
            length_delimited_len(1, header.len() + later.len())
        );
        assert_eq!(first_message(&out, 1).unwrap(), Some(&both[..]));
        for len in [0, 127, 128, 16_383, 16_384, 3 << 20] {
            let mut out = bytes::BytesMut::new();
            put_length_delimited(&mut out, 1, &[&vec![0; len]]);
            assert_eq!(out.len(), length_delimited_len(1, len));
        }
    }

    #[test]
    fn the_top_level_check_agrees_with_reading_every_field() {
        let good = meter_data("svc", "inst");
        let mut with_scalars = good.clone();
        with_scalars.extend_from_slice(&[
            1 << 3 | 1,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            2 << 3 | 5,
            1,
            2,
            3,
            4,
        ]);
        with_scalars.extend_from_slice(&[9 << 3, 0xff, 0xff, 0x03]);
        for message in [
            &good[..],
            &with_scalars[..],
            &[],
            &[0xff],
            &[3 << 3 | 2, 10, b'a'],
            &[3 << 3 | 3],
        ] {
            let read_all = spans(message).try_for_each(|f| f.map(drop));
            assert_eq!(check(message), read_all, "{message:?}");
        }
        for end in 0..with_scalars.len() {
            let prefix = &with_scalars[..end];
            assert_eq!(
                check(prefix).is_ok(),
                spans(prefix).all(|f| f.is_ok()),
                "{end}"
            );
        }
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
