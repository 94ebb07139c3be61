#!/usr/bin/env bash
# The real Celery client, for the interop test only (never the product):
# celery and redis-py from PyPI, every wheel pinned by its SHA-256 in
# scripts/interop-requirements.txt, in a virtual environment of their own.
#
#   TAYORI_CACHE_DIR   where the venv goes (default: .cache)
#
# Prints the venv's python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TAYORI_CACHE_DIR:-$here/.cache}"
dir="$cache/interop"
req="$here/scripts/interop-requirements.txt"
stamp="$dir/venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x "$dir/venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  printf '[interop] installing celery into %s\n' "$dir/venv" >&2
  rm -rf "$dir/venv"
  mkdir -p "$dir"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    --require-hashes --no-deps -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$dir/venv/bin/python"
