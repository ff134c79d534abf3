# syntax=docker/dockerfile:1
# One Dockerfile, two images:
#   docker build --target proxy    -t mqtt-proxy .            (the default, last stage)
#   docker build --target operator -t mqtt-proxy-operator .
# Both run as UID 10001 on distroless/cc (glibc, CA roots, no shell), with a read-only root
# filesystem: the proxy writes only under /data (store, admin token, spool).
# tests/packaging/check_dockerfile.py keeps the cargo package set, the UI build commands and
# the version label in step with what CI builds and tests.

# ---- web UI: the npm commands proxy/build.rs runs in CI ----------------------------------------
FROM node:20-bookworm-slim AS web-ui
WORKDIR /src/web-ui
COPY web-ui/package.json web-ui/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web-ui/ ./
RUN npm run build

# ---- Rust: dependencies in their own cached layer (cargo-chef) --------------------------------
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# Only Cargo.toml/Cargo.lock changes invalidate this layer: source edits rebuild our crates only.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p mqtt-proxy -p mqtt-proxy-operator
COPY . .
# The proxy embeds web-ui/dist, built above; build.rs must not look for node in this stage.
COPY --from=web-ui /src/web-ui/dist web-ui/dist
RUN MQTT_PROXY_SKIP_UI_BUILD=1 cargo build --release --locked -p mqtt-proxy -p mqtt-proxy-operator \
 && mkdir -p /out/data \
 && cp target/release/mqtt-proxy target/release/mqtt-proxy-operator /out/

# ---- operator image ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mqtt-proxy-operator" \
      org.opencontainers.image.description="Kubernetes operator for mqtt-proxy (MqttProxy and MqttBroker resources)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/mqtt-proxy/mqtt-proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/mqtt-proxy-operator /usr/local/bin/mqtt-proxy-operator
USER 10001:10001
# Probes: GET /healthz and /readyz on :8080 (the Helm chart's liveness/readiness probes).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/mqtt-proxy-operator"]

# ---- proxy image (default target) -------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mqtt-proxy" \
      org.opencontainers.image.description="MQTT 1:N device multiplexer: one device connection, N upstream brokers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/mqtt-proxy/mqtt-proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
# distroless has no mkdir: the data directory comes from the build stage, owned by 10001.
COPY --from=build --chown=10001:10001 /out/data /data
COPY --from=build /out/mqtt-proxy /usr/local/bin/mqtt-proxy
USER 10001:10001
ENV MQTT_PROXY_DATA_DIR=/data \
    MQTT_PROXY_MQTT_LISTEN=0.0.0.0:1883 \
    MQTT_PROXY_HTTP_LISTEN=0.0.0.0:3000
VOLUME ["/data"]
EXPOSE 1883 3000
# No curl in distroless: the binary probes its own /healthz (exit 0 on 200).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/mqtt-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/mqtt-proxy"]
