#!/usr/bin/env python3
"""Keeps the Dockerfile in step with what CI builds and tests, so it cannot silently rot.

No Docker engine runs here, so the image is never built in CI; instead this reads the
Dockerfile and checks it against the workspace (`cargo metadata`), the web UI's package.json,
the CI scripts and the workspace version:
- the `cargo build` and `cargo chef cook` package sets are the same, are workspace members
  (so `cargo test/clippy --workspace` covers them), use --release --locked, and provide every
  binary the final stages copy and run;
- the UI stage runs exactly the npm commands of proxy/build.rs (how `cargo build`/`cargo test`
  in CI build the UI), the `build` script exists, and its output is copied into the Rust
  build before `cargo build`, which then skips build.rs's own npm run;
- targets `proxy` and `operator` exist, run as UID 10001 with no RUN (a shell-less base), the
  proxy's data dir is /data, owned by 10001, and its HEALTHCHECK calls `mqtt-proxy healthcheck`
  (which main.rs must dispatch);
- OCI labels are set and ARG VERSION defaults to the workspace version;
- .dockerignore keeps secrets and build output out and lets in what COPY needs.
"""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UID = "10001"
OCI_LABELS = ["title", "description", "version", "revision", "source", "licenses"]

problems = []


def fail(msg):
    problems.append(msg)


