#!/usr/bin/env bash
# Where the proxy's (or a bridging mosquitto's) CPU goes at a fixed rate: 3 local
# mosquittos, the process under test in front of them, one `mqtt-load run` device
# publishing RATE msg/s for SECS s, and one profiler attached to the process under test:
#   stat      perf stat: task-clock, context switches, migrations, and a count of each
#             syscall that matters (read/write/epoll/futex/…), per run
#   strace    strace -c -f: syscall counts and time, all threads
#   record    perf record -g (call graphs) → $OUT/perf.data and a top-entries report
#   callgrind valgrind --tool=callgrind (the proxy only; started under valgrind, so run it
#             at a lower rate) → $OUT/callgrind.out and callgrind_annotate's top entries
# Loopback only; every step bounded. Output files land in $OUT (default: a temp dir, kept).
# Usage: benches/scripts/cpu-profile.sh proxy|bridge stat|strace|record|callgrind [RATE=2000] [SECS=10] [QOS=1]
set -euo pipefail
WHO=${1:?proxy|bridge}; TOOL=${2:?stat|strace|record|callgrind}
RATE=${3:-2000}; SECS=${4:-10}; QOS=${5:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${PROXY_BIN:-$ROOT/target/release/mqtt-proxy}
LOAD=$ROOT/target/release/mqtt-load
[ -x "$BIN" ] && [ -x "$LOAD" ] || cargo build --release -p mqtt-proxy -p mqtt-proxy-benches --manifest-path "$ROOT/Cargo.toml"
OUT=${OUT:-$(mktemp -d /tmp/cpu-profile-XXXXXX)}; mkdir -p "$OUT"
T=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
conf() { printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$1"; }
BP=(); SUBS=()
for i in 1 2 3; do
  p=$(port); BP+=("$p"); SUBS+=(--sub "127.0.0.1:$p")
  conf "$p" > "$T/m$i.conf"; mosquitto -c "$T/m$i.conf" >/dev/null 2>&1 & PIDS+=($!)
done
for p in "${BP[@]}"; do wait_port "$p"; done
FP=$(port)
case $WHO in
  proxy)
    HP=$(port)
    printf '{"brokers":[{"id":"b1","address":"127.0.0.1","port":%s},{"id":"b2","address":"127.0.0.1","port":%s},{"id":"b3","address":"127.0.0.1","port":%s}]}' "${BP[@]}" > "$T/brokers.json"
    PRE=()
    [ "$TOOL" = callgrind ] && PRE=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out")
    RUST_LOG=warn "${PRE[@]}" "$BIN" --allow-anonymous --mqtt-listen "127.0.0.1:$FP" --http-listen "127.0.0.1:$HP" \
      --data-dir "$T/data" --brokers-file "$T/brokers.json" >"$OUT/front.log" 2>&1 & FPID=$!; PIDS+=($FPID)
    ;;
  bridge)
    [ "$TOOL" = callgrind ] && { echo "callgrind: proxy only" >&2; exit 2; }
    { conf "$FP"; for i in 1 2 3; do
        printf '\nconnection b%s\naddress 127.0.0.1:%s\ntopic cpu/# out %s\ncleansession true\nnotifications false\nrestart_timeout 1\n' "$i" "${BP[$((i-1))]}" "$QOS"
      done; } > "$T/bridge.conf"
    mosquitto -c "$T/bridge.conf" >"$OUT/front.log" 2>&1 & FPID=$!; PIDS+=($FPID)
    ;;
  *) echo "proxy or bridge" >&2; exit 2 ;;
esac
wait_port "$FP"
sleep 1
COUNT=$((RATE * SECS))
run_load() { "$LOAD" run --target "127.0.0.1:$FP" "${SUBS[@]}" --topic-root cpu --qos "$QOS" --rate "$RATE" \
  --count "$COUNT" --timeout $((SECS * 3 + 30)) --quiet > "$OUT/load.txt"; }
SYSCALLS=read,write,writev,readv,recvfrom,sendto,sendmsg,recvmsg,epoll_wait,epoll_pwait,epoll_ctl,futex,sched_yield
case $TOOL in
  stat)
    EV=task-clock,context-switches,cpu-migrations,page-faults
    for s in ${SYSCALLS//,/ }; do EV="$EV,syscalls:sys_enter_$s"; done
    perf stat -e "$EV" -p "$FPID" -o "$OUT/perf-stat.txt" & PP=$!
    run_load; kill -INT "$PP"; wait "$PP" || true
    cat "$OUT/perf-stat.txt" ;;
  strace)
    strace -c -f -p "$FPID" -o "$OUT/strace.txt" & PP=$!
    sleep 0.5; run_load; kill -INT "$PP"; wait "$PP" || true
    head -30 "$OUT/strace.txt" ;;
  record)
    perf record -g -F 999 -p "$FPID" -o "$OUT/perf.data" 2>"$OUT/perf-record.log" & PP=$!
    run_load; kill -INT "$PP"; wait "$PP" || true
    perf report -i "$OUT/perf.data" --no-children --percent-limit 1.5 --stdio -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -40 | tee "$OUT/perf-top.txt" ;;
  callgrind)
    run_load; kill -TERM "$FPID"; wait "$FPID" || true
    callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | head -60 | tee "$OUT/callgrind-top.txt" ;;
  *) echo "stat|strace|record|callgrind" >&2; exit 2 ;;
esac
grep -E "^(b[0-9]|publish)|lost" "$OUT/load.txt" | head -8 || true
echo "messages sent: $COUNT at $RATE msg/s, qos $QOS; output in $OUT"
