#!/usr/bin/env bash
# The device-edge tests (tests/edge_listeners.rs) drive a real MQTT-over-WebSocket client:
# paho-mqtt, from tests/edge/ws_client.py.
set -euo pipefail
if python3 -c 'import paho.mqtt.client' 2>/dev/null; then
  exit 0
fi
if python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check paho-mqtt && exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-paho-mqtt >/dev/null
else
  echo "tests/setup.d/70-edge.sh: the WebSocket tests need python3 with paho-mqtt:" \
    "pip install paho-mqtt (or apt-get install python3-paho-mqtt)" >&2
  exit 1
fi
