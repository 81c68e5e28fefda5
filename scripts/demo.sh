#!/usr/bin/env bash
# The whole product on this machine in one command: installs what is needed,
# starts the local broker, applies the topology, runs the router, replays a
# day of real NYC 311 requests into it, and prints the job packets as a
# downstream CMMS connector would receive them, with per-trade totals.
#
#   scripts/demo.sh [nyc311|nestor] [RATE]
#
# The broker keeps running afterwards (scripts/kafka-local.sh stop ends it);
# the router is stopped with SIGTERM at the end, which flushes and commits.
set -euo pipefail
cd "$(dirname "$0")/.."

source_name=${1:-nyc311}
rate=${2:-200}
config=config/router.toml
log() { printf 'demo: %s\n' "$*" >&2; }

scripts/setup.sh
scripts/kafka-local.sh start
log "building the router (the first build compiles librdkafka; a few minutes)"
cargo build --locked --bin cmms-router
bin="${CARGO_TARGET_DIR:-target}/debug/cmms-router"

"$bin" topology apply --config "$config"

router_log=$(mktemp -t cmms-router-demo.XXXXXX.log)
"$bin" run --config "$config" >"$router_log" 2>&1 &
router_pid=$!
trap 'kill -TERM $router_pid 2>/dev/null || true' EXIT
log "router running (pid $router_pid), log: $router_log, metrics: http://127.0.0.1:9898/metrics"
for _ in $(seq 1 60); do
  curl -fs http://127.0.0.1:9898/readyz >/dev/null 2>&1 && break
  sleep 1
done

log "replaying $source_name at $rate records/s"
"$bin" replay --config "$config" --source "$source_name" --rate "$rate"

log "packets as a downstream connector sees them (read_committed):"
# Batches close after window.max_wait_ms; wait for the last ones to commit.
"$bin" watch --config "$config" --idle-exit 8

kill -TERM "$router_pid"
wait "$router_pid" || true
trap - EXIT
log "router stopped; its log is $router_log"
