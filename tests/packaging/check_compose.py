#!/usr/bin/env python3
"""docker-compose.yml, checked with the real docker-compose (no engine needed) and by reading
the configuration it resolves:
- `docker-compose config -q` passes for every profile and for all of them together;
- it refuses to run without MQTT_PROXY_SECRET or MQTT_PROXY_ADMIN_TOKEN, naming the variable,
  .env.example lists every variable the file requires, and .env is git-ignored;
- the proxy: built from the Dockerfile's `proxy` target, store on a named volume at /data,
  read-only root, ports 1883 and 3000, a healthcheck running `mqtt-proxy healthcheck`, a
  restart policy;
- every bind-mounted file exists; Grafana mounts the chart's dashboard file itself (one
  source); Prometheus scrapes the proxy service's /metrics; Grafana's data source points at
  the Prometheus service; the demo brokers point at the demo's broker services.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = os.environ.get("DOCKER_COMPOSE", "docker-compose")
DUMMY = {"MQTT_PROXY_SECRET": "ci-secret", "MQTT_PROXY_ADMIN_TOKEN": "ci-token"}
# An empty env file: a developer's .env in the checkout must not make the checks pass.
EMPTY_ENV = tempfile.NamedTemporaryFile("w", prefix="compose-env-", suffix=".env", delete=False).name
PROFILES = [[], ["demo"], ["monitoring"], ["demo", "monitoring"]]
DASHBOARD = ROOT / "charts/mqtt-proxy-operator/dashboards/mqtt-proxy.json"

problems = []


def fail(msg):
    problems.append(msg)


def compose(args, env_over, drop=()):
    # A clean environment: no .env from the checkout or the caller's variables leak in.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MQTT_PROXY_", "COMPOSE_")) and k not in drop}
    env.update(env_over)
    return subprocess.run(
        [COMPOSE, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "--env-file", EMPTY_ENV, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def mount(m):
    """A volume entry as {type, source, target}, from the long or the short syntax (v1)."""
    if isinstance(m, dict):
        return m
    parts = m.split(":")
    source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
    kind = "bind" if source and source.startswith(("/", ".", "~")) else "volume"
    return {"type": kind, "source": source, "target": target}


def port_target(p):
    """The container port of a ports entry (long or short syntax)."""
    if isinstance(p, dict):
        return str(p.get("target"))
    return str(p).split(":")[-1].split("/")[0]


def profile_args(profiles):
    return [a for p in profiles for a in ("--profile", p)]


def main():
    for profiles in PROFILES:
        r = compose([*profile_args(profiles), "config", "-q"], DUMMY)
        name = "+".join(profiles) or "default"
        if r.returncode != 0:
            fail(f"`docker-compose config -q` ({name}): {r.stderr.strip()}")
        else:
            print(f"ok   compose config -q, profile {name}")

    for var in DUMMY:
        env = {k: v for k, v in DUMMY.items() if k != var}
        r = compose(["config", "-q"], env)
        if r.returncode == 0 or var not in r.stderr:
            fail(f"compose runs without {var} (want a `${{{var}:?…}}` refusal), got: {r.stderr.strip()}")

    # The secrets live in .env: git must never pick it up.
    if subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode != 0:
        fail(".env (the compose secrets) is not git-ignored")
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = (ROOT / ".env.example").read_text()
    for var in sorted(required):
        if not re.search(rf"^{var}=", example, re.M):
            fail(f".env.example does not list {var}, which docker-compose.yml requires")

    r = compose([*profile_args(["demo", "monitoring"]), "config"], DUMMY)
    if r.returncode != 0:
        fail(f"`docker-compose config`: {r.stderr.strip()}")
        return
    cfg = yaml.safe_load(r.stdout)
    services = cfg["services"]

    proxy = services.get("mqtt-proxy", {})
    build = proxy.get("build", {})
    if build.get("target") != "proxy":
        fail("mqtt-proxy: not built from the Dockerfile's `proxy` target")
    mounts = [mount(m) for m in proxy.get("volumes", [])]
    data = [m for m in mounts if m.get("target") == "/data"]
    if not data or data[0].get("type") != "volume" or data[0].get("source") not in cfg.get("volumes", {}):
        fail(f"mqtt-proxy: /data is not a named volume ({data})")
    if not proxy.get("read_only"):
        fail("mqtt-proxy: root filesystem not read-only (it writes only under /data)")
    published = sorted(port_target(p) for p in proxy.get("ports", []))
    if published != ["1883", "3000"]:
        fail(f"mqtt-proxy: ports {published}, want 1883 and 3000")
    test = proxy.get("healthcheck", {}).get("test")
    if test != ["CMD", "/usr/local/bin/mqtt-proxy", "healthcheck"]:
        fail(f"mqtt-proxy: healthcheck {test}")
    if proxy.get("restart") not in ("always", "unless-stopped", "on-failure"):
        fail(f"mqtt-proxy: restart policy {proxy.get('restart')}")

    for name, svc in services.items():
        for m in map(mount, svc.get("volumes", [])):
            if m.get("type") == "bind" and not Path(m["source"]).exists():
                fail(f"{name}: bind-mounted {m['source']} does not exist")

    grafana = services.get("grafana", {})
    if not any(m.get("type") == "bind" and Path(m["source"]).resolve() == DASHBOARD.resolve()
               for m in map(mount, grafana.get("volumes", []))):
        fail(f"grafana: does not mount {DASHBOARD.relative_to(ROOT)} (the chart's dashboard file)")

    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [(job.get("metrics_path", "/metrics"), t) for job in prom["scrape_configs"]
               for sc in job.get("static_configs", []) for t in sc["targets"]]
    if ("/metrics", "mqtt-proxy:3000") not in targets:
        fail(f"prometheus.yml does not scrape mqtt-proxy:3000/metrics ({targets})")
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    urls = [d["url"] for d in ds["datasources"]]
    if "prometheus" not in services or "http://prometheus:9090" not in urls:
        fail(f"grafana data source {urls} is not the compose prometheus service")

    for f in sorted((ROOT / "deploy/demo/brokers").glob("*.json")):
        b = json.loads(f.read_text())
        if b.get("address") not in services or "demo" not in services[b["address"]].get("profiles", []):
            fail(f"{f.relative_to(ROOT)}: address {b.get('address')} is not a demo broker service")


if __name__ == "__main__":
    try:
        main()
    finally:
        os.unlink(EMPTY_ENV)
    for p in problems:
        print(f"FAIL compose: {p}")
    sys.exit(1 if problems else 0)
