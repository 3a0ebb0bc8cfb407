# tracking-api. Build from the repository root:
#   docker build -f k8s/images/tracking-api.Dockerfile -t tracking-api .
# (Not built in CI: no container engine there. k8s/images/README.md says how
# the three Dockerfiles are kept alike.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: only the manifests and the lock
# file, with stub sources, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY crates/tracking-core/Cargo.toml crates/tracking-core/
COPY crates/tracking-api/Cargo.toml crates/tracking-api/
COPY crates/tracking-bigtable/Cargo.toml crates/tracking-bigtable/
COPY crates/tracking-pubsub/Cargo.toml crates/tracking-pubsub/
COPY crates/test-support/Cargo.toml crates/test-support/
COPY crates/aerospike-standin/Cargo.toml crates/aerospike-standin/
COPY crates/service-kit/Cargo.toml crates/service-kit/
COPY migration-proxy/Cargo.toml migration-proxy/
COPY loadtest/Cargo.toml loadtest/
RUN for d in crates/* migration-proxy loadtest; do \
      mkdir -p "$d/src" && echo 'fn main() {}' > "$d/src/main.rs" && touch "$d/src/lib.rs"; \
    done \
 && cargo build --release --locked -p tracking-api \
 && rm -rf crates/*/src migration-proxy/src loadtest/src
# Then the sources.
COPY crates crates
COPY migration-proxy migration-proxy
COPY loadtest loadtest
RUN find crates migration-proxy loadtest -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p tracking-api

# Runtime: glibc and CA certificates, no shell, non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tracking-api /usr/local/bin/tracking-api
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tracking-api"]
CMD ["serve"]
