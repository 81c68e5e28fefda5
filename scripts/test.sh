#!/usr/bin/env bash
# Runs every test: unit, integration against the real local broker, the Avro
# interoperability check, the CLI configuration checks, and the benches in
# their quick test mode. Installs what is missing first (scripts/setup.sh).
#
# Uses the broker at CMMS_TEST_BOOTSTRAP (default 127.0.0.1:9092) when one
# answers there; otherwise starts the local one (scripts/kafka-local.sh) and
# stops it again afterwards. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the build and the tests need (clang for bindgen, fastavro, the broker
# jars); a no-op when everything is there.
scripts/setup.sh

export CMMS_TEST_BOOTSTRAP="${CMMS_TEST_BOOTSTRAP:-127.0.0.1:9092}"
started=0
host=${CMMS_TEST_BOOTSTRAP%:*}
port=${CMMS_TEST_BOOTSTRAP##*:}
if ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  KAFKA_PORT="$port" scripts/kafka-local.sh start
  started=1
fi
cleanup() { if ((started)); then scripts/kafka-local.sh stop; fi; }
trap cleanup EXIT

cargo test --locked --all-targets "$@"
