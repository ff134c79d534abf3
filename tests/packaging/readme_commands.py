#!/usr/bin/env python3
"""The README's "Docker Compose" and "Helm" commands work as written, as far as this machine
can show without an engine or a cluster:
- each `helm install|upgrade --install RELEASE CHART ARGS…` is rendered as
  `helm template RELEASE CHART ARGS…` and validated like the chart toggles (manifests.py);
- each `docker compose … up` is checked as `docker-compose … config -q` (with stand-in secrets,
  as the README's `.env` line would provide);
- files named in those commands (values files, examples/) exist.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def section(text, title):
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    return m.group(1) if m else ""


def commands(block_text):
    """Shell lines of the ```sh blocks, continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", block_text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def main():
    readme = (ROOT / "README.md").read_text()
    problems, ran = [], 0
    helm = [c for c in commands(section(readme, "Helm")) if c.startswith("helm ")]
    if not any(c.startswith("helm install mqtt-proxy-operator charts/mqtt-proxy-operator -n mqtt --create-namespace")
               for c in helm):
        problems.append("the Helm section lacks `helm install mqtt-proxy-operator charts/mqtt-proxy-operator -n mqtt --create-namespace`")
    if "kubectl apply -f examples/" not in section(readme, "Helm"):
        problems.append("the Helm section lacks `kubectl apply -f examples/`")
    for cmd in helm:
        words = shlex.split(cmd)
        if words[1] == "install":
            rest = words[2:]
        elif words[1:3] == ["upgrade", "--install"]:
            rest = words[3:]
        else:
            continue
        rest = [w for w in rest if w != "--create-namespace"]
        for i, w in enumerate(rest[:-1]):
            if w in ("-f", "--values") and not (ROOT / rest[i + 1]).exists():
                problems.append(f"`{cmd}`: {rest[i + 1]} does not exist")
        render = subprocess.run(["helm", "template", *rest], cwd=ROOT, capture_output=True, text=True)
        if render.returncode != 0:
            problems.append(f"`{cmd}`: helm template failed: {render.stderr.strip()}")
            continue
        check = subprocess.run(
            [sys.executable, str(HERE / "manifests.py"), "-", "--crds", "crds", "-k", "1.31.0",
             "--label", "README"], cwd=ROOT, input=render.stdout, capture_output=True, text=True)
        if check.returncode != 0:
            problems.append(f"`{cmd}`: {check.stdout.strip()}")
        ran += 1
    if not (ROOT / "examples").is_dir():
        problems.append("examples/ (kubectl apply -f examples/) does not exist")

    compose = [c for c in commands(section(readme, "Docker Compose")) if c.startswith("docker compose")]
    env = {**os.environ, "MQTT_PROXY_SECRET": "readme", "MQTT_PROXY_ADMIN_TOKEN": "readme"}
    for cmd in compose:
        words = shlex.split(cmd)[2:]
        if "up" not in words:
            continue
        args = [w for w in words[: words.index("up")]]
        r = subprocess.run(["docker-compose", *args, "config", "-q"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"`{cmd}`: docker-compose config: {r.stderr.strip()}")
        ran += 1
    if not compose:
        problems.append("the Docker Compose section has no `docker compose … up` command")
    for p in problems:
        print(f"FAIL README commands: {p}")
    if not problems:
        print(f"ok   README commands: {ran} helm/compose commands render and validate as written")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
