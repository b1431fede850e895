//! The inputs kept in `fuzz/regressions/<target>/` (ones a fuzz run once failed on, and
//! hand-made edge cases) run through the same checks as the fuzz targets, in every test
//! run; `hack/fuzz.sh` searches for new ones.

use std::path::PathBuf;

use skylift_proxy::fuzzing::TARGETS;

#[test]
fn every_kept_fuzz_input_passes_its_targets_checks() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    for (target, check) in TARGETS {
        let dir = root.join(target);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "{target}: no kept inputs");
        for case in cases {
            let data = std::fs::read(&case).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", case.display());
        }
    }
}

/// A bounded fuzz run in every test: frame sequences drawn from HTTP/2's frame types
/// (valid-looking headers, random flags, streams, lengths and payloads) through the
/// `h2_session` checks. `hack/fuzz.sh h2_session` searches far longer, coverage-guided.
#[test]
fn random_frame_sequences_keep_the_sessions_invariants() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let request: Vec<u8> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/a/b"),
        ("content-type", "application/grpc"),
    ]
    .iter()
    .flat_map(|(n, v)| {
        let mut f = vec![0, n.len() as u8];
        f.extend_from_slice(n.as_bytes());
        f.push(v.len() as u8);
        f.extend_from_slice(v.as_bytes());
        f
    })
    .collect();
    for _ in 0..3000 {
        let mut input = vec![next() as u8, next() as u8];
        for _ in 0..(next() % 24) {
            let kind = (next() % 11) as u8;
            let flags = [0u8, 1, 4, 5, 8, 0x20, 0x25, 0xff][(next() % 8) as usize];
            let stream = [0u32, 1, 1, 3, 3, 5, 2, 7, 0x7fff_ffff][(next() % 9) as usize];
            let payload: Vec<u8> = match (kind, next() % 3) {
                (1, 0 | 1) => request.clone(),
                (3 | 8, _) => (next() as u32 % 70_000).to_be_bytes().to_vec(),
                (6, _) => next().to_be_bytes().to_vec(),
                _ => (0..next() % 300).map(|_| next() as u8).collect(),
            };
            input.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            input.extend_from_slice(&[kind, flags]);
            input.extend_from_slice(&stream.to_be_bytes());
            input.extend_from_slice(&payload);
        }
        let outcome = std::panic::catch_unwind(|| skylift_proxy::fuzzing::h2_session(&input));
        assert!(outcome.is_ok(), "fails on {input:02x?}");
    }
}
