//! Protobuf messages written by hand for the tests (field numbers from SkyWalking's
//! data-collect protocol and Envoy's API), so a test reads like the message it sends.

/// A message being built, field by field, in the order given.
#[derive(Clone, Debug, Default)]
pub struct Pb(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut value: u64) {
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
        varint(&mut self.0, number << 3 | 2);
        varint(&mut self.0, value.len() as u64);
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
        varint(&mut self.0, number << 3);
        varint(&mut self.0, value);
        self
    }

    pub fn double(mut self, number: u64, value: f64) -> Pb {
        varint(&mut self.0, number << 3 | 1);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn done(self) -> Vec<u8> {
        self.0
    }
}
