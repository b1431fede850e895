#!/usr/bin/env bash
# Installs the SkyWalking Python agent (the real client the proxy tests drive) into a
# virtualenv under target/. apache-skywalking 1.2.0: the 1.3.0 wheel lacks its generated
# protocol modules. With its `http` extra (requests), for reporting over OAP's HTTP
# receivers.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-agent
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import skywalking, grpc, requests" 2>/dev/null; then
  exit 0
fi
mkdir -p target
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "apache-skywalking[http]==1.2.0"
"$venv/bin/python" -c "import skywalking, grpc; print('SkyWalking Python agent', skywalking.__version__ if hasattr(skywalking, '__version__') else '1.2.0', 'with grpcio', grpc.__version__)"
