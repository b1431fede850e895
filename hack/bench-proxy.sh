#!/usr/bin/env bash
# Proxy benchmark: skylift-proxy beside Debian's nginx (grpc_pass, per-request balancing)
# and haproxy (proto h2 on both sides, one thread) over the same two counting OAP doubles,
# in one run. The proxy under test is pinned to CPU 0, the load generator and the doubles
# to CPU 1. On two cores the load generator can be the bottleneck, so the figure to compare
# is messages per CPU-second of the proxy process (utime + stime from /proc), printed beside
# wall-clock messages/s and p99.
#
# What counts is what the doubles received and accepted (messages and upstream calls),
# not what the load generator was told: after each run the counts are read once they stop
# moving (skylift-proxy acknowledges before it forwards), and the proxy's CPU time is read
# then too, so its forwarding is paid for.
#
# Each case runs ROUNDS times (default 3), skylift-proxy and nginx alternating, and the
# medians are compared: this machine's noise between runs is larger than the differences
# worth measuring. Idle memory is measured on a fresh skylift-proxy.
#
# The durable queue is measured beside the memory queue with QUEUES (skylift-proxy once
# per queue, each on its own port and journal folder; MODES picks the load):
#
#   hack/bench-proxy.sh                 # 10 s per run, 16 connections, 3 rounds
#   SECONDS_PER_RUN=5 ROUNDS=1 hack/bench-proxy.sh
#   QUEUES="memory disk-interval disk-always" MODES=segments IDLE_CONNECTIONS=0 hack/bench-proxy.sh
#
# The cost of federation forwarding: QUEUES="memory federation" runs a second skylift-proxy
# that also copies the reports of its default federation protocols (meters, JVM/CLR,
# management) to a third counting double; the ratio printed is its delivered (local)
# messages per CPU-second to the plain proxy's, on each load (MODES="segments meters"):
#
#   QUEUES="memory federation" MODES="segments meters" IDLE_CONNECTIONS=0 hack/bench-proxy.sh
#
# Agent-like load (MODES="agent agent-rate"): segment streams as grpc-java and grpcio send
# them, each segment in a DATA frame of its own and the frames written since the last flush
# coalesced into one socket write, at saturation (`agent`) and at a fixed RATE messages/s
# below it (`agent-rate`, default 300000). QUEUES="defaults" adds a
# skylift-proxy with the proxy's default queue flags (the others run with two partitions
# of 100 000 messages); each skylift-proxy's peak RSS is printed:
#
#   QUEUES="memory defaults" MODES="segments agent agent-rate" IDLE_CONNECTIONS=0 hack/bench-proxy.sh
#
# Before and after a change, in one run: build the earlier skylift-proxy, copy it aside,
# and name it in BASELINE_PROXY; it runs as "skylift-baseline" beside the others (memory
# queue), idle memory included:
#
#   BASELINE_PROXY=/tmp/skylift-proxy-before hack/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-16}
IDLE=${IDLE_CONNECTIONS:-10000}
# Seconds from the last idle connection opened to reading RSS.
IDLE_SETTLE=${IDLE_SETTLE:-20}
BASE=${PORT:-19400}
QUEUES=${QUEUES:-memory}
BASELINE_PROXY=${BASELINE_PROXY:-}
[[ -n $BASELINE_PROXY ]] && QUEUES="$QUEUES baseline"
MODES=${MODES:-segments unary}
RATE=${RATE:-300000}

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy >/dev/null
fi
cargo build --release --locked -p skylift-proxy -p skylift-testkit
bin=target/release
# Room for the idle connections: the soft descriptor limit up to the hard one.
ulimit -n "$(ulimit -Hn)"
if (( IDLE > 0 && $(ulimit -n) < IDLE + 1000 )); then
  echo "open-file limit $(ulimit -n) is below $IDLE idle connections; measuring $(( $(ulimit -n) - 1000 ))" >&2
  IDLE=$(( $(ulimit -n) - 1000 ))
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sink_a=$BASE; sink_b=$((BASE + 2)); sink_federation=$((BASE + 4)); skylift=$((BASE + 10)); admin=$((BASE + 11)); nginx_port=$((BASE + 20))
haproxy_port=$((BASE + 22))
taskset -c 1 "$bin/skylift-grpc-sink" --listen "127.0.0.1:$sink_a" & pids+=($!)
taskset -c 1 "$bin/skylift-grpc-sink" --listen "127.0.0.1:$sink_b" & pids+=($!)
[[ " $QUEUES " == *" federation"* ]] && { taskset -c 1 "$bin/skylift-grpc-sink" --listen "127.0.0.1:$sink_federation" & pids+=($!); }

