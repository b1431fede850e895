#!/usr/bin/env bash
# Fuzzes the proxy's decoders of untrusted bytes with libFuzzer (cargo-fuzz), each target
# for a bounded time:
#
#   grpc_framing     gRPC length-prefixed framing, in arbitrary chunks
#   routing_key      the protobuf fields read for routing keys and spliced when reshaping
#   request_headers  HPACK decoding and request validation of client header blocks
#   journal_records  reading a damaged disk-queue segment back
#   otlp_split       OTLP exports taken apart by trace ID or resource, and gzip inflated
#
#   hack/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 hack/fuzz.sh grpc_framing
#
# The properties checked live in crates/proxy/src/fuzzing.rs. Each run starts from the
# kept inputs in fuzz/regressions/<target>/ and its own growing corpus (fuzz/corpus, not
# committed). An input that fails is left in fuzz/artifacts/<target>/: copy it into
# fuzz/regressions/<target>/ with a name that says what it is, fix the code, and the test
# crates/proxy/tests/fuzz_regressions.rs keeps it fixed.
#
# Only the stable toolchain is needed: libFuzzer's coverage instrumentation works without
# a sanitizer (--sanitizer none); Rust's own bounds and overflow checks (debug assertions
# are on in fuzz builds) turn memory and arithmetic mistakes into failures.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
targets=("$@")
(( ${#targets[@]} )) || targets=(grpc_framing routing_key request_headers journal_records h2_session otlp_split)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build --sanitizer none

failed=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  rm -rf "fuzz/artifacts/$target"
  echo "== $target: ${SECONDS_PER_TARGET}s"
  # A failing input ends the run with an artifact, checked below.
  cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)|panicked|SUMMARY|Test unit written" || true
  if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
    failed+=("$target")
  fi
done
if (( ${#failed[@]} )); then
  echo "failing inputs found for: ${failed[*]} (see fuzz/artifacts/)" >&2
  exit 1
fi
echo "no failing input found"
