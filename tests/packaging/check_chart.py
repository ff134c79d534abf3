#!/usr/bin/env python3
"""The chart agrees with the rest of the repository:
- Chart.yaml's version and appVersion are the workspace version (Cargo.toml), so the default
  image tags are the release's;
- the chart ships the generated CRDs: charts/mqtt-proxy-operator/crds/ holds the same files as
  crds/ (both written by the operator's crdgen);
- the default proxy image is the one the operator would pick itself (`--proxy-image`'s
  default, ghcr.io/mqtt-proxy/mqtt-proxy:<version>);
- the rendered operator Deployment, in every toggle, is locked down: non-root UID 10001,
  read-only root filesystem, no privilege escalation, all capabilities dropped, seccomp
  RuntimeDefault, resource requests, liveness /healthz and readiness /readyz on the metrics
  port; and the real operator binary (argv[1], optional) accepts its arguments.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/mqtt-proxy-operator"

problems = []


def fail(msg):
    problems.append(msg)


def render(values):
    out = subprocess.run(["helm", "template", "mqtt-proxy-operator", str(CHART), "-n", "mqtt",
                          "-f", str(values)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def check_deployment(dep, label, operator_bin):
    pod = dep["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001):
        fail(f"{label}: pod does not run as non-root UID 10001 ({psc})")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{label}: seccomp profile is not RuntimeDefault")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem"):
            fail(f"{label}: {c['name']}: root filesystem writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{label}: {c['name']}: privilege escalation allowed")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{label}: {c['name']}: capabilities not all dropped")
        if not c.get("resources", {}).get("requests"):
            fail(f"{label}: {c['name']}: no resource requests")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ports:
                fail(f"{label}: {c['name']}: {probe} is not GET {path} on a named container port")
        listen = [a for a in c.get("args", []) if a.startswith("--http-listen=")]
        if not listen or not listen[0].endswith(f":{ports.get('http-metrics')}"):
            fail(f"{label}: --http-listen {listen} is not the http-metrics port {ports}")
        if operator_bin:
            r = subprocess.run([operator_bin, *c.get("args", []), "--help"], capture_output=True,
                               text=True, timeout=30, check=False)
            if r.returncode != 0:
                fail(f"{label}: mqtt-proxy-operator refuses the chart's args {c.get('args')}: "
                     f"{r.stderr.strip()}")


def main():
    operator_bin = sys.argv[1] if len(sys.argv) > 1 else None
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key in ("version", "appVersion"):
        if str(chart.get(key)) != version:
            fail(f"Chart.yaml {key} {chart.get(key)} is not the workspace version {version}")

    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    if not generated:
        fail("crds/ holds no CRDs (cargo run -p mqtt-proxy-operator --bin crdgen)")
    elif generated != shipped:
        fail(f"chart crds/ {sorted(shipped)} differ from crds/ {sorted(generated)}: rerun crdgen")

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    main_rs = ROOT / "operator/src/main.rs"
    if main_rs.exists() and values["proxyImage"]["repository"] + ":" not in main_rs.read_text():
        fail(f"proxyImage.repository {values['proxyImage']['repository']} is not the operator's "
             "own --proxy-image default")

    for vf in sorted((ROOT / "tests/packaging/values").glob("*.yaml")):
        deps = [d for d in render(vf) if d["kind"] == "Deployment"]
        if len(deps) != 1:
            fail(f"{vf.name}: {len(deps)} Deployments rendered")
            continue
        check_deployment(deps[0], vf.name, operator_bin)
    if not problems:
        print(f"ok   chart: version {version}, CRDs as generated, Deployment locked down in every "
              f"toggle{', args accepted by mqtt-proxy-operator' if operator_bin else ''}")


if __name__ == "__main__":
    main()
    for p in problems:
        print(f"FAIL chart: {p}")
    sys.exit(1 if problems else 0)
