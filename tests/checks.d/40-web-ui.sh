#!/usr/bin/env bash
# The dashboard: eslint, tsc, vitest, then the end-to-end journey in headless Chromium
# against the real proxy binary and a real mosquitto (web-ui/e2e/run.mjs). Screenshots of
# every page at laptop and phone width land in target/ui-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/../.."
cd web-ui
npm run --silent lint
npm run --silent typecheck
npm test --silent
cd ..
# Builds the UI too (proxy/build.rs) and embeds it.
cargo build -q -p mqtt-proxy
if ! command -v chromium >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "40-web-ui: chromium is missing (tests/setup.d/40-web-ui.sh installs it)" >&2
    exit 1
  fi
  echo "40-web-ui: SKIPPED the end-to-end run: chromium not installed (apt-get install chromium)"
  exit 0
fi
MQTT_PROXY_BIN="$PWD/target/debug/mqtt-proxy" node web-ui/e2e/run.mjs
