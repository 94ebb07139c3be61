#!/usr/bin/env bash
# The plain Python pipeline the e2e bench compares tayori with
# (scripts/python_pipeline.py), for benchmarks only, never the product:
# numpy, onnxruntime and Pillow from PyPI in a virtual environment of its
# own. It runs the IS-Net weights that scripts/assets.sh fetched.
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
if ! "$venv/bin/python" -c 'import numpy, onnxruntime, PIL' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    "numpy<2.3" onnxruntime==1.31.1 pillow==13.0.0
fi
echo "$venv/bin/python"
