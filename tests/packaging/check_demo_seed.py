#!/usr/bin/env python3
"""The compose demo's seeding and the image's health probe, run against the real proxy.

Starts the mqtt-proxy binary (argv[1]) on free loopback ports with a temporary store, then:
- `mqtt-proxy healthcheck`, run as the image's HEALTHCHECK runs it (no argument, the
  image's MQTT_PROXY_HTTP_LISTEN), exits 0 once the proxy serves /healthz and 1 after the
  proxy has stopped;
- deploy/demo/seed.sh adds the demo brokers through the admin API (what the compose
  `demo-seed` service runs), and a second run finds them there (409, still exit 0);
- GET /api/brokers then lists exactly the demo brokers with the fields of their JSON files.
Every wait has a deadline.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy/demo"
TOKEN = "demo-seed-check-token"
DEADLINE = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(msg):
    print(f"FAIL demo seed: {msg}")
    sys.exit(1)


def main():
    binary = Path(sys.argv[1]).resolve()
    http, mqtt = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    with tempfile.TemporaryDirectory(prefix="demo-seed-") as data:
        env = {**os.environ, "MQTT_PROXY_SECRET": "demo-seed-check-secret",
               "MQTT_PROXY_ADMIN_TOKEN": TOKEN, "RUST_LOG": "warn"}
        proxy = subprocess.Popen(
            [str(binary), "--data-dir", data, "--http-listen", f"127.0.0.1:{http}",
             "--mqtt-listen", f"127.0.0.1:{mqtt}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # As the image's HEALTHCHECK runs it: no argument, the port from
            # MQTT_PROXY_HTTP_LISTEN=0.0.0.0:<port> (the image's ENV), probed on loopback.
            probe = [str(binary), "healthcheck"]
            probe_env = {**os.environ, "MQTT_PROXY_HTTP_LISTEN": f"0.0.0.0:{http}"}
            end = time.monotonic() + DEADLINE
            while subprocess.run(probe, env=probe_env, capture_output=True, timeout=10).returncode != 0:
                if proxy.poll() is not None:
                    fail(f"proxy exited {proxy.returncode}: {proxy.stderr.read().decode()}")
                if time.monotonic() > end:
                    fail(f"`mqtt-proxy healthcheck` not healthy within {DEADLINE}s")
                time.sleep(0.2)

            seed_env = {**os.environ, "DEMO_DIR": str(DEMO), "MQTT_PROXY_URL": url,
                        "MQTT_PROXY_ADMIN_TOKEN": TOKEN}
            first = subprocess.run(["sh", str(DEMO / "seed.sh")], env=seed_env,
                                   capture_output=True, text=True, timeout=60)
            second = subprocess.run(["sh", str(DEMO / "seed.sh")], env=seed_env,
                                    capture_output=True, text=True, timeout=60)
            if first.returncode != 0 or "added" not in first.stdout:
                fail(f"seed.sh: {first.returncode} {first.stdout} {first.stderr}")
            if second.returncode != 0 or "already there" not in second.stdout:
                fail(f"seed.sh rerun: {second.returncode} {second.stdout} {second.stderr}")

            req = urllib.request.Request(f"{url}/api/brokers",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                listed = json.load(resp)
            listed = listed.get("brokers", listed) if isinstance(listed, dict) else listed
            by_id = {b["id"]: b for b in listed}
            files = sorted((DEMO / "brokers").glob("*.json"))
            wanted = {json.loads(f.read_text())["id"]: json.loads(f.read_text()) for f in files}
            if sorted(by_id) != sorted(wanted):
                fail(f"store holds {sorted(by_id)}, want {sorted(wanted)}")
            for bid, spec in wanted.items():
                for key, value in spec.items():
                    if by_id[bid].get(key) != value:
                        fail(f"broker {bid}: {key} is {by_id[bid].get(key)!r}, seeded {value!r}")
        finally:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        if subprocess.run(probe, env=probe_env, capture_output=True, timeout=10).returncode != 1:
            fail("`mqtt-proxy healthcheck` still healthy after the proxy stopped")
    print(f"ok   demo seed: healthcheck 0/1 around a real proxy; seed.sh added "
          f"{', '.join(sorted(wanted))} through the API, rerun idempotent")


if __name__ == "__main__":
    main()
