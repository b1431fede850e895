#!/usr/bin/env bash
# Regenerates crds/ from the Rust types (`skylift-operator crd`).
# With --check, fails when the committed CRDs are stale instead of writing them.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=$(cargo run --quiet --locked -p skylift-operator -- crd)
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -u crds/skylift.io.yaml <(printf '%s\n' "$generated"); then
    echo "crds/ is stale: run hack/gen-crds.sh and commit the result" >&2
    exit 1
  fi
  echo "crds/ matches the Rust types"
else
  printf '%s\n' "$generated" > crds/skylift.io.yaml
  echo "wrote crds/skylift.io.yaml"
fi
