#!/usr/bin/env bash
# Packaging: Dockerfile, docker-compose.yml and the Helm chart, validated with the real tools
# (tests/setup.d/60-packaging.sh installs them). Each step prints `ok …` or `FAIL …`; the
# script runs them all and exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
PATH="$(bash tests/k8s/tools.sh):$PATH"
P=tests/packaging
CHART=charts/mqtt-proxy-operator
K8S=(-k 1.25.0 -k 1.31.0)   # oldest and current schemas kubernetes-validate bundles
failed=0
step() { "$@" || { echo "FAIL ($*)"; failed=1; }; }

step python3 $P/check_dockerfile.py
step python3 $P/check_compose.py

# helm lint --strict and kubernetes-validate/CRD/ServiceMonitor validation of every toggle.
for values in $P/values/*.yaml; do
  name=$(basename "$values" .yaml)
  step bash -c "helm lint --strict --quiet $CHART -f $values -n mqtt >/dev/null && echo 'ok   helm lint --strict ($name)'"
  crds=(); [ "$name" = default ] && crds=(--include-crds)
  step bash -c "set -o pipefail; helm template mqtt-proxy-operator $CHART -n mqtt -f $values ${crds[*]} \
    | python3 $P/manifests.py - --crds crds ${K8S[*]} --label 'helm template $name'"
done
# The operator's example resources, against the generated CRDs.
step python3 $P/manifests.py examples/*.yaml --crds crds "${K8S[@]}" --label examples/

# Negative controls: each validator must refuse a known-bad input for the reason its
# `# expect:` line names, or it proves nothing.
for bad in $P/negative/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$bad")
  case "$(basename "$bad")" in
    values-*) out=$(helm template x "$CHART" -f "$bad" 2>&1) ;;
    *) out=$(python3 $P/manifests.py "$bad" --crds crds "${K8S[@]}" 2>&1) ;;
  esac
  rc=$?
  if [ $rc -eq 0 ] || [ -z "$expect" ] || ! grep -qF -- "$expect" <<<"$out"; then
    echo "FAIL negative control $bad: exit $rc, want a refusal naming '$expect': $out"; failed=1
  else
    echo "ok   negative control $(basename "$bad") refused ($expect)"
  fi
done

step python3 $P/check_rbac.py
step python3 $P/check_dashboard.py
step python3 $P/values_table.py --check
step python3 $P/readme_commands.py

# The real binaries: the chart's operator args, the compose demo's seed script and the
# image's healthcheck against a running proxy (debug builds, shared with cargo test).
step cargo build -q -p mqtt-proxy --bin mqtt-proxy -p mqtt-proxy-operator --bin mqtt-proxy-operator
step python3 $P/check_chart.py target/debug/mqtt-proxy-operator
step python3 $P/check_demo_seed.py target/debug/mqtt-proxy
step python3 $P/check_dashboard_live.py target/debug/mqtt-proxy

exit $failed
