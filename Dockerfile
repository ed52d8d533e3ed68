# Build: docker build -t cutover .
# Run:   docker run --rm -p 8080:8080 -p 9901:9901 -v "$PWD/my-config:/etc/cutover" cutover
# The bundled config/cutover.toml listens on 127.0.0.1; mount a config that
# listens on 0.0.0.0 (and names reachable backends) to use it from outside.

# ---- build stage
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked \
 && install -m 0755 target/dist/cutover /usr/local/bin/cutover

# ---- runtime stage: the binary, CA roots and a non-root user; no shell
# tools, no HEALTHCHECK (probes belong to the orchestrator: /healthz, /readyz).
FROM debian:bookworm-slim
# ca-certificates follows the base image's security updates; pinning its
# version would only hold those back.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 cutover \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin cutover
COPY --from=builder /usr/local/bin/cutover /usr/local/bin/cutover
COPY config/cutover.toml /etc/cutover/cutover.toml
VOLUME /etc/cutover
EXPOSE 8080 9901
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cutover"]
CMD ["run", "--config", "/etc/cutover/cutover.toml"]
