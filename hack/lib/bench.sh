# Shared by the proxy benchmarks (sourced): CPU time of processes, nginx's processes, and
# waiting for the upstream doubles' counts to settle. The sourcing script sets `work` (its
# scratch folder, where nginx writes its pid) and defines `delivered` (the doubles'
# counts, one line).

# utime + stime in seconds, summed over the given pids.
cpu_of() {
  local total=0 ut st
  for pid in "$@"; do
    read -r ut st < <(awk '{print $14, $15}' "/proc/$pid/stat")
    total=$((total + ut + st))
  done
  python3 -c "print($total / $(getconf CLK_TCK))"
}

# nginx's master and workers.
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' '; cat "$work/nginx.pid"; }

# Waits until the doubles' counts stop moving (what was acknowledged has been forwarded),
# and prints them.
settled() {
  local last now
  last=$(delivered)
  for _ in $(seq 100); do
    sleep 0.3
    now=$(delivered)
    [[ $now == "$last" ]] && break
    last=$now
  done
  echo "$now"
}
