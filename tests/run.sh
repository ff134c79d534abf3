#!/usr/bin/env bash
# Runs every test of the project (the README's test command; .ci/run calls it too).
#
# 1. tests/setup.d/*.sh, in name order, bring what the tests need on a fresh machine
#    (mosquitto and its clients, …): each installs from the registries when run as root,
#    caches what is slow to build outside the checkout, and otherwise says how.
# 2. tests/checks.d/*.sh, in name order, run the suites that are not cargo tests.
# 3. cargo test --workspace runs the unit and integration tests (real brokers, real clients).
set -euo pipefail
cd "$(dirname "$0")/.."
for s in tests/setup.d/*.sh; do
  bash "$s"
done
for s in tests/checks.d/*.sh; do
  [ -e "$s" ] || continue
  echo "== $s"
  bash "$s"
done
exec cargo test --workspace
