# sonde's container image, for those who build with a registry at hand:
#   docker build -t registry.example.com/sonde:0.1.0 .
# A static (musl) binary in an empty image. `cargo xtask image` builds the same
# image from a local build, with no registry (tag sonde:dev).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools python3 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup toolchain install nightly --profile minimal --component rust-src \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# bpf-linker (built against the nightly's LLVM) is cached under ~/.cache/sonde.
RUN cargo xtask setup --no-apt \
    && cargo build --release --locked --package sonde --target x86_64-unknown-linux-musl

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/sonde /sonde
ENTRYPOINT ["/sonde"]
CMD ["run"]
