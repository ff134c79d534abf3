#!/bin/sh
# Demo profile: adds the brokers in /demo/brokers/*.json through the admin API.
# 201 (created) and 409 (already there, e.g. after a restart) both count as done.
set -eu
for f in /demo/brokers/*.json; do
  code=$(curl -sS -o /tmp/answer -w '%{http_code}' --retry 10 --retry-connrefused --retry-delay 2 \
    -X POST -H "Authorization: Bearer ${MQTT_PROXY_ADMIN_TOKEN}" \
    -H 'Content-Type: application/json' --data-binary "@$f" "${MQTT_PROXY_URL}/api/brokers")
  case "$code" in
    201) echo "added $(basename "$f" .json)" ;;
    409) echo "$(basename "$f" .json) already there" ;;
    *) echo "POST $f answered $code: $(cat /tmp/answer)" >&2; exit 1 ;;
  esac
done
