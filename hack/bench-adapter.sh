#!/usr/bin/env bash
# Adapter benchmark: CALLERS (100) concurrent HPA-style callers, each its own HTTP/2
# connection with the aggregator's front-proxy certificate, read one external metric for
# 30 s from a release skylift-adapter in front of a stand-in OAP that takes 20 ms per
# query. The adapter is pinned to CPU 0, the driver (callers, API-server double, OAP
# stand-in) to CPU 1.
#
# Two runs, each printing the driver's JSON:
#   paced:        every caller reads RATE (10) times a second, 1000 reads/s in all (100 HPAs
#                 read once per 15 s sync, so this is 150 times that): latency of cache
#                 hits, target p99 <= 5 ms;
#   back-to-back: every caller reads again as soon as answered: the adapter's throughput
#                 per CPU-second (latency there is queueing: callers / throughput).
# Both report OAP queries per refresh interval: target exactly 1.
#
#   hack/bench-adapter.sh
#   CALLERS=50 SECONDS_PER_RUN=10 hack/bench-adapter.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p skylift-adapter -p skylift-testkit \
  --bin skylift-adapter --bin skylift-adapter-load
ulimit -n "$(ulimit -Hn)"
run() {
  taskset -c 1 target/release/skylift-adapter-load \
    --adapter-bin target/release/skylift-adapter --adapter-cpu 0 \
    --callers "${CALLERS:-100}" \
    --seconds "${SECONDS_PER_RUN:-30}" \
    --oap-latency "${OAP_LATENCY:-20ms}" \
    --refresh-interval "${REFRESH_INTERVAL:-10s}" \
    --port "${PORT:-19543}" "$@"
}
echo "paced: $(run --rate-per-caller "${RATE:-10}")"
echo "back-to-back: $(run)"
