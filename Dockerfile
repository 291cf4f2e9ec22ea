# Rudder's image: a release build on Debian, and a slim runtime with the nft program.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rudder && strip target/release/rudder

FROM debian:bookworm-slim
# nftables: the `nft` program Rudder's backend drives (and its libraries);
# ca-certificates: TLS to the API server. Rudder runs as root with only CAP_NET_ADMIN
# (see deploy/rudder.yaml): nftables and conntrack netlink require it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rudder /usr/local/bin/rudder
ENTRYPOINT ["/usr/local/bin/rudder"]
