#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium, and playwright-core from
# npm (exact version in gateway/tests/browser/package-lock.json; it drives
# the system Chromium and downloads no browser of its own).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "[browser-deps] installing chromium" >&2
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v node >/dev/null || { echo "[browser-deps] node is missing (Debian: apt-get install nodejs npm)" >&2; exit 1; }
cd "$here/gateway/tests/browser"
want=$(python3 -c 'import json; print(json.load(open("package-lock.json"))["packages"]["node_modules/playwright-core"]["version"])')
have=$(node -p 'require("./node_modules/playwright-core/package.json").version' 2>/dev/null || true)
if [[ "$want" != "$have" ]]; then
  echo "[browser-deps] npm ci (playwright-core)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
