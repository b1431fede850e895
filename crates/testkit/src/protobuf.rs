//! Just enough protobuf for the doubles and the tests: reading the fields of a message by
//! number, to see what OAP sees, and writing messages field by field ([`Pb`]). They share
//! nothing with the proxy's own reader, so a wrong field number in the product shows up as
//! a wrong count here.

/// One field's value, by wire type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {0}")]
pub struct Malformed(pub usize);

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or(Malformed(*at))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed(*at))
}

fn take<'a>(buf: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], Malformed> {
    let end = at.checked_add(len).ok_or(Malformed(*at))?;
    let bytes = buf.get(*at..end).ok_or(Malformed(*at))?;
    *at = end;
    Ok(bytes)
}

/// Every field of `message`, in order: (field number, value).
pub fn fields(message: &[u8]) -> Result<Vec<(u64, Value<'_>)>, Malformed> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < message.len() {
        let key = varint(message, &mut at)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(message, &mut at)?),
            1 => Value::Fixed64(u64::from_le_bytes(
                take(message, &mut at, 8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(varint(message, &mut at)?).map_err(|_| Malformed(at))?;
                Value::Bytes(take(message, &mut at, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                take(message, &mut at, 4)?.try_into().expect("4 bytes"),
            )),
            _ => return Err(Malformed(at)),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

/// The last value of field `number` that `pick` takes (protobuf's rule for singular
/// fields: the last occurrence wins).
fn last<'a, T>(
    message: &'a [u8],
    number: u64,
    pick: impl Fn(Value<'a>) -> Option<T>,
) -> Result<Option<T>, Malformed> {
    Ok(fields(message)?
        .into_iter()
        .filter(|(n, _)| *n == number)
        .filter_map(|(_, v)| pick(v))
        .next_back())
}

/// The last value of string field `number`.
pub fn string(message: &[u8], number: u64) -> Result<Option<String>, Malformed> {
    last(message, number, |v| match v {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    })
}

/// Every embedded message in field `number`.
pub fn messages(message: &[u8], number: u64) -> Result<Vec<&[u8]>, Malformed> {
    Ok(fields(message)?
        .into_iter()
        .filter_map(|(n, v)| match v {
            Value::Bytes(b) if n == number => Some(b),
            _ => None,
        })
        .collect())
}

/// Every embedded message in field `number`, merged as protobuf merges repeated occurrences
/// of a singular message field (parsing their concatenation is merging them); `None` when
/// the field does not occur.
pub fn merged(message: &[u8], number: u64) -> Result<Option<Vec<u8>>, Malformed> {
    let parts = messages(message, number)?;
    Ok((!parts.is_empty()).then(|| parts.concat()))
}

/// Whether field `number` occurs at all (proto3's `hasX()` for a message field).
pub fn has(message: &[u8], number: u64) -> Result<bool, Malformed> {
    Ok(fields(message)?.iter().any(|(n, _)| *n == number))
}

/// The last varint value of field `number` (0 when absent, as proto3 reads it).
pub fn varint_field(message: &[u8], number: u64) -> Result<u64, Malformed> {
    Ok(last(message, number, |v| match v {
        Value::Varint(v) => Some(v),
        _ => None,
    })?
    .unwrap_or(0))
}

/// The last value of bytes field `number` (empty when absent).
pub fn bytes_field(message: &[u8], number: u64) -> Result<&[u8], Malformed> {
    Ok(last(message, number, |v| match v {
        Value::Bytes(b) => Some(b),
        _ => None,
    })?
    .unwrap_or(&[]))
}

/// A message being built, field by field, in the order given.
#[derive(Clone, Debug, Default)]
pub struct Pb(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Pb {
    pub fn new() -> Pb {
        Pb::default()
    }

    /// A length-delimited field: a string, bytes or an embedded message's encoding.
    pub fn bytes(mut self, number: u64, value: &[u8]) -> Pb {
        put_varint(&mut self.0, number << 3 | 2);
        put_varint(&mut self.0, value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    pub fn str(self, number: u64, value: &str) -> Pb {
        self.bytes(number, value.as_bytes())
    }

    pub fn msg(self, number: u64, value: Pb) -> Pb {
        self.bytes(number, &value.0)
    }

    pub fn varint(mut self, number: u64, value: u64) -> Pb {
        put_varint(&mut self.0, number << 3);
        put_varint(&mut self.0, value);
        self
    }

    pub fn double(mut self, number: u64, value: f64) -> Pb {
        put_varint(&mut self.0, number << 3 | 1);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_wire_type_and_refuses_truncation() {
        // field 1 varint 150, field 2 "hi", field 3 double 1.5, field 4 fixed32 7
        let mut message = vec![0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x19];
        message.extend_from_slice(&1.5f64.to_le_bytes());
        message.extend_from_slice(&[0x25, 7, 0, 0, 0]);
        let read = fields(&message).unwrap();
        assert_eq!(read[0], (1, Value::Varint(150)));
        assert_eq!(read[1], (2, Value::Bytes(b"hi")));
        assert_eq!(read[2], (3, Value::Fixed64(1.5f64.to_bits())));
        assert_eq!(read[3], (4, Value::Fixed32(7)));
        assert_eq!(string(&message, 2).unwrap().as_deref(), Some("hi"));
        assert!(fields(&message[..5]).is_err());
    }
}
