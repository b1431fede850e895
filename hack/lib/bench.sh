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
  # Unchanged over three reads 0.3 s apart: a proxy's batch waiting out a retry's backoff
  # or a flush interval can leave one 0.3 s gap, and what arrives after the reading would
  # count for neither run.
  local last now same=0
  last=$(delivered)
  for _ in $(seq 200); do
    sleep 0.3
    now=$(delivered)
    if [[ $now == "$last" ]]; then
      same=$((same + 1))
      ((same >= 3)) && break
    else
      same=0
    fi
    last=$now
  done
  echo "$now"
}
