#!/usr/bin/env bash
# benches/memory.sh — the proxy's memory footprint benchmark. Owns: starting three
# throwaway mosquitto brokers and one fresh mqtt-proxy per scenario on 127.0.0.1, driving
# fake devices (benches/memory/devices.py), and printing the proxy's VmRSS / VmHWM as a
# markdown table on stdout (progress goes to stderr).
#
# Scenarios: (a) idle, no brokers; (b) idle with 1, 10, 100 brokers configured; (c) 1, 100,
# 1000 devices each fanned out to 3 brokers; (d) 20,000-message QoS 0 bursts while one
# broker is paused (SIGSTOP) and queues are capped at 5,000 messages, repeated to show
# that RSS levels off instead of growing with the traffic.
#
# Usage: benches/memory.sh            (builds target/release/mqtt-proxy if it is missing)
# Env:   MQTT_PROXY_BIN   proxy binary [target/release/mqtt-proxy]
#        BURST_MESSAGES   messages per burst in (d) [20000]
#        BURST_PAYLOAD    payload bytes per burst message [1024]
#        BURSTS           bursts in (d), measured after each [4]
#        DEVICE_COUNTS    device counts for (c) ["1 100 1000"]
#
# Every wait has a deadline; every process started here is stopped on exit (trap EXIT).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY=${MQTT_PROXY_BIN:-$ROOT/target/release/mqtt-proxy}
DEVICES_PY=$ROOT/benches/memory/devices.py
BURST_MESSAGES=${BURST_MESSAGES:-20000}
BURST_PAYLOAD=${BURST_PAYLOAD:-1024}
BURSTS=${BURSTS:-4}
DEVICE_COUNTS=${DEVICE_COUNTS:-1 100 1000}
QUEUE_CAP=5000
# Generous: 1000 devices mean 1000 + 3000 sockets in the proxy and 1000 per mosquitto.
# Raised as far as the hard limit allows when it can't be raised further.
FD_LIMIT=65536

