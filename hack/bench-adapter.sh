#!/usr/bin/env bash
# Adapter benchmark: 100 concurrent HPA-style callers (each its own HTTP/2 connection with
# the aggregator's front-proxy certificate) read one external metric for 30 s from a
# release skylift-adapter, in front of a stand-in OAP that takes 20 ms per query. Prints
# the load driver's JSON: latency p50/p99 (targets: p99 <= 5 ms on cache hits) and the OAP
# queries in each refresh interval (target: exactly 1 per interval).
#
#   hack/bench-adapter.sh
#   CALLERS=50 SECONDS_PER_RUN=10 hack/bench-adapter.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p skylift-adapter -p skylift-testkit \
  --bin skylift-adapter --bin skylift-adapter-load
ulimit -n "$(ulimit -Hn)"
target/release/skylift-adapter-load \
  --adapter-bin target/release/skylift-adapter \
  --callers "${CALLERS:-100}" \
  --seconds "${SECONDS_PER_RUN:-30}" \
  --oap-latency "${OAP_LATENCY:-20ms}" \
  --refresh-interval "${REFRESH_INTERVAL:-10s}" \
  --port "${PORT:-19543}"
