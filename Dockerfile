# syntax=docker/dockerfile:1
# The one skylift image: skylift-operator, skylift-adapter and skylift-proxy, linked
# statically (musl), on an empty base: no shell, no package manager, nothing but the three
# binaries and the CA bundle (for an OAP behind https). Runs as 65532, non-root.
#
#   docker build -t ghcr.io/skylift-io/skylift:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... .
#
# The tag is the workspace version (Cargo.toml), which the chart's appVersion and the
# operator's default proxy image follow (crates/api/src/constants.rs).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# Each platform builds natively (buildx runs foreign ones under emulation), so only the
# musl target of that platform is needed.
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture $TARGETARCH" >&2; exit 1 ;; \
    esac > /target \
 && rustup target add "$(cat /target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "$(cat /target)" \
      -p skylift-operator -p skylift-adapter -p skylift-proxy \
 && mkdir -p /out \
 && for bin in skylift-operator skylift-adapter skylift-proxy; do \
      cp "target/$(cat /target)/release/$bin" /out/; \
    done

# The Node.js agent for injection (SwAgent, language nodejs): there is no official image,
# so this one carries skywalking-backend-js (pinned by tests/node/package-lock.json, the
# version the tests run) at /skywalking/nodejs, installed when the image is built; the init
# container copies it, and no registry is reached when a pod starts.
#
#   docker build --target nodejs-agent -t ghcr.io/skylift-io/skywalking-nodejs-agent:0.9.0 .
FROM node:22-alpine AS nodejs-agent
WORKDIR /skywalking/nodejs
COPY tests/node/package.json tests/node/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error \
 && rm -rf /root/.npm \
 && chmod -R a+rX /skywalking/nodejs
USER 65532:65532

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# Satellite and Proxy pods run the image as it is; the operator's and the adapter's
# Deployments name their binary.
ENTRYPOINT ["/usr/local/bin/skylift-proxy"]