log() { echo "memory.sh: $*" >&2; }
die() {
	log "FAILED: $*"
	exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mqtt-proxy-memory.XXXXXX")
PIDS=()       # every background process started here, stopped by cleanup
BROKER_PIDS=() # mosquitto pids, index = broker number - 1
BROKER_PORTS=()
ROWS=()

# Stops one process: SIGCONT (it may be paused), SIGTERM, then SIGKILL after 5 s.
stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -CONT "$pid" 2>/dev/null || true
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local pid
	exec 7>&- 2>/dev/null || true
	for pid in "${PIDS[@]}"; do
		stop_pid "$pid"
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until `cmd...` succeeds, polling every 0.1 s, for at most $1 seconds.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@"; do
		((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
		sleep 0.1
	done
}

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { kill -0 "$1" 2>/dev/null; }

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

kb_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

# Waits (at most 10 s) until the proxy's RSS changes by less than 1% over half a second,
# so a reading is not taken mid-allocation.
settle() {
	local pid=$1 prev now i
	prev=$(kb_field "$pid" VmRSS)
	for ((i = 0; i < 20; i++)); do
		sleep 0.5
		now=$(kb_field "$pid" VmRSS)
		((now * 100 >= prev * 99 && now * 100 <= prev * 101)) && return 0
		prev=$now
	done
}

record() {
	local name=$1 pid=$2 rss hwm size maps
	alive "$pid" || die "proxy died before '$name' was measured: $(tail -5 "$WORK/proxy.log")"
	settle "$pid"
	rss=$(kb_field "$pid" VmRSS)
	hwm=$(kb_field "$pid" VmHWM)
	size=$(kb_field "$pid" VmSize)
	maps=$(wc -l <"/proc/$pid/maps")
	ROWS+=("| $name | $(mb "$rss") | $(mb "$hwm") |")
	# Virtual size and mapping count go to the log only: they show where untouched
	# allocations (pre-sized maps and buffers) hide behind a small RSS.
	log "$name: VmRSS $(mb "$rss") MB, VmHWM $(mb "$hwm") MB, VmSize $(mb "$size") MB, $maps mappings, $(kb_field "$pid" Threads) threads"
}

start_broker() {
	local n=$1 dir=$WORK/mosquitto-$1 port attempt pid
	mkdir -p "$dir"
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		cat >"$dir/mosquitto.conf" <<-EOF
			listener $port 127.0.0.1
			allow_anonymous true
			persistence false
			user root
			max_connections -1
			log_dest file $dir/mosquitto.log
			log_type error
			log_type warning
		EOF
		mosquitto -c "$dir/mosquitto.conf" >>"$dir/stderr.log" 2>&1 &
		pid=$!
		PIDS+=("$pid")
		if wait_for_port_or_exit "$port" "$pid"; then
			BROKER_PIDS[n - 1]=$pid
			BROKER_PORTS[n - 1]=$port
			log "mosquitto #$n on 127.0.0.1:$port (pid $pid)"
			return 0
		fi
		log "mosquitto #$n did not start on port $port (attempt $attempt)"
	done
	die "mosquitto #$n: $(tail -3 "$dir/stderr.log" "$dir/mosquitto.log" 2>/dev/null)"
}

# 0 once the port accepts connections, 1 if the process exited first; at most 10 s.
wait_for_port_or_exit() {
	local port=$1 pid=$2 deadline=$((SECONDS + 10))
	while ((SECONDS < deadline)); do
		port_open "$port" && return 0
		alive "$pid" || return 1
		sleep 0.1
	done
	return 1
}

# brokers_json N: N brokers b1..bN spread round-robin over the three mosquittos.
brokers_json() {
	local n=$1 i sep=""
	printf '{"brokers":['
	for ((i = 1; i <= n; i++)); do
		printf '%s{"id":"b%d","address":"127.0.0.1","port":%d}' \
			"$sep" "$i" "${BROKER_PORTS[(i - 1) % 3]}"
		sep=","
	done
	printf ']}\n'
}

PROXY_PID=""
PROXY_PORT=""

# start_proxy N_BROKERS [extra proxy flags...]
start_proxy() {
	local n=$1 dir=$WORK/proxy attempt http
	shift
	rm -rf "$dir"
	mkdir -p "$dir/data"
	brokers_json "$n" >"$dir/brokers.json"
	for attempt in 1 2 3; do
		PROXY_PORT=$(free_port)
		http=$(free_port)
		RUST_LOG=${RUST_LOG:-warn} "$PROXY" --allow-anonymous \
			--mqtt-listen "127.0.0.1:$PROXY_PORT" --http-listen "127.0.0.1:$http" \
			--data-dir "$dir/data" --brokers-file "$dir/brokers.json" "$@" \
			>"$WORK/proxy.log" 2>&1 &
		PROXY_PID=$!
		PIDS+=("$PROXY_PID")
		wait_for_port_or_exit "$PROXY_PORT" "$PROXY_PID" && return 0
		log "proxy did not start (attempt $attempt): $(tail -3 "$WORK/proxy.log")"
		stop_pid "$PROXY_PID"
	done
	die "mqtt-proxy did not start"
}

# Established connections the proxy holds to the mosquittos (its upstreams).
upstream_conns() {
	local filter="" port
	for port in "${BROKER_PORTS[@]}"; do
		filter+="${filter:+ or }dport = :$port"
	done
	ss -Htnp state established "( $filter )" | grep -c "pid=$PROXY_PID," || true
}
upstreams_are() { [[ $(upstream_conns) -eq $1 ]]; }

# start_devices COUNT [devices.py flags...]: stdout goes to $WORK/devices.out.
DEVICES_PID=""
start_devices() {
	local count=$1
	shift
	python3 "$DEVICES_PY" --port "$PROXY_PORT" --count "$count" --hold-secs 300 "$@" \
		<"$WORK/devices.ctl" >"$WORK/devices.out" 2>"$WORK/devices.err" &
	DEVICES_PID=$!
	PIDS+=("$DEVICES_PID")
	# The FIFO's write end stays open here so devices.py blocks on it, not on EOF.
	exec 7>"$WORK/devices.ctl"
}
devices_said() { grep -qx "$1" "$WORK/devices.out" || { grep -q '^error' "$WORK/devices.out" && die "devices: $(cat "$WORK/devices.out" "$WORK/devices.err")"; }; }
stop_devices() {
	exec 7>&-
	stop_pid "$DEVICES_PID"
}

# --- setup -------------------------------------------------------------------------------

ulimit -n "$FD_LIMIT" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open-file limit $(ulimit -n) (proxy, mosquittos and devices inherit it)"
for tool in mosquitto python3 ss; do
	command -v "$tool" >/dev/null || die "$tool is required"
done
if [[ ! -x $PROXY ]]; then
	log "building $PROXY"
	cargo build --release -p mqtt-proxy --manifest-path "$ROOT/Cargo.toml" >&2
fi
mkfifo "$WORK/devices.ctl"
for b in 1 2 3; do start_broker "$b"; done

# --- (a) + (b) idle --------------------------------------------------------------------

for n in 0 1 10 100; do
	start_proxy "$n"
	if ((n == 0)); then name="(a) idle, 0 brokers"; else name="(b) idle, $n brokers"; fi
	record "$name" "$PROXY_PID"
	stop_pid "$PROXY_PID"
done

# --- (c) devices × 3 brokers --------------------------------------------------------------

for count in $DEVICE_COUNTS; do
	start_proxy 3
	start_devices "$count" --client-prefix "mem-c$count-"
	wait_for 120 "$count device CONNACKs" devices_said "ready $count"
	wait_for 120 "$((count * 3)) upstream connections" upstreams_are $((count * 3))
	record "(c) $count devices × 3 brokers ($((count * 3)) upstream conns)" "$PROXY_PID"
	stop_devices
	stop_pid "$PROXY_PID"
done

# --- (d) burst into a paused broker ---------------------------------------------------------

start_proxy 3 --queue-max-messages "$QUEUE_CAP"
start_devices 1 --client-prefix mem-d- --bursts "$BURSTS" \
	--burst-messages "$BURST_MESSAGES" --payload-size "$BURST_PAYLOAD"
wait_for 30 "device CONNACK" devices_said "ready 1"
wait_for 30 "3 upstream connections" upstreams_are 3
record "(d) 1 device, before burst" "$PROXY_PID"
kill -STOP "${BROKER_PIDS[0]}"
log "mosquitto #1 paused (SIGSTOP)"
for ((burst = 1; burst <= BURSTS; burst++)); do
	echo go >&7
	wait_for 120 "burst $burst acknowledged" devices_said "burst $burst"
	record "(d) after burst $burst: $BURST_MESSAGES × ${BURST_PAYLOAD} B QoS 0, 1 broker paused, queue cap $QUEUE_CAP" "$PROXY_PID"
done
drops=$(grep -c "queue full" "$WORK/proxy.log" || true)
log "proxy logged $drops rate-limited 'queue full' warnings"
((drops > 0)) || log "warning: no 'queue full' warning: the kernel socket buffers took the whole burst"
kill -CONT "${BROKER_PIDS[0]}"
stop_devices
stop_pid "$PROXY_PID"

# --- report ---------------------------------------------------------------------------------

echo "| scenario | VmRSS MB | VmHWM MB |"
echo "|---|---:|---:|"
printf '%s\n' "${ROWS[@]}"
