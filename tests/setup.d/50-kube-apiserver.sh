#!/usr/bin/env bash
# The Kubernetes end-to-end tests' cluster: static helm + kubectl (tests/k8s/tools.sh) and a
# real kube-apiserver + etcd built from Debian's sources (tests/k8s/apiserver.sh build; about
# 10 minutes the first time on a machine, instant afterwards from /var/cache/mqtt-proxy-ci).
#
# Needs root and apt. Without them this only says how, and the e2e tests skip with a message
# (so developers without apt can run everything else); with CI=true it fails instead, because
# CI must run the e2e suite.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ci=false
case "${CI:-}" in "" | false | 0) ;; *) ci=true ;; esac

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  # Already built (e.g. by an earlier root run)? Then nothing is missing.
  if bash "$here/k8s/apiserver.sh" path >/dev/null 2>&1 \
    && [ -x "${MQTT_PROXY_CI_CACHE:-/var/cache/mqtt-proxy-ci}/bin/kubectl" ]; then
    exit 0
  fi
  msg="tests/setup.d/50-kube-apiserver.sh: the Kubernetes e2e tests need a kube-apiserver built
  from Debian sources (root + apt); run: sudo $here/setup.d/50-kube-apiserver.sh"
  if $ci; then
    echo "$msg" >&2
    echo "CI=true: refusing to let the Kubernetes e2e tests skip" >&2
    exit 1
  fi
  echo "$msg (until then those tests skip)" >&2
  exit 0
fi

bash "$here/k8s/tools.sh" >/dev/null
bash "$here/k8s/apiserver.sh" build >/dev/null
