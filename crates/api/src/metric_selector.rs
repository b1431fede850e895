//! SWCK-compatible escaping of SkyWalking entity names into label selectors.
//!
//! An HPA's external metric selector is a label selector, so its values must be legal label
//! values. SkyWalking names such as `satellite::ingest-pool` are not, so SWCK splits a name
//! into indexed pieces: `<key>.str.<i>` is a literal run of letters and digits and
//! `<key>.byte.<i>` is one byte written as two hex digits; the pieces joined in index order
//! give the name back. A name that is already a legal label value may also be given
//! plainly as `<key>: <name>`.

use std::collections::BTreeMap;

/// Escapes `value` into SWCK pieces under `key` (`service` → `service.str.0`, ...).
///
/// Runs of ASCII letters and digits become `str` pieces; every other byte (UTF-8 encoded)
/// becomes a `byte` piece. This is the form SWCK's walk-through shows, so selectors written
/// by the operator read the same as the ones users already have.
pub fn escape(key: &str, value: &str) -> BTreeMap<String, String> {
    let mut pieces = BTreeMap::new();
    let mut index = 0usize;
    let mut run = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            run.push(byte as char);
            continue;
        }
        if !run.is_empty() {
            pieces.insert(format!("{key}.str.{index}"), std::mem::take(&mut run));
            index += 1;
        }
        pieces.insert(format!("{key}.byte.{index}"), format!("{byte:02x}"));
        index += 1;
    }
    if !run.is_empty() {
        pieces.insert(format!("{key}.str.{index}"), run);
    }
    pieces
}

/// Whether `value` is a legal Kubernetes label value (and so may be given plainly).
pub fn is_legal_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a set of selector labels does not decode to entity names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("label {label:?}: {key:?} is given both plainly and as escaped pieces")]
    PlainAndEscaped { label: String, key: String },
    #[error("label {label:?}: the piece index must be a number")]
    BadIndex { label: String },
    #[error("label {label:?}: the piece kind must be `str` or `byte`")]
    BadKind { label: String },
    #[error("label {label:?}: {value:?} is not one byte as two hex digits")]
    BadByte { label: String, value: String },
    #[error("key {key:?}: piece {missing} is missing (pieces must be numbered 0, 1, 2, ...)")]
    MissingPiece { key: String, missing: usize },
    #[error("key {key:?}: the pieces do not form UTF-8 text")]
    NotUtf8 { key: String },
}

#[derive(Default)]
struct Pieces {
    plain: Option<(String, String)>,
    escaped: BTreeMap<usize, Vec<u8>>,
}

/// Decodes selector labels into `key → name`, accepting both the plain and the escaped form
/// of every key. Labels whose key has no dot are plain; `<key>.str.<i>` and `<key>.byte.<i>`
/// are pieces.
pub fn decode<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<String, String>, DecodeError> {
    let mut by_key: BTreeMap<String, Pieces> = BTreeMap::new();
    for (label, value) in labels {
        let mut parts = label.rsplitn(3, '.');
        let (index, kind, key) = (parts.next(), parts.next(), parts.next());
        let (Some(index), Some(kind), Some(key)) = (index, kind, key) else {
            by_key.entry(label.to_string()).or_default().plain =
                Some((label.to_string(), value.to_string()));
            continue;
        };
        let index: usize = index.parse().map_err(|_| DecodeError::BadIndex {
            label: label.to_string(),
        })?;
        let bytes = match kind {
            "str" => value.as_bytes().to_vec(),
            "byte" => {
                let byte = (value.len() == 2)
                    .then(|| u8::from_str_radix(value, 16).ok())
                    .flatten()
                    .ok_or_else(|| DecodeError::BadByte {
                        label: label.to_string(),
                        value: value.to_string(),
                    })?;
                vec![byte]
            }
            _ => {
                return Err(DecodeError::BadKind {
                    label: label.to_string(),
                });
            }
        };
        by_key
            .entry(key.to_string())
            .or_default()
            .escaped
            .insert(index, bytes);
    }

    let mut decoded = BTreeMap::new();
    for (key, pieces) in by_key {
        let value = match (pieces.plain, pieces.escaped.is_empty()) {
            (Some((label, _)), false) => return Err(DecodeError::PlainAndEscaped { label, key }),
            (Some((_, value)), true) => value,
            (None, _) => {
                let mut bytes = Vec::new();
                for (expected, (index, piece)) in pieces.escaped.into_iter().enumerate() {
                    if index != expected {
                        return Err(DecodeError::MissingPiece {
                            key,
                            missing: expected,
                        });
                    }
                    bytes.extend(piece);
                }
                String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { key: key.clone() })?
            }
        };
        decoded.insert(key, value);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn escaping_matches_the_swck_walkthrough() {
        assert_eq!(
            escape("service", "satellite::satellite-service"),
            labels(&[
                ("service.str.0", "satellite"),
                ("service.byte.1", "3a"),
                ("service.byte.2", "3a"),
                ("service.str.3", "satellite"),
                ("service.byte.4", "2d"),
                ("service.str.5", "service"),
            ])
        );
    }

    #[test]
    fn escaped_names_round_trip() {
        for name in [
            "satellite::default-ingest",
            "-leading",
            "trailing.",
            "agent::svc|ns|cluster",
            "ünïcode name",
            "",
            "plain",
        ] {
            let pieces = escape("service", name);
            assert!(pieces.values().all(|v| is_legal_label_value(v)), "{name}");
            let decoded = decode(pieces.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            assert_eq!(
                decoded.get("service").map(String::as_str).unwrap_or(""),
                name
            );
        }
    }

    #[test]
    fn plain_and_escaped_keys_decode_together() {
        let input = labels(&[
            ("service.str.0", "a"),
            ("service.byte.1", "3a"),
            ("service.str.2", "b"),
            ("instance", "pod-1"),
        ]);
        let decoded = decode(input.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(decoded["service"], "a:b");
        assert_eq!(decoded["instance"], "pod-1");
    }

    #[test]
    fn malformed_pieces_are_reported() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("service.str.0", "a"), ("service.str.2", "b")],
                "piece 1 is missing",
            ),
            (&[("service.byte.0", "zz")], "not one byte"),
            (&[("service.word.0", "a")], "must be `str` or `byte`"),
            (&[("service.str.x", "a")], "must be a number"),
            (&[("service.byte.0", "ff")], "UTF-8"),
        ];
        for (input, message) in cases {
            let err = decode(input.iter().copied()).unwrap_err().to_string();
            assert!(err.contains(message), "{err} should mention {message}");
        }
    }

    #[test]
    fn legal_label_values_are_recognised() {
        assert!(is_legal_label_value("satellite-service"));
        assert!(!is_legal_label_value("satellite::x"));
        assert!(!is_legal_label_value("-x"));
        assert!(!is_legal_label_value(&"a".repeat(64)));
    }
}
