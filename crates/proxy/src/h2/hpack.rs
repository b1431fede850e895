//! HPACK decoding (RFC 7541): the static table, the connection's dynamic table, integers
//! and string literals, with Huffman-coded strings decoded by `httlib-huffman`'s
//! precomputed tables. Fields are handed to a callback as borrowed slices, so a request
//! whose fields are all indexed (the usual gRPC case after the first call) copies nothing.

use std::collections::VecDeque;

/// Why a header block cannot be decoded; the connection cannot go on (its table is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    #[error("invalid Huffman code")]
    Huffman,
    #[error("dynamic table size {0} above the allowed {1}")]
    TableTooLarge(usize, usize),
    #[error("dynamic table size update after a field")]
    LateSizeUpdate,
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead counted in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A connection's decoder: its dynamic table lives as long as the connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as advertised: the most a size update may ask for.
    allowed: usize,
    /// Huffman literals decoded lately: clients whose encoder never indexes `:path` (h2,
    /// so tonic and hyper) send the same coded path on every call.
    recent: HuffmanCache,
}

/// The last few short Huffman literals and their decoding (bounded: 4 entries of at most
/// 128 coded bytes each).
#[derive(Debug, Default)]
struct HuffmanCache {
    /// (coded, decoded).
    entries: Vec<Entry>,
    next: usize,
}

const CACHED_LITERALS: usize = 4;
const CACHED_LITERAL_BYTES: usize = 128;

impl HuffmanCache {
    /// Decodes `coded` onto `out`, from the cache when it holds it.
    fn decode(&mut self, coded: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
        if let Some((_, plain)) = self.entries.iter().find(|(c, _)| &c[..] == coded) {
            out.extend_from_slice(plain);
            return Ok(());
        }
        let from = out.len();
        httlib_huffman::decode(coded, out, httlib_huffman::DecoderSpeed::FourBits)
            .map_err(|_| HpackError::Huffman)?;
        if coded.len() <= CACHED_LITERAL_BYTES {
            let entry = (coded.into(), out[from..].into());
            if self.entries.len() < CACHED_LITERALS {
                self.entries.push(entry);
            } else {
                self.entries[self.next] = entry;
                self.next = (self.next + 1) % CACHED_LITERALS;
            }
        }
        Ok(())
    }
}

/// Where a string literal lives: in the block, or decoded into a scratch buffer.
#[derive(Clone, Copy)]
enum Text {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Decoder {
    pub fn new(allowed: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed,
            allowed,
            recent: HuffmanCache::default(),
        }
    }

    /// As made: nothing in the dynamic table, and its size as allowed.
    pub(crate) fn is_fresh(&self) -> bool {
        self.table.is_empty() && self.max_size == self.allowed
    }

    /// Lets go of the decoded literals kept for the next block (an idle connection need
    /// not hold them).
    pub(crate) fn forget_recent(&mut self) {
        self.recent = HuffmanCache::default();
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it (RFC 7541 §4.4).
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        self.table.push_front((name, value));
        self.size += size;
    }

    /// Decodes `block`, calling `field(name, value)` for each field in order.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut scratch = Vec::new();
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
                fields_seen = true;
                continue;
            }
            if first & 0xe0 == 0x20 {
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(block, &mut at, 5)?;
                if size > self.allowed {
                    return Err(HpackError::TableTooLarge(size, self.allowed));
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            }
            // A literal: with incremental indexing (01), never indexed (0001) or without
            // indexing (0000).
            let (prefix, index_it) = if first & 0xc0 == 0x40 {
                (6, true)
            } else {
                (4, false)
            };
            let name_index = integer(block, &mut at, prefix)?;
            scratch.clear();
            let name_text = if name_index == 0 {
                Some(string(block, &mut at, &mut scratch, &mut self.recent)?)
            } else {
                None
            };
            let value_text = string(block, &mut at, &mut scratch, &mut self.recent)?;
            let resolve = |text: Text| match text {
                Text::Block(start, end) => &block[start..end],
                Text::Scratch(start, end) => &scratch[start..end],
            };
            let value = resolve(value_text);
            let dynamic_name: Box<[u8]>;
            let name: &[u8] = match name_text {
                Some(text) => resolve(text),
                // The usual case (`:path`, `content-type`, ...): a static name, no copy.
                None if name_index <= STATIC_TABLE.len() => self.entry(name_index)?.0,
                // A name from the dynamic table is copied: inserting may evict it.
                None => {
                    dynamic_name = self.entry(name_index)?.0.into();
                    &dynamic_name
                }
            };
            field(name, value);
            fields_seen = true;
            if index_it {
                self.insert(name.into(), value.into());
            }
        }
        Ok(())
    }
}

