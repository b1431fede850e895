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
