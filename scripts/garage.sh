#!/usr/bin/env bash
# Garage, the distributed S3 that the storage tests also run against (never
# the product, never linked: AGPL, run as a program of its own). Built once
# with cargo from the Rust package registry (the crate pinned by its SHA-256 below, its
# dependencies by the Cargo.lock it ships, `--locked`) into the cache; a
# cold build took 6 minutes on 2 cores.
#
#   TAYORI_CACHE_DIR   where it goes (default: .cache)
#
# Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TAYORI_CACHE_DIR:-$here/.cache}"
version=2.5.0
sha256=e1752af176a3cd84e9afd6edf30df594db92b7730cc67bddcd74769841b3f3f5
root="$cache/garage-$version"
# A build is kept with the checksum it was made from: a new pin rebuilds.
if [[ ! -x "$root/bin/garage" || "$(cat "$root/.sha256" 2>/dev/null)" != "$sha256" ]]; then
  rm -rf "$root"
  printf '[garage] building garage %s into %s\n' "$version" "$root" >&2
  # Its bundled libsodium is built with configure and make (and the C
  # compiler Rust links with).
  if ! command -v make >/dev/null 2>&1; then
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends make >/dev/null
  fi
  # Fetch the crate first and check it before anything of it is built.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/probe/src"
  printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ngarage = { version = "=%s", default-features = false }\n[workspace]\n' \
    "$version" > "$tmp/probe/Cargo.toml"
  : > "$tmp/probe/src/lib.rs"
  (cd "$tmp/probe" && cargo fetch --quiet >&2)
  # Every copy cargo holds must be the pinned one.
  found=0
  for crate in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/garage-"$version".crate; do
    [[ -f "$crate" ]] || continue
    echo "$sha256  $crate" | sha256sum --check --quiet >&2
    found=1
  done
  if [[ $found == 0 ]]; then
    echo "[garage] cargo fetched no garage-$version.crate to check" >&2
    exit 1
  fi
  # A test server: no LTO, little optimisation, no debug info (a quicker
  # build); the LMDB metadata engine only.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo install garage --version "$version" --locked --no-default-features --features lmdb,bundled-libs \
      --root "$root" --target-dir "$cache/garage-build" --quiet >&2
  rm -rf "$cache/garage-build"
  echo "$sha256" > "$root/.sha256"
fi
echo "$root/bin/garage"
