# syntax=docker/dockerfile:1
# Build: a static-ish release binary of the proxy.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mqtt-proxy \
 && strip target/release/mqtt-proxy

# Run: small Debian base with CA roots (upstream TLS uses the system store), non-root.
FROM debian:bookworm-slim
# ca-certificates is deliberately unpinned: it must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mqttproxy \
 && mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data
COPY --from=build /src/target/release/mqtt-proxy /usr/local/bin/mqtt-proxy
USER 10001:10001
ENV MQTT_PROXY_DATA_DIR=/data \
    MQTT_PROXY_MQTT_LISTEN=0.0.0.0:1883 \
    MQTT_PROXY_HTTP_LISTEN=0.0.0.0:3000
VOLUME ["/data"]
EXPOSE 1883 3000
ENTRYPOINT ["/usr/local/bin/mqtt-proxy"]