# One skylift-proxy per queue kind; "skylift" is the memory queue.
declare -A proxy_port proxy_pid
offset=0
for queue in $QUEUES; do
  proxy_bin=$bin/skylift-proxy
  # The benchmark's queue: two partitions of 100 000 messages, large batches.
  sizing=(--queue-partitions 2 --queue-capacity 100000 --queue-max-bytes $((512 << 20)) --batch-size 500 --flush-interval 100ms)
  case $queue in
    memory) name=skylift; queue_args=() ;;
    defaults) name=skylift-defaults; queue_args=(); sizing=() ;;
    baseline) name=skylift-baseline; queue_args=(); proxy_bin=$BASELINE_PROXY ;;
    federation) name=skylift-federation; queue_args=(--federation-upstream "127.0.0.1:$sink_federation") ;;
    federation-plain) name=skylift-federation-plain
      queue_args=(--federation-upstream "127.0.0.1:$sink_federation" --federation-compression none) ;;
    disk-interval) name=skylift-disk-interval
      queue_args=(--queue disk --queue-dir "$work/journal-interval" --fsync interval --fsync-interval 1s) ;;
    disk-always) name=skylift-disk-always
      queue_args=(--queue disk --queue-dir "$work/journal-always" --fsync always) ;;
    *) echo "unknown queue $queue (memory, defaults, disk-interval, disk-always, federation)" >&2; exit 2 ;;
  esac
  port=$((skylift + offset)); offset=$((offset + 2))
  taskset -c 0 "$proxy_bin" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
    --upstream "127.0.0.1:$sink_a,127.0.0.1:$sink_b" "${sizing[@]}" "${queue_args[@]}" \
    >"$work/$name.log" 2>&1 &
  proxy_pid[$name]=$!; proxy_port[$name]=$port; pids+=("$!")
done
skylift_pid=${proxy_pid[skylift]:-}

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $work;
  # nginx closes a connection after 1000 requests by default; the load generator keeps its
  # connections for the whole run.
  keepalive_requests 100000000;
  upstream sinks {
    server 127.0.0.1:$sink_a; server 127.0.0.1:$sink_b;
    keepalive 64; keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$nginx_port http2;
    location / { grpc_pass grpc://sinks; }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx-error.log" 2>/dev/null
for _ in $(seq 50); do [[ -s "$work/nginx.pid" ]] && break; sleep 0.1; done

cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend grpc
  bind 127.0.0.1:$haproxy_port proto h2
  default_backend sinks
backend sinks
  balance roundrobin
  http-reuse always
  server a 127.0.0.1:$sink_a proto h2
  server b 127.0.0.1:$sink_b proto h2
HAPROXY
taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!; pids+=("$haproxy_pid")
sleep 1

source hack/lib/bench.sh
# Messages and calls the two doubles accepted so far: "messages calls refused".
delivered() {
  python3 - "$sink_a" "$sink_b" <<'PY'
import json, sys, urllib.request
total = [0, 0, 0]
for port in sys.argv[1:]:
    c = json.load(urllib.request.urlopen(f"http://127.0.0.1:{int(port) + 1}/count"))
    total = [total[0] + c["messages"], total[1] + c["calls"], total[2] + c["refused"]]
print(*total)
PY
}

results="$work/results.txt"
for mode in $MODES; do
  for round in $(seq "$ROUNDS"); do for target in "${!proxy_port[@]}" nginx haproxy; do
    case $target in
      nginx) port=$nginx_port; procs=$(nginx_pids) ;;
      haproxy) port=$haproxy_port; procs=$haproxy_pid ;;
      *) port=${proxy_port[$target]}; procs=${proxy_pid[$target]} ;;
    esac
    read -r m0 c0 r0 < <(settled)
    before=$(cpu_of $procs)
    case $mode in
      agent-rate) load=(--mode agent --rate "$RATE") ;;
      *) load=(--mode "$mode") ;;
    esac
    out=$(taskset -c 1 "$bin/skylift-grpc-load" --target "127.0.0.1:$port" "${load[@]}" \
      --connections "$CONNECTIONS" --seconds "$RUN")
    read -r m1 c1 r1 < <(settled)
    after=$(cpu_of $procs)
    echo "$mode $target $(python3 -c "print($after - $before)") $((m1 - m0)) $((c1 - c0)) $((r1 - r0)) $out" >>"$results"
    if [[ $target == skylift-federation* ]]; then
      # What the federation double took of this run, once it stops moving.
      federated=$(python3 - "$sink_federation" <<'PY'
import json, sys, time, urllib.request
last = None
for _ in range(100):
    now = json.load(urllib.request.urlopen(f"http://127.0.0.1:{int(sys.argv[1]) + 1}/count"))["messages"]
    if now == last:
        break
    last = now
    time.sleep(0.3)
print(now)
PY
)
      echo "$mode $target federated_total $federated" >>"$work/federated.txt"
    fi
  done; done
