# Rudder's image: the one static binary `cargo xtask dist` builds, and nothing else.
#
# The daemon needs no `nft` program (tables are written and read back over nf_tables netlink),
# no shared libraries (glibc is linked in statically) and no `/etc`. No CA bundle either: in a
# cluster the API server's certificate is checked against the service account's `ca.crt`
# (mounted by Kubernetes, re-read when it rotates), not against system roots. A kubeconfig
# without `certificate-authority` would need system roots: mount them if you run it so.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p rudder --target x86_64-unknown-linux-gnu

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/rudder /usr/local/bin/rudder
ENTRYPOINT ["/usr/local/bin/rudder"]
