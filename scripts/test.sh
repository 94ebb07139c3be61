#!/usr/bin/env bash
# Run tayori's whole test suite: installs what is missing (Debian packages,
# registry assets), checks docker-compose.yml, builds in release and runs
# every unit and integration test (real Redis, S3 endpoint and Garage,
# ffmpeg, TTS).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/deps.sh
bash scripts/assets.sh
bash scripts/browser-deps.sh
# The real Celery client, for the interop test.
TAYORI_INTEROP_PYTHON="$(bash scripts/interop-deps.sh)"
export TAYORI_INTEROP_PYTHON
# Garage, the distributed S3 the storage tests also run against.
TAYORI_GARAGE_BIN="$(bash scripts/garage.sh)"
export TAYORI_GARAGE_BIN
python3 scripts/check_compose.py docker-compose.yml
# A target directory kept between runs (CI's cache) may hold this workspace's
# own crates built from a checkout elsewhere: cargo can take them as fresh,
# and their tests would then look for data files under that other path
# (env!("CARGO_MANIFEST_DIR")). Rebuild the workspace's crates (not their
# dependencies) when the checkout moved.
target="${CARGO_TARGET_DIR:-$here/target}"
if [[ -d "$target" && "$(cat "$target/.tayori-checkout" 2>/dev/null)" != "$here" ]]; then
  cargo clean --release -p tayori-shared -p gateway -p worker
fi
mkdir -p "$target"
echo "$here" > "$target/.tayori-checkout"
# The integration tests start the gateway and worker binaries.
cargo build --release --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast "$@"
else
  cargo test --release --locked --workspace --no-fail-fast "$@"
fi
