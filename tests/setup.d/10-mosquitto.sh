#!/usr/bin/env bash
# Real brokers and clients for the integration tests; openssl makes their TLS certificates.
set -euo pipefail
if command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null \
  && command -v openssl >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mosquitto mosquitto-clients openssl >/dev/null
else
  echo "tests/setup.d/10-mosquitto.sh: the integration tests need mosquitto, mosquitto-clients" \
    "and openssl; install them with: sudo apt-get install -y mosquitto mosquitto-clients openssl" >&2
  exit 1
fi
