#!/usr/bin/env bash
# Regenerates, from the Rust types: crds/skylift.io.yaml (`skylift-operator crd`), its
# copy in the Helm chart, and docs/reference.md (`skylift-operator reference`).
# With --check, fails when any of them is stale instead of writing them.
set -euo pipefail
cd "$(dirname "$0")/.."
crds=$(cargo run --quiet --locked -p skylift-operator -- crd)
reference=$(cargo run --quiet --locked -p skylift-operator -- reference)
targets=(crds/skylift.io.yaml charts/skylift/crds/skylift.io.yaml docs/reference.md)
contents=("$crds" "$crds" "$reference")
if [[ "${1:-}" == "--check" ]]; then
  stale=0
  for i in "${!targets[@]}"; do
    if ! diff -u "${targets[$i]}" <(printf '%s\n' "${contents[$i]}"); then
      stale=1
    fi
  done
  if (( stale )); then
    echo "generated files are stale: run hack/gen-crds.sh and commit the result" >&2
    exit 1
  fi
  echo "crds/, the chart's CRDs and docs/reference.md match the Rust types"
else
  for i in "${!targets[@]}"; do
    printf '%s\n' "${contents[$i]}" > "${targets[$i]}"
  done
  echo "wrote ${targets[*]}"
fi
