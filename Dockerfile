# Images of the worker (`streamjob`) and the operator (`streamjob-operator`):
#   docker build --target worker   -t ghcr.io/streamjob/streamjob:0.1.0 .
#   docker build --target operator -t ghcr.io/streamjob/streamjob-operator:0.1.0 .
# (`make images` runs both.) One build stage compiles both binaries; the runtime stages
# hold only the binary and the shared libraries it links (glibc, OpenSSL, zlib).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamjob-worker --bin streamjob -p streamjob-operator \
 && mkdir /out && cp target/release/streamjob target/release/streamjob-operator /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532

FROM runtime AS worker
COPY --from=build /out/streamjob /usr/local/bin/streamjob
EXPOSE 6121
ENTRYPOINT ["/usr/local/bin/streamjob"]

FROM runtime AS operator
COPY --from=build /out/streamjob-operator /usr/local/bin/streamjob-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/streamjob-operator"]