/// An integer with an N-bit prefix (RFC 7541 §5.1), advancing `at`.
fn integer(block: &[u8], at: &mut usize, prefix_bits: u8) -> Result<usize, HpackError> {
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(*block.get(*at).ok_or(HpackError::Truncated)?) & max;
    *at += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal (RFC 7541 §5.2), advancing `at`; Huffman-coded ones are decoded into
/// `scratch`.
fn string(
    block: &[u8],
    at: &mut usize,
    scratch: &mut Vec<u8>,
    recent: &mut HuffmanCache,
) -> Result<Text, HpackError> {
    let huffman = block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let start = *at;
    let end = start.checked_add(len).ok_or(HpackError::Overflow)?;
    if end > block.len() {
        return Err(HpackError::Truncated);
    }
    *at = end;
    if !huffman {
        return Ok(Text::Block(start, end));
    }
    let from = scratch.len();
    recent.decode(&block[start..end], scratch)?;
    Ok(Text::Scratch(from, scratch.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decoded(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())))?;
        Ok(fields)
    }

    /// An independent implementation to check against.
    fn reference(decoder: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> Fields {
        decoder.decode(block).unwrap()
    }

    #[test]
    fn the_static_table_matches_an_independent_implementation() {
        for index in 1..=61u8 {
            let block = [0x80 | index];
            assert_eq!(
                decoded(&mut Decoder::new(4096), &block).unwrap(),
                reference(&mut loona_hpack::Decoder::new(), &block),
                "static entry {index}"
            );
        }
    }

    fn huffman_literal(name: &[u8], value: &[u8], indexing: bool) -> Vec<u8> {
        let mut block = vec![if indexing { 0x40 } else { 0x00 }];
        for text in [name, value] {
            let mut coded = Vec::new();
            httlib_huffman::encode(text, &mut coded).unwrap();
            assert!(coded.len() < 127);
            block.push(0x80 | coded.len() as u8);
            block.extend_from_slice(&coded);
        }
        block
    }

    #[test]
    fn huffman_literals_and_the_dynamic_table_agree_with_an_independent_implementation() {
        let mut ours = Decoder::new(4096);
        let mut theirs = loona_hpack::Decoder::new();
        let values: Vec<String> = (0..200)
            .map(|i| format!("agent-{i}-{}", "x".repeat(i % 40)))
            .collect();
        for (i, value) in values.iter().enumerate() {
            let mut block = huffman_literal(b"sw8-correlation", value.as_bytes(), true);
            // Refer back to recent entries: 62 is the newest.
            block.push(0x80 | 62);
            if i > 3 {
                block.push(0x80 | 65);
            }
            block.extend(huffman_literal(b"user-agent", b"grpc-python/1.60", false));
            assert_eq!(
                decoded(&mut ours, &block).unwrap(),
                reference(&mut theirs, &block),
                "block {i}"
            );
        }
        // The table stayed within its size through the evictions.
        assert!(ours.size <= 4096);
    }

    #[test]
    fn broken_blocks_are_errors() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decoder.decode(&[0x80], |_, _| {}),
            Err(HpackError::BadIndex(0))
        );
        assert_eq!(
            decoder.decode(&[0xbe], |_, _| {}),
            Err(HpackError::BadIndex(62))
        );
        assert_eq!(
            decoder.decode(&[0x00, 0x05, b'a'], |_, _| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], |_, _| {}),
            Err(HpackError::Overflow)
        );
        // Size updates only before the first field, and within what was advertised.
        assert_eq!(
            decoder.decode(&[0x82, 0x20], |_, _| {}),
            Err(HpackError::LateSizeUpdate)
        );
        assert_eq!(
            decoder.decode(&[0x3f, 0xe2, 0x1f], |_, _| {}),
            Err(HpackError::TableTooLarge(4097, 4096))
        );
        // An invalid Huffman code: 0xff 0xff 0xff 0xff is EOS and more.
        assert_eq!(
            decoder.decode(&[0x00, 0x81, 0x61, 0x84, 0xff, 0xff, 0xff, 0xff], |_, _| {}),
            Err(HpackError::Huffman)
        );
    }

    #[test]
    fn a_size_update_to_zero_empties_the_table() {
        let mut decoder = Decoder::new(4096);
        decoder
            .decode(&[0x40, 1, b'a', 1, b'b'], |_, _| {})
            .unwrap();
        assert_eq!(decoder.table.len(), 1);
        decoder.decode(&[0x20], |_, _| {}).unwrap();
        assert_eq!(decoder.table.len(), 0);
        assert_eq!(
            decoder.decode(&[0xbe], |_, _| {}),
            Err(HpackError::BadIndex(62))
        );
    }
}
