#!/usr/bin/env python3
"""The chart grants exactly the API calls the operator makes — no more, no less.

operator/RBAC.md (owned by the operator) lists every call in a Markdown table with columns
for the API group, the resource(s) and the verbs; the operator's tests keep it true. This
renders the chart (helm template) and compares its rules with that table:
- watchNamespaces empty: the ClusterRole holds every listed permission;
- watchNamespaces listed: each namespace's Role holds the namespaced permissions, the
  ClusterRole only the cluster-scoped ones (e.g. reading CRDs), and nothing namespaced is
  granted cluster-wide;
- sidecar mode adds only `get`/`patch` on the chart's own MutatingWebhookConfiguration (by
  resourceNames) beyond what RBAC.md lists for it;
- no wildcard anywhere, and every binding binds the chart's ServiceAccount to a rendered role.

RBAC.md lists HTTP calls; the RBAC verbs they need are those calls plus one rule of the API
server: a server-side apply (PATCH) of an object that does not exist yet is authorized as
`create` as well, so every `patch` on a non-status resource also needs `create`
(tests/packaging/helm_chart.rs shows the forbidden error on the real API server otherwise).
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/mqtt-proxy-operator"
RBAC_MD = ROOT / "operator/RBAC.md"
# Cluster-scoped resources the operator could touch; everything else is namespaced.
CLUSTER_SCOPED = {
    "customresourcedefinitions", "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations", "namespaces", "nodes", "clusterroles",
    "clusterrolebindings", "apiservices",
}
WEBHOOK = {("admissionregistration.k8s.io", "mutatingwebhookconfigurations", v) for v in ("get", "patch")}

problems = []


def fail(msg):
    problems.append(msg)


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def words(cell):
    return [w for w in re.split(r"[,\s]+", cell.replace("`", "").replace('"', "")) if w]


def documented():
    """{(group, resource, verb)} from the tables of RBAC.md; rows whose text mentions the
    sidecar/webhook mode are returned separately."""
    base, sidecar = set(), set()
    lines = RBAC_MD.read_text().splitlines()
    header = None
    for line in lines:
        if not line.strip().startswith("|"):
            header = None
            continue
        row = cells(line)
        if header is None:
            lowered = [c.lower() for c in row]
            idx = {}
            for name, pat in (("group", "group"), ("resource", "resource"), ("verbs", "verb")):
                idx[name] = next((i for i, c in enumerate(lowered) if pat in c), None)
            header = idx if None not in idx.values() else {}
            continue
        if not header or set(line.replace("|", "").strip()) <= set("-: "):
            continue
        group = row[header["group"]].replace("`", "").replace('"', "").strip()
        group = "" if group.lower() in ("", "core", "(core)", "core/v1", "v1") else group
        resources = words(row[header["resource"]])
        verbs = [v.lower() for v in words(row[header["verbs"]])]
        target = sidecar if re.search(r"sidecar|webhook mode|issue 11", line, re.I) else base
        for r in resources:
            for v in verbs:
                target.add((group, r, v))
    return base, sidecar


def render(*sets):
    args = ["helm", "template", "rbac-check", str(CHART), "-n", "mqtt"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def is_lease_role(o):
    return o["metadata"]["name"].endswith("-leader-election")


def rules_of(objs, kind, leases=False):
    """{namespace or None: {(group, resource, verb)}}, failing on wildcards; the
    leader-election Role only when `leases`."""
    out = {}
    for o in objs:
        if o["kind"] != kind or is_lease_role(o) != leases:
            continue
        ns = o["metadata"].get("namespace")
        for rule in o.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    fail(f"{kind} {o['metadata']['name']}: wildcard in {field}")
            if rule.get("resourceNames") and any(
                (g, r) != ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
                for g in rule["apiGroups"] for r in rule["resources"]):
                fail(f"{kind}: unexpected resourceNames rule {rule}")
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.setdefault(ns, set()).add((g, r, v))
    return out


def check_bindings(objs, label):
    roles = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    sa = [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"]
    for o in objs:
        if o["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = o["roleRef"]
        ns = o["metadata"].get("namespace") if ref["kind"] == "Role" else None
        if (ref["kind"], ref["name"], ns) not in roles:
            fail(f"{label}: {o['kind']} {o['metadata']['name']} refers to missing {ref['kind']} {ref['name']}")
        for s in o["subjects"]:
            if s["kind"] != "ServiceAccount" or s["name"] not in sa or s.get("namespace") != "mqtt":
                fail(f"{label}: {o['kind']} binds {s}, not the chart's ServiceAccount")


def fmt(triples):
    return ", ".join(f"{g or 'core'}/{r}:{v}" for g, r, v in sorted(triples)) or "nothing"


def compare(label, have, want):
    if have != want:
        if have - want:
            fail(f"{label}: grants more than operator/RBAC.md lists: {fmt(have - want)}")
        if want - have:
            fail(f"{label}: lacks what operator/RBAC.md lists: {fmt(want - have)}")


def main():
    if not RBAC_MD.exists():
        fail("operator/RBAC.md is missing (the operator's list of API calls)")
        return
    base, sidecar_doc = documented()
    if not base:
        fail("operator/RBAC.md has no table with group / resource / verbs columns")
        return
    apply_creates = {(g, r, "create") for g, r, v in base if v == "patch" and "/" not in r}
    if apply_creates - base:
        print(f"note RBAC: operator/RBAC.md lists patch without create for {fmt(apply_creates - base)}; "
              "server-side apply needs create to make new objects, so the chart grants it")
    base |= apply_creates
    # The leader-election Lease is granted by its own Role in the release namespace; the
    # watched namespaces hold lease rights too (the operator grants them to mirroring proxy
    # pods, and RBAC lets it grant only what it holds).
    lease_want = {t for t in base if t[0] == "coordination.k8s.io"}
    cluster_want = {t for t in base if t[1] in CLUSTER_SCOPED}
    ns_want = base - cluster_want

    objs = render()
    check_bindings(objs, "default")
    default_rules = rules_of(objs, "ClusterRole").get(None, set())
    compare("watchNamespaces=[] ClusterRole", default_rules, base)
    compare("leader-election Role in the release namespace",
            rules_of(objs, "Role", leases=True).get("mqtt", set()), lease_want)
    if rules_of(render("leaderElection.enabled=false"), "Role", leases=True):
        fail("leaderElection.enabled=false still renders the leader-election Role")
    if rules_of(objs, "Role"):
        fail("watchNamespaces=[]: renders namespaced Roles")

    objs = render("watchNamespaces={team-a}")
    check_bindings(objs, "watchNamespaces")
    roles = rules_of(objs, "Role")
    if sorted(roles) != ["team-a"]:
        fail(f"watchNamespaces=[team-a]: Roles in {sorted(roles)}")
    for ns, have in roles.items():
        compare(f"watchNamespaces Role in {ns}", have, ns_want)
    compare("watchNamespaces ClusterRole", rules_of(objs, "ClusterRole").get(None, set()), cluster_want)

    objs = render("sidecar.enabled=true")
    check_bindings(objs, "sidecar")
    extra = rules_of(objs, "ClusterRole").get(None, set()) - default_rules
    allowed = WEBHOOK | sidecar_doc
    if extra - allowed:
        fail(f"sidecar mode grants {fmt(extra - allowed)} beyond RBAC.md and the webhook's own configuration")
    if not problems:
        print(f"ok   RBAC: chart rules equal operator/RBAC.md ({len(base)} permissions; "
              f"{len(cluster_want)} cluster-scoped) in cluster, namespaced and sidecar modes")


if __name__ == "__main__":
    main()
    for p in problems:
        print(f"FAIL RBAC: {p}")
    sys.exit(1 if problems else 0)
