# Multi-stage build of the `shop` binary; the same image runs either service or the storefront on
# PostgreSQL and RabbitMQ (docker-compose.yml sets their URLs), or all three with `shop up`: with
# no URL set, that is the embedded mode, every file in /var/lib/shop
# (`docker run -p 8080:8080 -p 8081:8081 -p 8082:8082 -v shop-data:/var/lib/shop <image>`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shop \
    && cp target/release/shop /usr/local/bin/shop

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home shop \
    && install -d -o shop -m 0700 /var/lib/shop
COPY --from=build /usr/local/bin/shop /usr/local/bin/shop
USER shop
# The data directory holds the local signing key (auth/signing-key.pem), the storefront's cookie
# key, and in the embedded mode the SQLite files; mount one volume there in every container that
# must trust the same tokens.
ENV SHOP_DATA_DIR=/var/lib/shop \
    SHOP_LOG_FORMAT=json \
    SHOP_ORDERS_HTTP_ADDR=0.0.0.0:8081 \
    SHOP_INVENTORY_HTTP_ADDR=0.0.0.0:8082 \
    SHOP_STOREFRONT_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080 8081 8082
ENTRYPOINT ["shop"]
CMD ["up"]
