#!/usr/bin/env bash
# Operator benchmark: OAPServers and Satellites against the API-server double.
#
# Reports the operator's peak RSS (target <= 40 MB), the time until every resource is
# reconciled, and the API writes during the following idle minute (target 0; the leader
# Lease renewals are reported apart).
#
#   hack/bench-operator.sh                       # 100 OAPServers, 1000 Satellites, 60 s idle
#   SATELLITES=200 IDLE_SECONDS=10 hack/bench-operator.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OAPSERVERS=${OAPSERVERS:-100}
SATELLITES=${SATELLITES:-1000}
IDLE_SECONDS=${IDLE_SECONDS:-60}
PORT=${PORT:-18080}

cargo build --release --locked -p skylift-operator -p skylift-testkit
bin=target/release

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/skylift-apiserver-double" --listen "127.0.0.1:$PORT" --crds crds/skylift.io.yaml \
  --kubeconfig "$work/kubeconfig" 2>"$work/double.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/kubeconfig" ]] && break; sleep 0.1; done

KUBECONFIG="$work/kubeconfig" POD_NAMESPACE=default RUST_LOG=warn \
  "$bin/skylift-operator" --admin-listen "127.0.0.1:$((PORT + 10))" --log-format json \
  >"$work/operator.log" 2>&1 &
operator=$!
pids+=("$operator")

"$bin/skylift-operator-load" --server "http://127.0.0.1:$PORT" \
  --writes-url "http://127.0.0.1:$((PORT + 1))/testkit/writes" \
  --oapservers "$OAPSERVERS" --satellites "$SATELLITES" --idle-seconds "$IDLE_SECONDS" \
  >"$work/result.json"

peak_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$operator/status")
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$operator/status")
anon_kb=$(awk '/^RssAnon:/ {print $2}' "/proc/$operator/status")
file_kb=$(awk '/^RssFile:/ {print $2}' "/proc/$operator/status")
python3 - "$work/result.json" "$peak_kb" "$rss_kb" "$anon_kb" "$file_kb" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
peak_mb, rss_mb = int(sys.argv[2]) / 1024, int(sys.argv[3]) / 1024
anon_mb, file_mb = int(sys.argv[4]) / 1024, int(sys.argv[5]) / 1024
print(f"resources:                 {result['oapservers']} OAPServers, {result['satellites']} Satellites, {result['pods']} OAP pods")
print(f"time until all reconciled: {result['seconds_until_all_reconciled']:.1f} s (creating them took {result['seconds_to_create']:.1f} s)")
print(f"writes while reconciling:  {result['writes_during_reconcile']} (all clients, including the load's own creates)")
print(f"operator peak RSS:         {peak_mb:.1f} MB (target <= 40 MB); now {rss_mb:.1f} MB = {anon_mb:.1f} heap/stacks + {file_mb:.1f} mapped binary")
print(f"idle {result['idle_seconds']} s: API writes     {result['idle_writes_excluding_lease_renewals']} (target 0); "
      f"with leader Lease renewals {result['idle_writes_total']}")
if result["idle_writes_by_request"]:
    print(f"idle writes by request:    {result['idle_writes_by_request']}")
PY
