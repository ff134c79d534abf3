#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (a multi-document YAML file or stdin).

Each object goes to the validator that knows its kind:
- built-in kinds: kubernetes-validate --strict (bundled schemas of the Kubernetes versions
  given with -k; unknown fields are errors, and a kind it has no schema for is an error too,
  not the warning the CLI prints);
- MqttBroker / MqttProxy: the openAPIV3Schema of the served version in the CRDs under --crds
  (the operator's generated crds/), made strict: an unknown field is an error, as
  `kubectl --validate=strict` would report instead of letting the API server prune it;
- ServiceMonitor: prometheus-operator's own schema, compiled into the npm package
  @kubernetes-models/prometheus-operator (see servicemonitor.mjs and vendor/README.md).

Exit status 1 with one line per problem; 0 prints a one-line summary per kind.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
SERVICEMONITOR = ("monitoring.coreos.com", "ServiceMonitor")
# Our own API group: always validated against the CRDs, never looked up elsewhere.
OWN_GROUPS = {"mqttproxy.io"}


def load_docs(text):
    """The non-empty documents of a multi-document YAML text."""
    return [d for d in yaml.safe_load_all(text) if d]


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def k8s_schema_to_jsonschema(node, strict=True):
    """Turns a structural CRD schema into plain JSON Schema.

    nullable → null allowed; x-kubernetes-int-or-string → integer or string; with strict, an
    object that lists its properties and neither preserves unknown fields nor has
    additionalProperties refuses other keys. `metadata` is left to the API server.
    """
    if isinstance(node, list):
        return [k8s_schema_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: k8s_schema_to_jsonschema(v, strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = k8s_schema_to_jsonschema(value, strict)
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        strict
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class CrdIndex:
    """(group, version, kind) → validator, from every CRD in the given directories."""

    def __init__(self, dirs):
        self.schemas = {}
        self.files = []
        for d in dirs:
            for path in sorted(Path(d).glob("*.y*ml")):
                for doc in load_docs(path.read_text()):
                    if doc.get("kind") != "CustomResourceDefinition":
                        continue
                    self.files.append(path)
                    spec = doc["spec"]
                    for v in spec["versions"]:
                        if not v.get("served", True):
                            continue
                        schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                        schema = k8s_schema_to_jsonschema(schema)
                        # The object's envelope: what the API server checks outside the schema.
                        schema.setdefault("properties", {})
                        schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{v['name']}"}
                        schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
                        schema["properties"]["metadata"] = {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string", "minLength": 1}},
                        }
                        schema["required"] = sorted(set(schema.get("required", [])) | {"metadata"})
                        key = (spec["group"], v["name"], spec["names"]["kind"])
                        self.schemas[key] = jsonschema.Draft7Validator(schema)

    def groups(self):
        return {g for g, _, _ in self.schemas}

    def validate(self, obj):
        group, _, version = obj["apiVersion"].rpartition("/")
        validator = self.schemas.get((group, version, obj["kind"]))
        if validator is None:
            return [f"no served CRD version for {obj['apiVersion']} {obj['kind']} in {self.files}"]
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]


def validate_servicemonitors(objs):
    """Runs servicemonitor.mjs on the ServiceMonitors; a list of problems."""
    if not objs:
        return []
    cache = os.environ.get("MQTT_PROXY_CI_CACHE", "/var/cache/mqtt-proxy-ci")
    proc = subprocess.run(
        ["node", str(HERE / "servicemonitor.mjs"), str(Path(cache) / "npm-packaging")],
        input=json.dumps(objs),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()] or [
            f"servicemonitor.mjs exited {proc.returncode}"
        ]
    return []


def validate_objects(objs, crds, versions):
    problems = []
    monitors = []
    for obj in objs:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
            problems.append(f"{where}: not a Kubernetes object")
            continue
        group = group_of(obj["apiVersion"])
        if (group, obj["kind"]) == SERVICEMONITOR:
            monitors.append(obj)
        elif group in crds.groups() | OWN_GROUPS:
            problems += [f"{where}: {p}" for p in crds.validate(obj)]
        else:
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "<root>"
                    problems.append(f"{where} (k8s {version}): {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    problems.append(f"{where}: no schema for kind {obj['kind']} "
                                    f"({obj['apiVersion']}) in Kubernetes {version} or the CRDs")
    problems += validate_servicemonitors(monitors)
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="multi-document YAML files, or - for stdin")
    ap.add_argument("--crds", action="append", default=[], help="directory of CRD YAML (repeatable)")
    ap.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                    help="Kubernetes version of the bundled schemas (repeatable)")
    ap.add_argument("--label", default="", help="name of this render in messages")
    args = ap.parse_args()
    objs = []
    for f in args.files:
        objs += load_docs(sys.stdin.read() if f == "-" else Path(f).read_text())
    versions = args.versions or ["1.31.0"]
    problems = validate_objects(objs, CrdIndex(args.crds), versions)
    label = f"{args.label}: " if args.label else ""
    if not objs:
        problems.append("no objects rendered")
    if problems:
        for p in problems:
            print(f"FAIL {label}{p}")
        return 1
    kinds = Counter(o["kind"] for o in objs)
    print(f"ok   {label}{sum(kinds.values())} objects valid "
          f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; k8s {', '.join(versions)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