done
loaded_rss_kb=0; idle_rss_kb=0; idle_open=0
[[ -n $skylift_pid ]] && loaded_rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$skylift_pid/status")
# Each skylift-proxy's peak RSS over all its runs.
for name in "${!proxy_pid[@]}"; do
  echo "$name peak RSS $(awk '/^VmHWM:/ {printf "%.1f MB", $2 / 1024}' "/proc/${proxy_pid[$name]}/status")" >>"$work/peak.txt"
done

# Memory with idle client connections, on a fresh proxy (and a fresh baseline).
idle_rss() { # binary; sets idle_kb and idle_count (runs in this shell, so its processes are cleaned up)
  if [[ -n $skylift_pid ]]; then kill "$skylift_pid" 2>/dev/null || true; wait "$skylift_pid" 2>/dev/null || true; fi
  taskset -c 0 "$1" --listen "127.0.0.1:$skylift" --admin-listen "127.0.0.1:$admin" --max-connections $((IDLE + 1000)) \
    --upstream "127.0.0.1:$sink_a,127.0.0.1:$sink_b" >>"$work/skylift.log" 2>&1 &
  skylift_pid=$!; pids+=("$skylift_pid")
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
  # Before any connection: what the connections add is the difference.
  local empty
  empty=$(awk '/^VmRSS:/ {print $2}' "/proc/$skylift_pid/status")
  rm -f "$work/idle.json"
  taskset -c 1 "$bin/skylift-grpc-load" --target "127.0.0.1:$skylift" --mode idle \
    --connections "$IDLE" --seconds $((IDLE_SETTLE + 40)) >"$work/idle.json" &
  local loader=$!; pids+=("$loader")
  for _ in $(seq 300); do [[ -s "$work/idle.json" ]] && break; sleep 0.1; done
  # Connections rest after a second with nothing under way, and the allocator gives the
  # pages they let go of back over about ten seconds: RSS is read once that has settled.
  sleep "$IDLE_SETTLE"
  local rss open
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$skylift_pid/status")
  open=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^skylift_proxy_connections / {print $2}')
  kill "$loader" 2>/dev/null || true
  wait "$loader" 2>/dev/null || true
  idle_kb=$rss; idle_count=$open; idle_added_kb=$((rss - empty))
}
baseline_idle_kb=0; idle_added_kb=0; baseline_added_kb=0
if (( IDLE > 0 )); then
  idle_rss "$bin/skylift-proxy"
  idle_rss_kb=$idle_kb; idle_open=$idle_count; skylift_added_kb=$idle_added_kb
  if [[ -n $BASELINE_PROXY ]]; then
    idle_rss "$BASELINE_PROXY"
    baseline_idle_kb=$idle_kb; baseline_added_kb=$idle_added_kb
  fi
  idle_added_kb=$skylift_added_kb
fi

python3 - "$results" "$idle_rss_kb" "$idle_open" "$IDLE" "$loaded_rss_kb" "$baseline_idle_kb" \
  "$idle_added_kb" "$baseline_added_kb" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, target, cpu, messages, calls, refused, data = line.split(" ", 6)
    rows.setdefault((mode, target), []).append(
        (float(cpu), int(messages), int(calls), int(refused), json.loads(data)))
median = statistics.median
order = ["skylift", "skylift-defaults", "skylift-baseline", "skylift-federation", "skylift-federation-plain", "skylift-disk-interval", "skylift-disk-always", "nginx", "haproxy"]
print(f"medians of {len(next(iter(rows.values())))} rounds; messages and calls as the OAP doubles accepted them")
print(f"{'mode':9} {'proxy':22} {'acked msgs':>11} {'delivered':>10} {'upstream calls':>15} "
      f"{'msgs/s':>9} {'p99 ms':>8} {'proxy CPU s':>12} {'msgs/CPU-s':>11} {'failed':>7} {'refused':>8}")
