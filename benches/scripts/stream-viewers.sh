#!/usr/bin/env bash
# Forwarding throughput through mqtt-proxy to 3 local mosquittos with 0 and with V open
# dashboard stream viewers (/api/stream, reading everything they are sent), interleaved
# REPS times (order alternating). Prints msg/s per downstream broker (median of the three
# brokers) per case, and what the viewers received and were told they lost.
# Loopback only; every step bounded by timeouts.
# Also prints the proxy's CPU seconds per run and per message (user + system, from /proc),
# which a loaded machine disturbs far less than wall-clock throughput, the load average at
# each run, and at the end a summary: medians per case, the paired 3/0 ratios (each rep's
# two runs back to back) and the CPU per message.
# Usage: benches/scripts/stream-viewers.sh [N=100000] [REPS=5] [QOS=0] [V=3] [RATE=0 (max)]
set -euo pipefail
N=${1:-100000}; REPS=${2:-5}; QOS=${3:-0}; V=${4:-3}; RATE=${5:-0}
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
MQTT_PROXY_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$BIN/mqtt-proxy" --allow-anonymous --mqtt-listen 127.0.0.1:$PP \
  --http-listen 127.0.0.1:$HP --data-dir "$T/data" --brokers-file "$T/brokers.json" >"$T/proxy.log" 2>&1 & PIDS+=($!)
PROXY_PID=$!
# CPU seconds (user + system) the proxy process has used so far.
cpu() { python3 -c "import os,sys; f=open('/proc/${1:-$PROXY_PID}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"; }
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done

run_case() { # $1 = viewers
  local vp=""
  if [ "$1" -gt 0 ]; then
    "$BIN/stream-viewers" "ws://127.0.0.1:$HP/api/stream" "$TOKEN" "$1" 600 > "$T/viewers" 2>&1 & vp=$!
    sleep 1
  fi
  local c0; c0=$(cpu)
  timeout 180 "$BIN/mqtt-load" run --target "127.0.0.1:$PP" "${SUBS[@]}" --qos "$QOS" \
    --count "$N" --rate "$RATE" --drain-silence 1 --quiet --format json > "$T/run.json"
  local c1; c1=$(cpu)
  if [ -n "$vp" ]; then
    echo "    viewer client CPU (whole life): $(cpu "$vp") s" >> "$T/viewers.cpu"
    kill -TERM "$vp"; wait "$vp" || true
    cat "$T/viewers.cpu" >> "$T/viewers"; rm -f "$T/viewers.cpu"
  fi
  python3 - "$T/run.json" "$1" "$c0" "$c1" "$N" "$(cut -d' ' -f1 /proc/loadavg)" "$T/results" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
t = statistics.median(b["throughput_msgs"] for b in r["brokers"])
lost = sum(b["lost"] for b in r["brokers"])
cpu = float(sys.argv[4]) - float(sys.argv[3])
per_msg = cpu / int(sys.argv[5]) * 1e6
load = sys.argv[6]
print(f"viewers={sys.argv[2]} msg/s per broker={t:.0f} lost={lost} proxy CPU={cpu:.2f} s"
      f" ({per_msg:.2f} us/msg) load={load}")
with open(sys.argv[7], "a") as f:
    f.write(json.dumps({"viewers": int(sys.argv[2]), "rate": t, "cpu_us": per_msg,
                        "lost": lost, "load": float(load)}) + "\n")
PY
  [ -n "$vp" ] && sed 's/^/    /' "$T/viewers"
  return 0
}
echo "stream-viewers bench: qos $QOS, $N messages at rate $RATE/s (0 = max), 3 brokers, $REPS reps; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPS"); do
  if [ $((r % 2)) = 1 ]; then run_case 0; run_case "$V"; else run_case "$V"; run_case 0; fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$T/results" "$V" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
v = int(sys.argv[2])
none = [r for r in rows if r["viewers"] == 0]
some = [r for r in rows if r["viewers"] == v]
def line(name, rs):
    rate = [r["rate"] for r in rs]; cpu = [r["cpu_us"] for r in rs]
    print(f"summary {name}: msg/s per broker median {st.median(rate):.0f} [{min(rate):.0f}-{max(rate):.0f}],"
          f" proxy CPU/msg median {st.median(cpu):.2f} us [{min(cpu):.2f}-{max(cpu):.2f}]")
line("0 viewers", none); line(f"{v} viewers", some)
pairs = list(zip(none, some))
ratio = [b["rate"] / a["rate"] for a, b in pairs]
cpu_ratio = [b["cpu_us"] / a["cpu_us"] for a, b in pairs]
print(f"summary {v}/0: throughput medians {st.median(r['rate'] for r in some) / st.median(r['rate'] for r in none):.3f},"
      f" paired median {st.median(ratio):.3f} [{min(ratio):.2f}-{max(ratio):.2f}];"
      f" CPU/msg medians {st.median(r['cpu_us'] for r in some) / st.median(r['cpu_us'] for r in none):.3f},"
      f" paired median {st.median(cpu_ratio):.3f}; lost {sum(r['lost'] for r in rows)};"
      f" load {min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}")
PY
