#!/usr/bin/env bash
# OTLP benchmark: trace exports through skylift-proxy with trace affinity (--otlp-affinity:
# each export split by trace ID), through skylift-proxy passing each export whole to the
# next collector, and through Debian's nginx (grpc_pass, and proxy_pass with upstream
# keep-alive for OTLP/HTTP), in one run, over the same three counting collector stand-ins
# (127.0.0.2-4, OTLP/gRPC and OTLP/HTTP on ports they share).
#
# Loads (skylift-grpc-load): `otlp`, unary TraceService/Export calls over HTTP/2, and
# `otlp-http`, POST /v1/traces over HTTP/1.1 keep-alive; each export 100 spans of 20 trace
# IDs (fresh IDs export after export). What counts is the spans the collectors accepted;
# the figure compared is spans per CPU-second of the proxy process (utime + stime), the
# proxy pinned to CPU 0, load and collectors to CPU 1. Each case runs ROUNDS times
# (default 3), the targets alternating; medians are printed.
#
#   hack/bench-otlp.sh
#   SECONDS_PER_RUN=5 ROUNDS=1 MODES=otlp hack/bench-otlp.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-16}
BASE=${PORT:-19600}
MODES=${MODES:-otlp otlp-http}

if ! command -v nginx >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release --locked -p skylift-proxy -p skylift-testkit
bin=target/release

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

grpc=$BASE; http=$((BASE + 2))
collectors=(127.0.0.2 127.0.0.3 127.0.0.4)
for ip in "${collectors[@]}"; do
  taskset -c 1 "$bin/skylift-otlp-collector" --listen "$ip:$grpc" --http-listen "$ip:$http" & pids+=($!)
done
upstreams=$(printf '%s,' "${collectors[@]/%/:$grpc}"); upstreams=${upstreams%,}

declare -A port pid
start_proxy() { # name port args...
  local name=$1 at=$2; shift 2
  taskset -c 0 "$bin/skylift-proxy" --listen "127.0.0.1:$at" --admin-listen "127.0.0.1:$((at + 1))" \
    --upstream "$upstreams" --upstream-http-port "$http" "$@" >"$work/$name.log" 2>&1 &
  pid[$name]=$!; port[$name]=$at; pids+=("$!")
}
start_proxy skylift-affinity $((BASE + 10)) --otlp-affinity
start_proxy skylift-whole $((BASE + 12))

nginx_grpc=$((BASE + 20)); nginx_http=$((BASE + 21))
{
  echo "worker_processes 1; pid $work/nginx.pid; error_log $work/nginx-error.log warn;"
  echo "events { worker_connections 30000; }"
  echo "http { access_log off; client_body_temp_path $work; keepalive_requests 100000000;"
  echo "  client_max_body_size 8m; client_body_buffer_size 1m;"
  echo "  upstream grpc_collectors { keepalive 64; keepalive_requests 100000000;"
  for ip in "${collectors[@]}"; do echo "    server $ip:$grpc;"; done
  echo "  }"
  echo "  upstream http_collectors { keepalive 64; keepalive_requests 100000000;"
  for ip in "${collectors[@]}"; do echo "    server $ip:$http;"; done
  echo "  }"
  echo "  server { listen 127.0.0.1:$nginx_grpc http2; location / { grpc_pass grpc://grpc_collectors; } }"
  echo "  server { listen 127.0.0.1:$nginx_http; location / { proxy_pass http://http_collectors;"
  echo "    proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  echo "}"
} >"$work/nginx.conf"
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx-error.log" 2>/dev/null
for _ in $(seq 50); do [[ -s "$work/nginx.pid" ]] && break; sleep 0.1; done
for name in "${!port[@]}"; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$((port[$name] + 1))/readyz" >/dev/null && break; sleep 0.1; done
done
sleep 1

source hack/lib/bench.sh
delivered() { # "spans exports refused" over the three collectors
  python3 - "$grpc" "${collectors[@]}" <<'PY'
import json, sys, urllib.request
port, ips = int(sys.argv[1]), sys.argv[2:]
total = [0, 0, 0]
for ip in ips:
    c = json.load(urllib.request.urlopen(f"http://{ip}:{port + 1}/count"))
    total = [total[0] + c["spans"], total[1] + c["exports"], total[2] + c["refused"]]
print(*total)
PY
}

results="$work/results.txt"
for mode in $MODES; do
  for round in $(seq "$ROUNDS"); do for target in skylift-affinity skylift-whole nginx; do
    case $target in
      nginx) procs=$(nginx_pids); [[ $mode == otlp ]] && at=$nginx_grpc || at=$nginx_http ;;
      *) procs=${pid[$target]}; at=${port[$target]} ;;
    esac
    read -r s0 e0 r0 < <(settled)
    before=$(cpu_of $procs)
    out=$(taskset -c 1 "$bin/skylift-grpc-load" --target "127.0.0.1:$at" --mode "$mode" \
      --connections "$CONNECTIONS" --concurrency 4 --messages 100 --traces 20 --message-bytes 200 --seconds "$RUN")
    read -r s1 e1 r1 < <(settled)
    after=$(cpu_of $procs)
    echo "$mode $target $(python3 -c "print($after - $before)") $((s1 - s0)) $((e1 - e0)) $((r1 - r0)) $out" >>"$results"
  done; done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, target, cpu, spans, exports, refused, data = line.split(" ", 6)
    rows.setdefault((mode, target), []).append((float(cpu), int(spans), int(exports), int(refused), json.loads(data)))
median = statistics.median
print(f"medians of {len(next(iter(rows.values())))} rounds; spans and exports as the collectors accepted them")
print(f"{'mode':10} {'proxy':18} {'acked spans':>12} {'delivered':>10} {'exports in':>11} {'exports out':>12} "
      f"{'spans/s':>9} {'p99 ms':>8} {'proxy CPU s':>12} {'spans/CPU-s':>12} {'failed':>7} {'refused':>8}")
for mode in ("otlp", "otlp-http"):
    per_cpu = {}
    for target in ("skylift-affinity", "skylift-whole", "nginx"):
        runs = rows.get((mode, target))
        if not runs:
            continue
        per_cpu[target] = median(s / cpu if cpu > 0 else float("inf") for cpu, s, *_ in runs)
        print(f"{mode:10} {target:18} {median(d['messages'] for *_, d in runs):>12.0f} "
              f"{median(s for _, s, *_ in runs):>10.0f} {median(d['calls'] for *_, d in runs):>11.0f} "
              f"{median(e for _, _, e, *_ in runs):>12.0f} {median(s / d['seconds'] for _, s, _, _, d in runs):>9.0f} "
              f"{median(d['p99_ms'] for *_, d in runs):>8.2f} {median(c for c, *_ in runs):>12.2f} "
              f"{per_cpu[target]:>12.0f} {sum(d['failed_calls'] for *_, d in runs):>7} {sum(r for _, _, _, r, _ in runs):>8}")
    for a, b in (("skylift-affinity", "skylift-whole"), ("skylift-affinity", "nginx"), ("skylift-whole", "nginx")):
        if a in per_cpu and b in per_cpu:
            print(f"{mode:10} {a} / {b} delivered spans per CPU-second: {per_cpu[a] / per_cpu[b]:.2f}x")
PY
