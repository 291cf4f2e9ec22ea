# Rudder's image: one static binary (what `cargo xtask dist` builds), on a slim runtime that
# still carries the nft program: the daemon checks its version at start and reads its tables
# back with `nft --json` (issue 11 removes that; the runtime stage then becomes FROM scratch).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p rudder --target x86_64-unknown-linux-gnu

FROM debian:bookworm-slim
# nftables: the `nft` program (see above); ca-certificates: TLS to the API server. Rudder runs
# as root with only CAP_NET_ADMIN (see deploy/rudder.yaml): nftables and conntrack netlink
# require it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/rudder /usr/local/bin/rudder
ENTRYPOINT ["/usr/local/bin/rudder"]
