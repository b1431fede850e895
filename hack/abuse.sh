#!/usr/bin/env bash
# Hostile-client probes against skylift-proxy, nginx (grpc_pass) and haproxy (proto h2),
# the same raw HTTP/2 frames (skylift-h2-abuse) against each, one run:
#
#   hpack-bomb        8 connections, each one 64 KB header block decoding to ~60 MB
#   stuck-frame       500 connections stopped 5 bytes into a frame
#   half-messages     64 report streams on one connection, each announcing a 4 MiB message
#                     and sending up to 1 MiB of it
#   stalled-upstream  96 calls on one connection sending 1 MiB each, to an upstream that
#                     accepts and never reads
#   rapid-reset       20 000 streams opened and reset at once on one connection
#
# Each probe gets a fresh server process (pinned to CPU 0; the probe runs on CPU 1). For the
# memory probes the table gives the server's peak RSS above its RSS before the probe (VmHWM
# of the serving process: skylift-proxy, nginx's worker, haproxy), per connection, and the
# RSS kept once the probe's connections are gone; for rapid-reset the CPU the server spent
# (all its threads, from schedstat) and how long until it sent GOAWAY or closed.
#
#   hack/abuse.sh
#   SERVERS="skylift nginx" PROBES="rapid-reset" hack/abuse.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${PORT:-19600}
SERVERS=${SERVERS:-skylift nginx haproxy}
PROBES=${PROBES:-hpack-bomb stuck-frame half-messages stalled-upstream rapid-reset}
HOLD=${HOLD:-4s}

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy >/dev/null
fi
cargo build --release --locked -p skylift-proxy -p skylift-testkit
bin=target/release
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sink=$BASE; blackhole=$((BASE + 2)); port=$((BASE + 10)); admin=$((BASE + 11))
taskset -c 1 "$bin/skylift-grpc-sink" --listen "127.0.0.1:$sink" & pids+=($!)
# An upstream that accepts connections and never reads from them.
taskset -c 1 python3 - "$blackhole" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True:
    conn, _ = s.accept(); held.append(conn)
PY
pids+=($!)
sleep 0.5

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }
# CPU time of all the process's threads, in nanoseconds.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'; }

server_pid=""
# Starts a fresh $1 in front of upstream $2; sets server_pid to the serving process.
start() {
  local name=$1 upstream=$2
  case $name in
    skylift)
      taskset -c 0 "$bin/skylift-proxy" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --upstream "127.0.0.1:$upstream" --queue-partitions 1 --keepalive-interval 0s \
        >"$work/skylift.log" 2>&1 &
      server_pid=$!
      for _ in $(seq 100); do curl -sf "127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
      ;;
    nginx)
      cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4000; }
http {
  access_log off;
  client_body_temp_path $work;
  upstream oap { server 127.0.0.1:$upstream; keepalive 16; }
  server {
    listen 127.0.0.1:$port http2;
    location / { grpc_pass grpc://oap; }
  }
}
NGINX
      rm -f "$work/nginx.pid"
      taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx-error.log" 2>/dev/null
      for _ in $(seq 50); do [[ -s "$work/nginx.pid" ]] && break; sleep 0.1; done
      sleep 0.3
      server_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
      ;;
    haproxy)
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
  bind 127.0.0.1:$port proto h2
  default_backend oap
backend oap
  server a 127.0.0.1:$upstream proto h2
HAPROXY
      taskset -c 0 haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
      server_pid=$!
      sleep 0.5
      ;;
  esac
}

stop() {
  local name=$1
  if [[ $name == nginx ]]; then
    kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [[ -e "/proc/$server_pid" ]] || break; sleep 0.1; done
  else
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}

probe_args() {
  case $1 in
    hpack-bomb) echo "--probe hpack-bomb --connections 8 --path /skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations" ;;
    stuck-frame) echo "--probe stuck-frame --connections 500" ;;
    half-messages) echo "--probe half-messages --streams 64 --bytes 1048576" ;;
    stalled-upstream) echo "--probe stalled-upstream --streams 96 --bytes 1048576 --path /test.Echo/Call" ;;
    rapid-reset) echo "--probe rapid-reset --count 20000" ;;
  esac
}
connections_of() {
  case $1 in hpack-bomb) echo 8 ;; stuck-frame) echo 500 ;; *) echo 1 ;; esac
}

printf '%-17s %-8s %12s %14s %12s  %s\n' probe server "peak +KB" "peak KB/conn" "kept +KB" "what the server did"
for probe in $PROBES; do
  upstream=$sink
  [[ $probe == stalled-upstream ]] && upstream=$blackhole
  for server in $SERVERS; do
    start "$server" "$upstream"
    before=$(kib VmRSS "$server_pid")
    cpu_before=$(cpu_ns "$server_pid")
    # shellcheck disable=SC2046
    result=$(taskset -c 1 "$bin/skylift-h2-abuse" --target "127.0.0.1:$port" --hold "$HOLD" $(probe_args "$probe"))
    sleep 1
    peak=$(kib VmHWM "$server_pid")
    kept=$(kib VmRSS "$server_pid")
    spent=$(( $(cpu_ns "$server_pid") - cpu_before ))
    conns=$(connections_of "$probe")
    if [[ $probe == rapid-reset ]]; then
      cpu_ms=$(python3 -c "print(round($spent / 1e6, 2))")
      printf '%-17s %-8s %12s %14s %12s  cpu %s ms; %s\n' "$probe" "$server" $((peak - before)) - $((kept - before)) "$cpu_ms" "$result"
    else
      printf '%-17s %-8s %12s %14s %12s  %s\n' "$probe" "$server" $((peak - before)) $(( (peak - before) / conns )) $((kept - before)) "$result"
    fi
    if [[ $server == skylift ]]; then
      curl -s "127.0.0.1:$admin/metrics" | grep -E '^skylift_proxy_connections_closed_total' | sed 's/^/    /' || true
    fi
    stop "$server"
  done
done
