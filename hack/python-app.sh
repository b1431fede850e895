#!/usr/bin/env bash
# An application's own Python environment for the agent-injection tests: a virtualenv
# (so nothing of the machine's own site-packages is seen) pinning a protobuf other than
# the agent's, to prove the injected agent never shadows the application's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-app
protobuf=5.29.5
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import google.protobuf as p; assert p.__version__ == '$protobuf'" 2>/dev/null; then
  exit 0
fi
mkdir -p target
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "protobuf==$protobuf"
"$venv/bin/python" -c "import google.protobuf as p; print('application environment with protobuf', p.__version__)"
