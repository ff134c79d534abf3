#!/usr/bin/env bash
# One `mosquitto_pub -l` connection sends N unique 64-byte QoS 0 messages
#   (1) through mqtt-proxy to 3 local mosquittos, and
#   (2) the same publisher straight to one mosquitto,
# in the same run, REPS times interleaved. Prints msg/s per case (first publish → last
# message received by the slowest subscriber). Loopback only; bounded by timeouts.
# Usage: benches/scripts/pub-l-compare.sh [N=100000] [REPS=3]
set -euo pipefail
N=${1:-100000}; REPS=${2:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release/mqtt-proxy
[ -x "$BIN" ] || cargo build --release -p mqtt-proxy --manifest-path "$ROOT/Cargo.toml"
T=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
USER_LINE=""; [ "$(id -u)" = 0 ] && USER_LINE="user root"
BP=()
for i in 1 2 3; do
  p=$(port); BP+=("$p")
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$p" "$USER_LINE" > "$T/m$i.conf"
  mosquitto -c "$T/m$i.conf" >/dev/null 2>&1 & PIDS+=($!)
done
PP=$(port); HP=$(port)
printf '{"brokers":[{"id":"b1","address":"127.0.0.1","port":%s},{"id":"b2","address":"127.0.0.1","port":%s},{"id":"b3","address":"127.0.0.1","port":%s}]}' "${BP[@]}" > "$T/brokers.json"
RUST_LOG=warn "$BIN" --allow-anonymous --mqtt-listen 127.0.0.1:$PP --http-listen 127.0.0.1:$HP --data-dir "$T/data" --brokers-file "$T/brokers.json" >"$T/proxy.log" 2>&1 & PIDS+=($!)
sleep 1
python3 -c "
for i in range($N): print('%064d' % i)" > "$T/lines"
now() { date +%s.%N; }
run_case() { # $1 = publish port, rest = subscriber ports
  local pub=$1; shift; local subs=("$@"); local sp=() i=0
  for p in "${subs[@]}"; do
    timeout 120 mosquitto_sub -p "$p" -t 'bench/#' -C "$N" > "$T/out$i" & sp+=($!); i=$((i+1))
  done
  sleep 0.5
  local s; s=$(now)
  mosquitto_pub -p "$pub" -t bench/load -l -q 0 < "$T/lines"
  for p in "${sp[@]}"; do wait "$p" || true; done
  local e; e=$(now)
  local got; got=$(cat "$T"/out* | wc -l); rm -f "$T"/out*
  python3 -c "print(f'{$N/($e-$s):9.0f} msg/s per broker, delivered {$got}/{$N*${#subs[@]}}')"
}
echo "N=$N unique 64-byte QoS 0 messages, one mosquitto_pub -l connection; $(nproc) cores"
for r in $(seq "$REPS"); do
  echo "rep $r proxy->3 : $(run_case "$PP" "${BP[@]}")"
  echo "rep $r direct->1: $(run_case "${BP[0]}" "${BP[0]}")"
done
