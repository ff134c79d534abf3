#!/usr/bin/env python3
"""A real MQTT-over-WebSocket device for tests/edge_listeners.rs (paho-mqtt).

Subscribes to TOPIC, publishes COUNT QoS 1 messages to it through the proxy, and waits
until all of them come back (or TIMEOUT). Prints one JSON line:
{"connected": rc, "subscribed": bool, "published": n, "received": n}
Exit status 0 only when every message was published and received.
"""
import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--path", default="/mqtt")
p.add_argument("--cafile")
p.add_argument("--username")
p.add_argument("--password")
p.add_argument("--topic", default="ws/roundtrip")
p.add_argument("--count", type=int, default=10)
p.add_argument("--timeout", type=float, default=10.0)
p.add_argument("--v5", action="store_true")
a = p.parse_args()

proto = mqtt.MQTTv5 if a.v5 else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-device",
                transport="websockets", protocol=proto)
c.ws_set_options(path=a.path)
if a.cafile:
    c.tls_set(ca_certs=a.cafile)
    c.tls_insecure_set(False)
if a.username:
    c.username_pw_set(a.username, a.password)

state = {"connected": None, "subscribed": False, "published": 0, "received": 0}
connected = threading.Event()
subscribed = threading.Event()
done = threading.Event()


def on_connect(client, userdata, flags, rc, props=None):
    state["connected"] = int(rc.value if hasattr(rc, "value") else rc)
    connected.set()


def on_subscribe(client, userdata, mid, codes, props=None):
    state["subscribed"] = all(not getattr(c, "is_failure", False) for c in codes)
    subscribed.set()


def on_message(client, userdata, msg):
    state["received"] += 1
    if state["received"] >= a.count:
        done.set()


c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
deadline = time.monotonic() + a.timeout
try:
    c.connect(a.host, a.port, keepalive=30)
except Exception as e:  # connection refused, handshake refused
    print(json.dumps({**state, "error": str(e)}))
    sys.exit(2)
c.loop_start()
ok = False
try:
    if connected.wait(a.timeout) and state["connected"] == 0:
        c.subscribe(a.topic, qos=1)
        if subscribed.wait(max(0.0, deadline - time.monotonic())) and state["subscribed"]:
            for i in range(a.count):
                info = c.publish(a.topic, f"ws-{i}", qos=1)
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                if info.is_published():
                    state["published"] += 1
            done.wait(max(0.0, deadline - time.monotonic()))
            ok = state["published"] == a.count and state["received"] >= a.count
finally:
    c.disconnect()
    c.loop_stop()
print(json.dumps(state))
sys.exit(0 if ok else 1)
