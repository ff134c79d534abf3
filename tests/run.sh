#!/usr/bin/env bash
# Runs every test of the workspace (the README's test command; .ci/run calls it too).
# The integration tests start real mosquitto brokers, use its clients and make TLS
# certificates with openssl: where they are missing they are installed from Debian's
# packages (as root), or the script says how.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null \
  || ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mosquitto mosquitto-clients openssl >/dev/null
  else
    echo "tests/run.sh: the integration tests need mosquitto, mosquitto-clients and openssl;" \
      "install them with: sudo apt-get install -y mosquitto mosquitto-clients openssl" >&2
    exit 1
  fi
fi
exec cargo test --workspace
