# cmms-router container image.
#
# Build stage: the full Rust toolchain image. RocksDB and librdkafka are C/C++
# built from source by their crates: bindgen needs clang and libclang-dev,
# and cmake is there for the native builds that use it.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole context (see .dockerignore): the manifest may name bench and test
# targets whose files must exist for cargo to read it.
COPY . .
# --locked: the image builds exactly the dependency versions CI tested.
RUN cargo build --release --locked \
    && cp target/release/cmms-router /usr/local/bin/cmms-router

# Runtime stage: only what the binary loads at run time. librdkafka and
# RocksDB are linked statically; what stays dynamic (glibc, libstdc++ for the
# C++ code, zlib) is already part of bookworm-slim. ca-certificates is for
# TLS to a broker that needs it.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /app --shell /usr/sbin/nologin cmms
WORKDIR /app
COPY --from=build /usr/local/bin/cmms-router /app/cmms-router
COPY schemas/ /app/schemas/
COPY topology/ /app/topology/
COPY config/ /app/config/
# Run unprivileged; the router may keep local state (its stores) under /app,
# so that user owns it.
RUN mkdir -p /var/lib/cmms-router && chown -R cmms:cmms /app /var/lib/cmms-router
USER cmms
# Prometheus metrics.
EXPOSE 9898
ENTRYPOINT ["/app/cmms-router"]
CMD ["run", "--config", "/app/config/router.toml"]