def parse_dockerfile(text):
    """[(stage name, base, [(instruction, args)])], line continuations joined."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages = []
    for line in lines:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            stages.append((m.group(2) or str(len(stages)), m.group(1), []))
        elif stages:
            stages[-1][2].append((instr, args.strip()))
    return stages


def cargo_packages(args, subcommand):
    """The -p/--package values of a `cargo <subcommand>` inside a RUN line, or None."""
    for part in re.split(r"&&|;", args):
        words = shlex.split(part)
        for i in range(len(words) - 1):
            if words[i] == "cargo" and words[i + 1:i + 1 + len(subcommand)] == subcommand:
                rest = words[i + 1 + len(subcommand):]
                pkgs = {rest[j + 1] for j, w in enumerate(rest[:-1]) if w in ("-p", "--package")}
                return pkgs, rest
    return None


def main():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = parse_dockerfile(dockerfile)
    by_name = {name: (base, instrs) for name, base, instrs in stages}

    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    members = {p["name"]: p for p in meta["packages"] if p["id"] in meta["workspace_members"]}
    bin_owner = {t["name"]: p["name"] for p in members.values()
                 for t in p["targets"] if "bin" in t["kind"]}
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]

    # --- Rust build: package sets ------------------------------------------------------------
    build_stage = cook = build = None
    for name, _, instrs in stages:
        for instr, args in instrs:
            if instr != "RUN":
                continue
            if (found := cargo_packages(args, ["build"])) is not None:
                build_stage, build = name, found
            if (found := cargo_packages(args, ["chef", "cook"])) is not None:
                cook = found
    if build is None:
        fail("no `cargo build` in any stage")
        return
    pkgs, rest = build
    for flag in ("--release", "--locked"):
        if flag not in rest:
            fail(f"`cargo build` lacks {flag} (CI builds from Cargo.lock)")
    for p in sorted(pkgs - members.keys()):
        fail(f"`cargo build -p {p}`: not a workspace member, so CI neither builds nor tests it")
    if cook is None:
        fail("no `cargo chef cook`: dependencies are not cached in their own layer")
    elif cook[0] != pkgs:
        fail(f"`cargo chef cook` packages {sorted(cook[0])} differ from `cargo build` {sorted(pkgs)}")
    elif "--release" not in cook[1] or "--locked" not in cook[1]:
        fail("`cargo chef cook` must use --release --locked like `cargo build`")

    # --- final stages --------------------------------------------------------------------------
    expected = {"proxy": "mqtt-proxy", "operator": "mqtt-proxy-operator"}
    build_instrs = by_name[build_stage][1]
    for target, binary in expected.items():
        if target not in by_name:
            fail(f"no `{target}` stage (docker build --target {target})")
            continue
        base, instrs = by_name[target]
        owner = bin_owner.get(binary)
        if owner is None:
            fail(f"target {target}: no workspace package has a bin `{binary}`")
        elif owner not in pkgs:
            fail(f"target {target}: bin `{binary}` is in package {owner}, which `cargo build` does not build")
        if not any(f"target/release/{binary}" in a for i, a in build_instrs if i == "RUN"):
            fail(f"build stage never takes target/release/{binary}")
        users = [a for i, a in instrs if i == "USER"]
        if users != [f"{UID}:{UID}"]:
            fail(f"target {target}: USER is {users}, want one `USER {UID}:{UID}`")
        if any(i == "RUN" for i, _ in instrs):
            fail(f"target {target}: RUN in a final stage needs a shell the runtime must not have")
        if "distroless" not in base:
            fail(f"target {target}: base {base} is not distroless (a shell at runtime)")
        entry = [a for i, a in instrs if i == "ENTRYPOINT"]
        if entry != [json.dumps([f"/usr/local/bin/{binary}"])]:
            fail(f"target {target}: ENTRYPOINT {entry}, want [\"/usr/local/bin/{binary}\"]")
        copies = [a for i, a in instrs if i == "COPY"]
        if not any(a.endswith(f"/usr/local/bin/{binary}") and f"--from={build_stage}" in a for a in copies):
            fail(f"target {target}: /usr/local/bin/{binary} is not copied from stage {build_stage}")
        labels = " ".join(a for i, a in instrs if i == "LABEL")
        for key in OCI_LABELS:
            if f"org.opencontainers.image.{key}=" not in labels:
                fail(f"target {target}: OCI label org.opencontainers.image.{key} missing")
        if 'org.opencontainers.image.version="${VERSION}"' not in labels:
            fail(f"target {target}: image version label is not the VERSION build arg")
        if f'org.opencontainers.image.licenses="{workspace["license"]}"' not in labels:
            fail(f"target {target}: licenses label differs from Cargo.toml ({workspace['license']})")
        versions = [a for i, a in instrs if i == "ARG" and a.startswith("VERSION")]
        if versions != [f"VERSION={workspace['version']}"]:
            fail(f"target {target}: ARG {versions}, want VERSION={workspace['version']} (Cargo.toml)")

    # --- proxy specifics: data dir, healthcheck ------------------------------------------------
    if "proxy" in by_name:
        instrs = by_name["proxy"][1]
        env = " ".join(a for i, a in instrs if i == "ENV")
        if "MQTT_PROXY_DATA_DIR=/data" not in env:
            fail("proxy: MQTT_PROXY_DATA_DIR is not /data")
        if ("VOLUME", '["/data"]') not in instrs:
            fail('proxy: no VOLUME ["/data"]')
        if not any(i == "COPY" and f"--chown={UID}:{UID}" in a and a.endswith(" /data") for i, a in instrs):
            fail(f"proxy: /data is not created owned by {UID} (distroless has no mkdir)")
        health = [a for i, a in instrs if i == "HEALTHCHECK"]
        if not health or '["/usr/local/bin/mqtt-proxy", "healthcheck"]' not in health[0]:
            fail("proxy: HEALTHCHECK does not run `mqtt-proxy healthcheck`")
        main_rs = (ROOT / "proxy/src/main.rs").read_text()
        if 'Some("healthcheck")' not in main_rs or not (ROOT / "proxy/src/healthcheck.rs").exists():
            fail("proxy/src/main.rs does not dispatch `healthcheck` (the image's HEALTHCHECK)")
        exposed = " ".join(a for i, a in instrs if i == "EXPOSE").split()
        if sorted(exposed) != ["1883", "3000"]:
            fail(f"proxy: EXPOSE {exposed}, want 1883 3000")

    # --- web UI --------------------------------------------------------------------------------
    ui = [(n, instrs) for n, base, instrs in stages if base.startswith("node:")]
    if not ui:
        fail("no node stage building the web UI")
    else:
        ui_name, instrs = ui[0]
        runs = [a for i, a in instrs if i == "RUN"]
        workdir = [a for i, a in instrs if i == "WORKDIR"]
        if not workdir or not workdir[-1].endswith("/web-ui"):
            fail(f"UI stage: WORKDIR {workdir} is not web-ui")
        ci_idx = next((k for k, r in enumerate(runs) if r.startswith("npm ci")), None)
        build_idx = next((k for k, r in enumerate(runs) if r == "npm run build"), None)
        if ci_idx is None or build_idx is None or ci_idx > build_idx:
            fail(f"UI stage: want `npm ci` then `npm run build`, found {runs}")
        # proxy/build.rs is how CI builds the UI (cargo build/test run it): same npm commands.
        build_rs = ROOT / "proxy/build.rs"
        ci_cmds = []
        if build_rs.exists():
            for args in re.findall(r"run\(&ui, &\[([^\]]*)\]\)", build_rs.read_text()):
                ci_cmds.append(" ".join(["npm", *re.findall(r'"([^"]*)"', args)]))
        if not ci_cmds:
            fail("proxy/build.rs runs no npm command: cannot tell how CI builds the UI")
        elif [r for r in runs if r.startswith("npm ")] != ci_cmds:
            fail(f"UI stage runs {[r for r in runs if r.startswith('npm ')]}, "
                 f"proxy/build.rs (what CI runs) {ci_cmds}")
        pkg = ROOT / "web-ui/package.json"
        if not pkg.exists():
            fail("web-ui/package.json missing (the UI stage copies it)")
        elif "build" not in json.loads(pkg.read_text()).get("scripts", {}):
            fail("web-ui/package.json has no `build` script")
        if not (ROOT / "web-ui/package-lock.json").exists():
            fail("web-ui/package-lock.json missing (`npm ci` needs it)")
        ui_copy = [a for i, a in build_instrs if i == "COPY" and f"--from={ui_name}" in a]
        if not any(a.split()[-2].endswith("/web-ui/dist") and a.split()[-1] == "web-ui/dist" for a in ui_copy):
            fail(f"build stage does not copy web-ui/dist from stage {ui_name}")
        else:
            order = [(i, a) for i, a in build_instrs]
            copy_at = next(k for k, (i, a) in enumerate(order) if i == "COPY" and f"--from={ui_name}" in a)
            build_at = next(k for k, (i, a) in enumerate(order) if i == "RUN" and "cargo build" in a)
            if copy_at > build_at:
                fail("web-ui/dist is copied after `cargo build`: the binary would embed no UI")
            build_run = next(a for i, a in order if i == "RUN" and "cargo build" in a)
            if "MQTT_PROXY_SKIP_UI_BUILD=1" not in build_run:
                fail("`cargo build` does not set MQTT_PROXY_SKIP_UI_BUILD=1: build.rs would try "
                     "npm in a stage without node instead of embedding the UI stage's dist")

    # --- .dockerignore -------------------------------------------------------------------------
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for must in (".env", "target", "data", "web-ui/dist", ".git"):
        if must not in ignore:
            fail(f".dockerignore does not exclude {must}")
    if not any("node_modules" in entry for entry in ignore):
        fail(".dockerignore does not exclude node_modules")
    # Cargo loads every workspace member's manifest and targets, even for `-p` builds.
    member_dirs = {str(Path(p["manifest_path"]).parent.relative_to(ROOT)) for p in members.values()}
    for needed in {"Cargo.lock", "Cargo.toml", "web-ui/package-lock.json", "web-ui", *member_dirs}:
        if needed in ignore or f"{needed}/" in ignore:
            fail(f".dockerignore excludes {needed}, which the build needs")


if __name__ == "__main__":
    main()
    for p in problems:
        print(f"FAIL Dockerfile: {p}")
    if not problems:
        print("ok   Dockerfile: package set, UI build, targets, user, labels, healthcheck, .dockerignore")
    sys.exit(1 if problems else 0)
