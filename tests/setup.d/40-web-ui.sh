#!/usr/bin/env bash
# The web UI's checks need Node.js 20+ with npm (lint, typecheck, vitest, and proxy/build.rs
# embeds the UI build) and Debian's Chromium for the end-to-end run (driven by the npm
# package playwright-core, which never downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/../.."
need_node=0
command -v npm >/dev/null || need_node=1
need_chromium=0
command -v chromium >/dev/null || need_chromium=1
if [ "$need_node$need_chromium" != "00" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    pkgs=()
    [ "$need_node" = 1 ] && pkgs+=(nodejs npm)
    [ "$need_chromium" = 1 ] && pkgs+=(chromium)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  else
    echo "tests/setup.d/40-web-ui.sh: the web UI checks need Node.js 20+ (npm) and chromium;" \
      "install them with: sudo apt-get install -y nodejs npm chromium" >&2
    exit 1
  fi
fi
# Dependencies exactly as locked (a no-op when node_modules matches the lock file).
if [ ! -f web-ui/node_modules/.package-lock.json ] \
  || [ web-ui/package-lock.json -nt web-ui/node_modules/.package-lock.json ]; then
  (cd web-ui && npm ci --no-audit --no-fund)
fi