targets = {"segments": {"nginx": 1.25}, "unary": {"nginx": 4.0, "haproxy": 1.5}, "meters": {},
           "agent": {"nginx": 1.25}, "agent-rate": {"nginx": 1.25}}
shortfalls = []
for mode in ("segments", "agent", "agent-rate", "unary", "meters"):
    per_cpu = {}
    for target in (t for t in order if (mode, t) in rows):
        runs = rows[(mode, target)]
        per_cpu[target] = median(m / cpu if cpu > 0 else float("inf") for cpu, m, *_ in runs)
        acked = median(d["messages"] for *_, d in runs)
        delivered = median(m for _, m, *_ in runs)
        calls = median(c for _, _, c, *_ in runs)
        rate = median(m / d["seconds"] for _, m, _, _, d in runs)
        p99 = median(d["p99_ms"] for *_, d in runs)
        cpu = median(cpu for cpu, *_ in runs)
        failed = sum(d["failed_calls"] for *_, d in runs)
        # Acknowledged messages the OAP doubles did not receive, summed over rounds (the
        # load's own probes make delivered a few more than acknowledged).
        short = sum(max(0, d["messages"] - m) for _, m, _, _, d in runs)
        if short:
            shortfalls.append(f"{mode} {target}: {short} acknowledged messages not delivered")
        refused = sum(r for _, _, _, r, _ in runs)
        print(f"{mode:9} {target:22} {acked:>11.0f} {delivered:>10.0f} {calls:>15.0f} {rate:>9.0f} "
              f"{p99:>8.2f} {cpu:>12.2f} {per_cpu[target]:>11.0f} {failed:>7} {refused:>8}")
    for federated in ("skylift-federation", "skylift-federation-plain"):
        if "skylift" in per_cpu and federated in per_cpu:
            ratio = per_cpu[federated] / per_cpu["skylift"]
            print(f"{mode:9} {federated} / skylift delivered messages per CPU-second: {ratio:.2f}x "
                  f"(federation costs {(1 / ratio - 1) * 100:.1f} % more CPU per message; target <= 10 % for meters)")
    if "skylift" in per_cpu and "skylift-baseline" in per_cpu:
        print(f"{mode:9} skylift / skylift-baseline delivered messages per CPU-second: "
              f"{per_cpu['skylift'] / per_cpu['skylift-baseline']:.2f}x")
    for peer, target in targets[mode].items():
        for ours in ("skylift", "skylift-defaults"):
            if ours in per_cpu and peer in per_cpu:
                ratio = per_cpu[ours] / per_cpu[peer]
                print(f"{mode:9} {ours} / {peer} delivered messages per CPU-second: {ratio:.2f}x (target >= {target}x)")
for line in shortfalls:
    print(f"SHORT: {line}")
if int(sys.argv[4]) == 0:
    sys.exit(0)
rss_mb = int(sys.argv[2]) / 1024
open_connections = max(int(sys.argv[3] or 0), 1)
print(f"skylift-proxy RSS with {sys.argv[3]} of {sys.argv[4]} idle connections open: {rss_mb:.1f} MB (target <= 64 MB); "
      f"{int(sys.argv[7]) * 1024 / open_connections:.0f} bytes per connection (target <= 1024)")
print(f"(the benchmarked skylift-proxy's RSS after its load runs: {int(sys.argv[5]) / 1024:.1f} MB)")
if int(sys.argv[6]) > 0:
    print(f"skylift-baseline RSS with {sys.argv[4]} idle connections: {int(sys.argv[6]) / 1024:.1f} MB; "
          f"{int(sys.argv[8]) * 1024 / int(sys.argv[4]):.0f} bytes per connection")
PY
[[ -f $work/peak.txt ]] && sed 's/^/  /' "$work/peak.txt"
if [[ -f $work/federated.txt ]]; then
  echo "the federation double's message count after each federating run (cumulative; segments are not federated by default):"
  sed 's/^/  /' "$work/federated.txt"
  for name in skylift-federation skylift-federation-plain; do
    [[ -n ${proxy_port[$name]:-} ]] || continue
    echo "  $name:"
    curl -s "http://127.0.0.1:$((proxy_port[$name] + 1))/metrics" | grep -E '^skylift_proxy_federation_(dropped|forwarded)_total' | sed 's/^/    /' || true
  done
fi
