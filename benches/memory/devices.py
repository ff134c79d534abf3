#!/usr/bin/env python3
"""Fake devices for benches/memory.sh: N raw-socket MQTT 3.1.1 connections to the proxy.

Each connection sends a hand-built CONNECT (clean session, keepalive 60), waits for its
CONNACK, and is then kept alive with PINGREQ every 30 s until SIGTERM/SIGINT or --hold-secs
runs out. Optionally the first connection sends a burst of QoS 0 PUBLISHes followed by one
QoS 1 PUBLISH whose PUBACK proves that the proxy's session has taken in the whole burst
(under the default `queued` ack policy the PUBACK comes after the fan-out).

Progress goes to stdout, one line per milestone, so the shell can wait on it with a
deadline: `ready <n>` once every CONNACK arrived, `burst <n>` after each acknowledged burst.
Each burst starts when a line arrives on stdin, so the shell can pause a broker first and
measure memory in between.

Standard library only; every blocking step has a timeout.
"""

import argparse
import resource
import selectors
import signal
import socket
import struct
import sys
import time

KEEPALIVE = 60
PING_EVERY = 30
IO_TIMEOUT = 20.0


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def mqtt_str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str) -> bytes:
    # Variable header: protocol name "MQTT", level 4, flags 0x02 (clean session), keepalive.
    body = mqtt_str(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", KEEPALIVE)
    body += mqtt_str(client_id.encode())
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, pkid: int = 0) -> bytes:
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", pkid)
    body += payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the proxy")
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """One packet: (first header byte, body)."""
    first = recv_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        b = recv_exact(sock, 1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, recv_exact(sock, length)


def open_devices(port: int, count: int, prefix: str) -> list[socket.socket]:
    socks = []
    # Send every CONNECT first, then collect the CONNACKs: the proxy handles the
    # handshakes concurrently instead of one round trip at a time.
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(f"{prefix}{i}"))
        socks.append(s)
    for i, s in enumerate(socks):
        first, body = read_packet(s)
        if first >> 4 != 2 or len(body) < 2 or body[1] != 0:
            raise ConnectionError(f"device {i}: no successful CONNACK ({first:#x} {body!r})")
    return socks


def burst(sock: socket.socket, messages: int, payload_size: int, topic: bytes, pkid: int):
    payload = b"x" * payload_size
    packet = publish_packet(topic, payload, 0)
    chunk = packet * 64
    sent = 0
    while sent + 64 <= messages:
        sock.sendall(chunk)
        sent += 64
    for _ in range(messages - sent):
        sock.sendall(packet)
    # The marker: its PUBACK comes after every earlier publish was fanned out.
    sock.sendall(publish_packet(topic, b"end-of-burst", 1, pkid))
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        first, body = read_packet(sock)
        if first >> 4 == 4 and body[:2] == struct.pack("!H", pkid):
            return
    raise TimeoutError("no PUBACK for the end-of-burst marker")


def hold(socks: list[socket.socket], seconds: float):
    """Keeps the connections alive (PINGREQ) and drains what the proxy sends."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    end = time.monotonic() + seconds
    next_ping = time.monotonic() + PING_EVERY
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            try:
                if not key.fileobj.recv(65536):
                    sel.unregister(key.fileobj)
            except BlockingIOError:
                pass
        if time.monotonic() >= next_ping:
            for s in socks:
                try:
                    s.send(b"\xc0\x00")
                except OSError:
                    pass
            next_ping += PING_EVERY


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--client-prefix", default="memdev-")
    ap.add_argument("--bursts", type=int, default=0, help="bursts sent by device 0")
    ap.add_argument("--burst-messages", type=int, default=20000)
    ap.add_argument("--payload-size", type=int, default=1024)
    ap.add_argument("--topic", default="sensors/dev-0/load")
    ap.add_argument("--hold-secs", type=float, default=600)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.count + 64) if hard != resource.RLIM_INFINITY else args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def on_signal(_sig, _frame):
        # Exit from wherever we are (also a blocked stdin read); the kernel closes sockets.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    socks = open_devices(args.port, args.count, args.client_prefix)
    print(f"ready {len(socks)}", flush=True)
    for n in range(1, args.bursts + 1):
        if not sys.stdin.readline():
            break
        burst(socks[0], args.burst_messages, args.payload_size, args.topic.encode(), n)
        print(f"burst {n}", flush=True)
    hold(socks, args.hold_secs)
    for s in socks:
        s.close()


if __name__ == "__main__":
    try:
        main()
    except (OSError, TimeoutError) as e:
        print(f"error {e}", flush=True)
        sys.exit(1)
