#!/usr/bin/env bash
# Installs the SkyWalking Node.js agent (skywalking-backend-js, pinned by tests/node's
# package-lock.json) under target/node-agent: the second real client the proxy tests
# drive, beside the Python agent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/node-agent
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [[ -d $dir/node_modules/skywalking-backend-js ]] && cmp -s tests/node/package-lock.json "$dir/package-lock.json"; then
  exit 0
fi
mkdir -p "$dir"
cp tests/node/package.json tests/node/package-lock.json "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
echo "SkyWalking Node.js agent $(node -p "require('./$dir/node_modules/skywalking-backend-js/package.json').version") on Node.js $(node --version)"
