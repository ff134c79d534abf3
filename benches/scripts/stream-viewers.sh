#!/usr/bin/env bash
# Forwarding throughput through mqtt-proxy to 3 local mosquittos with 0 and with V open
# dashboard stream viewers (/api/stream, reading everything they are sent), interleaved
# REPS times (order alternating). Prints msg/s per downstream broker (median of the three
# brokers) per case, and what the viewers received and were told they lost.
# Loopback only; every step bounded by timeouts.
# Usage: benches/scripts/stream-viewers.sh [N=100000] [REPS=5] [QOS=0] [V=3]
set -euo pipefail
N=${1:-100000}; REPS=${2:-5}; QOS=${3:-0}; V=${4:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release
[ -x "$BIN/mqtt-proxy" ] && [ -x "$BIN/mqtt-load" ] && [ -x "$BIN/stream-viewers" ] \
  || cargo build --release -p mqtt-proxy -p mqtt-proxy-benches --manifest-path "$ROOT/Cargo.toml"
T=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
USER_LINE=""; [ "$(id -u)" = 0 ] && USER_LINE="user root"
BP=(); SUBS=()
for i in 1 2 3; do
  p=$(port); BP+=("$p"); SUBS+=(--sub "127.0.0.1:$p")
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n' "$p" "$USER_LINE" > "$T/m$i.conf"
  mosquitto -c "$T/m$i.conf" >/dev/null 2>&1 & PIDS+=($!)
done
PP=$(port); HP=$(port); TOKEN=bench-token
printf '{"brokers":[{"id":"b1","address":"127.0.0.1","port":%s},{"id":"b2","address":"127.0.0.1","port":%s},{"id":"b3","address":"127.0.0.1","port":%s}]}' "${BP[@]}" > "$T/brokers.json"
MQTT_PROXY_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$BIN/mqtt-proxy" --mqtt-listen 127.0.0.1:$PP \
  --http-listen 127.0.0.1:$HP --data-dir "$T/data" --brokers-file "$T/brokers.json" >"$T/proxy.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done

run_case() { # $1 = viewers
  local vp=""
  if [ "$1" -gt 0 ]; then
    "$BIN/stream-viewers" "ws://127.0.0.1:$HP/api/stream" "$TOKEN" "$1" 600 > "$T/viewers" 2>&1 & vp=$!
    sleep 1
  fi
  timeout 180 "$BIN/mqtt-load" run --target "127.0.0.1:$PP" "${SUBS[@]}" --qos "$QOS" \
    --count "$N" --quiet --format json > "$T/run.json"
  if [ -n "$vp" ]; then kill -TERM "$vp"; wait "$vp" || true; fi
  python3 - "$T/run.json" "$1" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
t = [b["throughput_msgs"] for b in r["brokers"]]
lost = sum(b["lost"] for b in r["brokers"])
print(f"viewers={sys.argv[2]} msg/s per broker={statistics.median(t):.0f} lost={lost}")
PY
  [ -n "$vp" ] && sed 's/^/    /' "$T/viewers"
  return 0
}
echo "stream-viewers bench: qos $QOS, $N messages, 3 brokers, $REPS reps; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPS"); do
  if [ $((r % 2)) = 1 ]; then run_case 0; run_case "$V"; else run_case "$V"; run_case 0; fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
