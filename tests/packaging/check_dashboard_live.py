#!/usr/bin/env python3
"""The Grafana dashboard's queries, run by a real Prometheus against a real proxy.

1. `promtool check config` on deploy/prometheus/prometheus.yml (the compose monitoring
   profile's config) and `promtool check rules` on every dashboard query (Grafana's
   `$__rate_interval` and `$broker` substituted): PromQL that parses.
2. Two real mosquittos, the real proxy (argv[1]) fanning out to both from a brokers file, a
   subscribed device and a publishing device (mosquitto_pub/sub), and Prometheus (Debian's,
   extracted by tests/setup.d/60-packaging.sh) scraping the proxy's /metrics every second.
   Then each proxy panel's query returns data for both brokers: messages/s > 0, forwarding
   latency p50 and p99 > 0, queue depth, reconnects, devices connected >= 1, and the broker
   variable lists both brokers. Operator panels are left out (no operator runs here).
Every wait has a deadline; every process is stopped at the end.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/mqtt-proxy-operator/dashboards/mqtt-proxy.json"
PROM = Path(os.environ.get("MQTT_PROXY_CI_CACHE", "/var/cache/mqtt-proxy-ci")) / "prometheus/usr/bin"
BROKERS = ["dash-a", "dash-b"]
DEADLINE = 60.0
# Panels whose query must return one positive series per broker once traffic flowed.
PER_BROKER_POSITIVE = ["Messages forwarded /s per broker", "Forwarding latency p50 / p99"]
# Panels that must return series (possibly zero) for each broker.
PER_BROKER_PRESENT = ["Queue depth per broker", "Queued bytes per broker", "Upstream reconnects"]


def fail(msg):
    print(f"FAIL dashboard live: {msg}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queries():
    """(panel title, expr) of every dashboard query, Grafana variables substituted."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "20s").replace('"$broker"', '".*"')
            out.append((p["title"], expr))
    return out


def promtool_checks(tmp):
    r = subprocess.run([PROM / "promtool", "check", "config", "--syntax-only",
                        ROOT / "deploy/prometheus/prometheus.yml"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"promtool check config: {r.stdout} {r.stderr}")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, (_, e) in enumerate(queries())]}]}
    path = Path(tmp) / "rules.yml"
    path.write_text(json.dumps(rules))
    r = subprocess.run([PROM / "promtool", "check", "rules", path], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"promtool check rules (dashboard queries): {r.stdout} {r.stderr}")
    print(f"ok   promtool: compose prometheus.yml and {len(queries())} dashboard queries parse")


def start(cmd, log, **kw):
    return subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, **kw)


def wait(what, cond):
    end = time.monotonic() + DEADLINE
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > end:
            fail(f"{what} not within {DEADLINE}s")
        time.sleep(0.25)


def query(prom_url, expr):
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        fail(f"query {expr}: {body}")
    return body["data"]["result"]


def live(binary, tmp):
    procs = []
    log = open(Path(tmp) / "processes.log", "w")
    try:
        ports = {}
        for name in BROKERS:
            port = free_port()
            conf = Path(tmp) / f"{name}.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                            + ("user root\n" if os.getuid() == 0 else ""))
            procs.append(start(["mosquitto", "-c", conf], log))
            ports[name] = port
        for name, port in ports.items():
            wait(f"mosquitto {name}", lambda p=port: socket.create_connection(("127.0.0.1", p), 1).close() is None)
        brokers = Path(tmp) / "brokers.json"
        brokers.write_text(json.dumps({"brokers": [
            {"id": n, "name": n, "address": "127.0.0.1", "port": p} for n, p in ports.items()]}))
        http, mqtt = free_port(), free_port()
        procs.append(start([binary, "--brokers-file", brokers, "--data-dir", tmp,
                            "--http-listen", f"127.0.0.1:{http}", "--mqtt-listen", f"127.0.0.1:{mqtt}"],
                           log, env={**os.environ, "RUST_LOG": "warn", "MQTT_PROXY_ADMIN_TOKEN": "dash",
                                           "MQTT_PROXY_ALLOW_ANONYMOUS": "true"}))
        wait("the proxy's /healthz", lambda: subprocess.run(
            [binary, "healthcheck", f"http://127.0.0.1:{http}/healthz"], capture_output=True).returncode == 0)

        prom_port = free_port()
        prom_conf = Path(tmp) / "prometheus.yml"
        prom_conf.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "mqtt-proxy", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [f"127.0.0.1:{http}"]}]}]}))
        procs.append(start([PROM / "prometheus", f"--config.file={prom_conf}",
                            f"--storage.tsdb.path={Path(tmp) / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}"], log))
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait("Prometheus scraping the proxy", lambda: any(
            r["value"][1] == "1" for r in query(prom_url, 'up{job="mqtt-proxy"}')))

        # A subscribed device (devices_connected stays >= 1) and one publishing QoS 1 lines.
        procs.append(start(["mosquitto_sub", "-h", "127.0.0.1", "-p", mqtt, "-i", "dash-sub",
                            "-t", "sensors/#"], subprocess.DEVNULL))
        pub = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt), "-i", "dash-pub",
                                "-q", "1", "-t", "sensors/dash", "-l"], stdin=subprocess.PIPE,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
        procs.append(pub)

        def traffic_seen():
            pub.stdin.write("21.5\n")
            pub.stdin.flush()
            for title, expr in queries():
                if title in PER_BROKER_POSITIVE:
                    res = query(prom_url, expr)
                    got = {r["metric"].get("broker") for r in res if float(r["value"][1]) > 0}
                    if not set(BROKERS) <= got:
                        return False
            return True
        wait("traffic in the per-broker rate and latency panels", traffic_seen)

        for title, expr in queries():
            if "mqtt_proxy_operator_" in expr:
                continue
            res = query(prom_url, expr)
            if title in PER_BROKER_PRESENT + PER_BROKER_POSITIVE:
                got = {r["metric"].get("broker") for r in res}
                if not set(BROKERS) <= got:
                    fail(f"{title!r}: series for {sorted(got)}, want {BROKERS} ({expr})")
            if title == "Devices connected" and not (res and float(res[0]["value"][1]) >= 1):
                fail(f"{title!r}: {res}")
        dash = json.loads(DASHBOARD.read_text())
        var = next(v for v in dash["templating"]["list"] if v["name"] == "broker")
        metric = re.match(r"label_values\((\w+), broker\)", var["definition"]).group(1)
        url = f"{prom_url}/api/v1/label/broker/values?" + urllib.parse.urlencode({"match[]": metric})
        with urllib.request.urlopen(url, timeout=10) as r:
            values = json.load(r)["data"]
        if not set(BROKERS) <= set(values):
            fail(f"broker variable ({var['definition']}) lists {values}, want {BROKERS}")
        print("ok   dashboard live: a real Prometheus scraping a real proxy fanning out to two "
              "mosquittos fills the rate, latency p50/p99, queue, reconnect and device panels "
              "for both brokers; the broker variable lists both")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def main():
    binary = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="dashboard-live-") as tmp:
        promtool_checks(tmp)
        try:
            live(binary, tmp)
        except SystemExit:
            log = Path(tmp) / "processes.log"
            if log.exists():
                print("processes.log (last lines):\n" + "\n".join(log.read_text().splitlines()[-30:]))
            raise


if __name__ == "__main__":
    main()
