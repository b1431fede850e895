#!/usr/bin/env bash
# The OpenTelemetry Python SDK with its OTLP exporters (gRPC and HTTP): a real OTLP client
# for the proxy's trace-affinity tests. A virtualenv of its own, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-otel
version=1.45.2
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "
from importlib.metadata import version
assert version('opentelemetry-sdk') == '$version'
import opentelemetry.exporter.otlp.proto.grpc.trace_exporter
import opentelemetry.exporter.otlp.proto.http.trace_exporter" 2>/dev/null; then
  exit 0
fi
mkdir -p target
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "opentelemetry-sdk==$version" \
  "opentelemetry-exporter-otlp-proto-grpc==$version" \
  "opentelemetry-exporter-otlp-proto-http==$version"
"$venv/bin/python" -c "from importlib.metadata import version; print('OpenTelemetry Python SDK', version('opentelemetry-sdk'))"
