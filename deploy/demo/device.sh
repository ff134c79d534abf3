#!/bin/sh
# Demo profile: a device publishing a temperature reading every second through the proxy,
# which fans it out to broker-a and broker-b (the dashboard shows both rates).
set -eu
i=0
while true; do
  i=$((i + 1))
  mosquitto_pub -h mqtt-proxy -p 1883 -i demo-device -q 1 \
    -t sensors/demo/temperature -m "{\"seq\":$i,\"celsius\":2$((i % 10)).5}" || sleep 2
  sleep 1
done
