#!/usr/bin/env bash
# Installs what building and testing the router needs on a fresh Debian
# machine, and nothing that is already there:
#   - clang and libclang-dev: bindgen, for the native crates (RocksDB, once
#     the state stores land) and the C toolchain librdkafka's build uses;
#   - rustfmt and clippy for the checks;
#   - fastavro (Python) for the Avro interoperability test;
#   - the Kafka broker jars (scripts/kafka-local.sh fetch).
# Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for pkg in clang libclang-dev make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
      rustup component add "$component"
  done
fi

if ! python3 -c 'import fastavro' >/dev/null 2>&1; then
  log "installing fastavro"
  python3 -m pip install --quiet --disable-pip-version-check fastavro
fi

scripts/kafka-local.sh fetch
log "ready"
