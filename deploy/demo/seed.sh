#!/bin/sh
# Demo profile: adds the brokers in $DEMO_DIR/brokers/*.json (default /demo, the compose mount)
# through the admin API at $MQTT_PROXY_URL. 201 (created) and 409 (already there, e.g. after a
# restart) both count as done. tests/packaging/check_demo_seed.py runs it against a real proxy.
set -eu
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
for f in "${DEMO_DIR:-/demo}"/brokers/*.json; do
  code=$(curl -sS -o "$answer" -w '%{http_code}' --retry 10 --retry-connrefused --retry-delay 2 \
    -X POST -H "Authorization: Bearer ${MQTT_PROXY_ADMIN_TOKEN}" \
    -H 'Content-Type: application/json' --data-binary "@$f" "${MQTT_PROXY_URL}/api/brokers")
  case "$code" in
    201) echo "added $(basename "$f" .json)" ;;
    409) echo "$(basename "$f" .json) already there" ;;
    *) echo "POST $f answered $code: $(cat "$answer")" >&2; exit 1 ;;
  esac
done
