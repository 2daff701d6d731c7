# syntax=docker/dockerfile:1
# Container image of the device-taint-eviction controller: one static (musl) binary, the CA bundle and
# a passwd entry for the non-root user 65532 it runs as, on an empty base (FROM scratch).
#
#   docker build -t device-taint-eviction:dev .
#   docker run --rm device-taint-eviction:dev --help
#
# Without a Docker engine or registry access, `make image` builds the binary on the host and
# packages it with this file's runtime stage (podman/buildah); see tests/image/build.sh.
#
# The chart (charts/device-taint-eviction) runs it as `device-taint-eviction controller ...`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG TARGET=x86_64-unknown-linux-musl
# musl-gcc compiles ring's C and assembly for the musl target; TLS is rustls, so no OpenSSL.
# musl-tools is not pinned: the base image's Debian release fixes its version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "${TARGET}"
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_TERM_COLOR=never
WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock change.
# Placeholder sources stand in for the crate so that only the dependencies are compiled here. (Should
# the manifest gain a build script or targets outside src/, copy or stub them here as well.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && cargo build --release --locked --target "${TARGET}" --bin device-taint-eviction \
    && rm -rf src

# The crate itself. Touching the sources makes cargo rebuild them over the placeholders.
COPY . .
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "${TARGET}" --bin device-taint-eviction \
    && "target/${TARGET}/release/device-taint-eviction" --help > /dev/null \
    && mkdir -p /rootfs/etc/ssl/certs \
    && cp "target/${TARGET}/release/device-taint-eviction" /rootfs/device-taint-eviction \
    && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
    && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
        > /rootfs/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' > /rootfs/etc/group

# The runtime stage: nothing but /rootfs of the builder, so that no base image has to be pulled.
# tests/image/build.sh uses this stage as it is, with its one COPY taking a host-built /rootfs.
FROM scratch AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="device-taint-eviction" \
      org.opencontainers.image.description="Evicts pods whose DRA devices carry a NoExecute taint (standalone device-taint-eviction-controller, KEP-5055)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /rootfs/ /
USER 65532:65532
# /healthz, /readyz and /metrics (--http-addr).
EXPOSE 8080
ENTRYPOINT ["/device-taint-eviction"]
CMD ["controller"]
