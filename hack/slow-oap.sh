#!/usr/bin/env bash
# A whole pool goes slow, measured with the proxy's default flags: two OAP stand-ins
# (skylift-grpc-sink) handle every call at once but answer it ANSWER_DELAY seconds later
# (a long GC pause, a node under load) for the first SLOW_FOR seconds; meanwhile one client
# streams segments through skylift-proxy, a stream of 100 every PACE_MS. Once the proxy's
# queue is empty it prints how many segments the client had acknowledged, how many copies
# the stand-ins received (the factor is what OAP would over-count), what was dropped and
# why, and how many upstream ejections there were.
#
#   hack/slow-oap.sh                      # 12 s answers for 40 s
#   SLOW_FOR=120 hack/slow-oap.sh         # three times as long
#   PROXY=/tmp/skylift-proxy-before hack/slow-oap.sh   # an earlier build, same case
set -euo pipefail
cd "$(dirname "$0")/.."

ANSWER_DELAY=${ANSWER_DELAY:-12}
SLOW_FOR=${SLOW_FOR:-40}
PACE_MS=${PACE_MS:-2000}
BASE=${BASE:-27100}

cargo build --locked -p skylift-proxy -p skylift-testkit --bins >&2
bin=target/debug
proxy_bin=${PROXY:-$bin/skylift-proxy}

work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sink_a=$BASE; sink_b=$((BASE + 2)); proxy=$((BASE + 10)); admin=$((BASE + 11))
for port in $sink_a $sink_b; do
  "$bin/skylift-grpc-sink" --listen "127.0.0.1:$port" \
    --answer-delay "${ANSWER_DELAY}s" --answer-delay-for "${SLOW_FOR}s" & pids+=($!)
done
"$proxy_bin" --listen "127.0.0.1:$proxy" --admin-listen "127.0.0.1:$admin" \
  --upstream "127.0.0.1:$sink_a" --upstream "127.0.0.1:$sink_b" >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done

"$bin/skylift-grpc-load" --target "127.0.0.1:$proxy" --mode segments --connections 1 \
  --concurrency 1 --messages 100 --seconds "$SLOW_FOR" --pace-ms "$PACE_MS" >"$work/load.json"

metric() { # name -> sum over its series
  curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
# Settled: everything received was forwarded or dropped (waits out the slow period).
for _ in $(seq 600); do
  received=$(metric skylift_proxy_received_total)
  settled=$(( $(metric skylift_proxy_forwarded_total) + $(metric skylift_proxy_dropped_total) ))
  [ "$received" -gt 0 ] && [ "$settled" -ge "$received" ] && break
  sleep 1
done
copies=0
for port in $sink_a $sink_b; do
  copies=$((copies + $(curl -s "http://127.0.0.1:$((port + 1))/count" | python3 -c 'import json,sys; print(json.load(sys.stdin)["segments"])')))
done
acknowledged=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"])' "$work/load.json")
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^skylift_proxy_(dropped_total|upstream_ejections_total)' >"$work/counted" || true
python3 - "$acknowledged" "$copies" "$ANSWER_DELAY" "$SLOW_FOR" "$work/counted" <<'PY'
import sys
acknowledged, copies = int(sys.argv[1]), int(sys.argv[2])
print(f"answers after {sys.argv[3]} s for {sys.argv[4]} s: {acknowledged} segments acknowledged, "
      f"{copies} copies reached OAP ({copies / max(acknowledged, 1):.2f}x)")
for line in open(sys.argv[5]):
    print("  " + line.strip())
PY
