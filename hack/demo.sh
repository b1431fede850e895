#!/usr/bin/env bash
# The scaling loop on one machine, no cluster needed: builds skylift, installs the real
# SkyWalking Python agent, then runs two OAP stand-in nodes, one skylift-proxy,
# skylift-adapter and instrumented Python programs, and prints every few seconds the
# connections per proxy, the events per OAP node and the external metric the HPA would
# read. After 30 s a third OAP node joins and traffic moves onto it. Ctrl-C stops it all.
#
# Extra arguments go to the demo (hack/demo.sh --agents 8 --third-node-after 60s);
# `target/debug/skylift-demo --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building skylift (debug profile, as hack/test.sh builds it)"
cargo build --locked --bin skylift-proxy --bin skylift-adapter --bin skylift-oap-standin --bin skylift-demo

echo "==> the SkyWalking Python agent (apache-skywalking 1.2.0, in target/python-agent)"
hack/python-agent.sh

exec target/debug/skylift-demo \
  --python target/python-agent/bin/python \
  --app tests/python/instrumented_app.py \
  "$@"
