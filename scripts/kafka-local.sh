#!/usr/bin/env bash
# A single-node Apache Kafka broker for development and the integration tests,
# run straight from Maven Central jars: no Docker engine, no release tarball.
#
# One JVM plays both KRaft roles (broker and controller) on loopback only.
# The settings below make transactions and consumer groups work on a single
# node and make compaction observable in tests.
#
# Usage: scripts/kafka-local.sh COMMAND
#   fetch            resolve the broker jars into the cache (once)
#   start            fetch if needed, format storage once, start, wait until ready
#   stop             SIGTERM, then SIGKILL after a deadline; fine if not running
#   status           exit 0 if our broker runs and answers, 1 otherwise
#   wait             wait until the broker answers a metadata request
#   reset            stop and delete the data directory
#   tool CLASS ARGS  run a Java main class on the broker classpath, e.g.
#                    tool org.apache.kafka.tools.TopicCommand \
#                        --bootstrap-server 127.0.0.1:9092 --list
#   topics ARGS      shorthand for TopicCommand against this broker
#
# Environment (defaults in brackets):
#   CMMS_KAFKA_CACHE       jar cache [$XDG_CACHE_HOME or ~/.cache + /cmms-router/kafka-4.1.1]
#   CMMS_KAFKA_DATA        data dir: storage, logs, pid [<cache>/data]
#   KAFKA_PORT             client listener [9092]
#   KAFKA_CONTROLLER_PORT  KRaft controller listener [9093]
#   KAFKA_START_TIMEOUT    seconds to wait for readiness [120]
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [60]
#   KAFKA_HEAP_OPTS        broker heap [-Xms512m -Xmx1g]
#   KAFKA_MVN_REPO         Maven local repository for fetch [Maven's default, ~/.m2]
#
# Progress and errors go to stderr; `tool`/`topics` output goes to stdout.
# Linux only: process checks read /proc.
set -euo pipefail

readonly KAFKA_VERSION=4.1.1
readonly NODE_ID=1
readonly HOST=127.0.0.1

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly POM="$SCRIPT_DIR/kafka/pom.xml"
readonly LOG4J_CONFIG="$SCRIPT_DIR/kafka/log4j2.properties"

readonly CACHE="${CMMS_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cmms-router/kafka-$KAFKA_VERSION}"
readonly LIBS="$CACHE/libs"
# Holds the hash of the POM the jars came from, so editing the POM refetches.
readonly FETCH_MARKER="$LIBS/.fetched"

readonly DATA="${CMMS_KAFKA_DATA:-$CACHE/data}"
readonly LOG_DIRS="$DATA/kraft" # Kafka's "log.dirs": partitions and metadata
readonly CONFIG="$DATA/server.properties"
readonly PID_FILE="$DATA/broker.pid"
readonly BROKER_OUT="$DATA/broker.out" # console: WARN and above, JVM errors
readonly SERVER_LOG="$DATA/server.log" # the full log4j broker log

readonly PORT="${KAFKA_PORT:-9092}"
readonly CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
readonly BOOTSTRAP="$HOST:$PORT"
readonly START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
readonly STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"
readonly HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"

# Short-lived CLI JVMs (probe, StorageTool, TopicCommand): the C1 compiler and
# the serial collector start noticeably faster on a 2-core machine, and the
# readiness probe may run a few dozen times.
readonly TOOL_JVM_OPTS=(-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m -Djava.awt.headless=true)

log() { printf 'kafka-local: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Microseconds since the epoch, from bash's own clock (no `date` fork).
now_us() { echo "${EPOCHREALTIME/./}"; }
# Seconds elapsed since a now_us value, with one decimal: "7.3".
elapsed_since() {
  local tenths=$((($(now_us) - $1) / 100000))
  printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

require_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; $2"
}

# --- fetch -------------------------------------------------------------------

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

is_fetched() {
  [[ -f "$FETCH_MARKER" && "$(cat "$FETCH_MARKER")" == "$(pom_hash)" ]]
}

cmd_fetch() {
  if is_fetched; then
    log "jars already fetched in $LIBS"
    return 0
  fi
  require_cmd mvn "install Maven (apt-get install maven)"
  require_cmd java "install a JDK 17+ (apt-get install openjdk-17-jdk-headless)"
  local started tmp mvn_args=(-B -q -f "$POM")
  started=$(now_us)
  if [[ -n "${KAFKA_MVN_REPO:-}" ]]; then
    mvn_args+=("-Dmaven.repo.local=$KAFKA_MVN_REPO")
  fi
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  mkdir -p "$CACHE"
  # Copy into a scratch dir and swap it in, so an interrupted fetch never
  # leaves a half-filled libs/ that looks complete.
  tmp=$(mktemp -d "$CACHE/libs.tmp.XXXXXX")
  # Debian's Maven 3.8 prints bare colour resets even with -B -q; strip them
  # so a quiet fetch is really quiet. pipefail keeps mvn's exit status.
  if ! mvn "${mvn_args[@]}" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
    sed 's/\x1b\[[0-9;]*m//g' >&2; then
    rm -rf "$tmp"
    die "maven could not resolve the broker jars (see the output above)"
  fi
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  pom_hash >"$FETCH_MARKER"
  log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $(elapsed_since "$started")s"
}

# --- helpers: locking, processes, probes -------------------------------------

# Serialise commands that change state (fetch, start, stop, reset), so that
# two test runs calling `start` at once do not launch two brokers or two
# Maven fetches into the same cache. The lock is fd 9 on a file in the
# cache; it is released when this script exits, and the broker is started
# with fd 9 closed so that it does not hold the lock for its lifetime.
take_lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  if ! flock -n 9; then
    log "another kafka-local.sh command is running; waiting for it"
    flock 9
  fi
}


# A process that exited but was never reaped (PID 1 in some containers does
# not reap) still answers `kill -0`; treat a zombie as gone.
pid_alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$state" != Z ]]
}

# The pid of our broker for this data dir, or nothing. A pid file whose
# process is gone, or whose pid was reused by something else, is stale and
# removed here.
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid" &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG"; then
    echo "$pid"
    return 0
  fi
  log "removing stale pid file ($PID_FILE: ${pid:-empty})"
  rm -f "$PID_FILE"
}

# Cheap check before paying for a JVM: is anything listening on the port?
port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

run_tool() {
  java "${TOOL_JVM_OPTS[@]}" -cp "$LIBS/*" "$@"
}

# Does the broker answer a metadata request and list itself? The
# BrokerApiVersionsCommand discovers brokers through a Metadata request and
# only then asks each for its API versions; a node that is still fenced or
# catching up on the metadata log is not listed, so "(id: 1" in the answer
# means clients can use it (and "isFenced: true", should a fenced node ever be
# listed, does not). `timeout` bounds a probe that hangs.
probe() {
  local out
  out=$(timeout 30 java "${TOOL_JVM_OPTS[@]}" -cp "$LIBS/*" \
    org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$BOOTSTRAP" --command-config "$CACHE/probe.properties" \
    2>/dev/null) || return 1
  [[ "$out" == *"(id: $NODE_ID "* && "$out" != *"isFenced: true"* ]]
}

write_probe_config() {
  mkdir -p "$CACHE"
  # Fail fast on a broker that is not up yet; the caller polls anyway.
  cat >"$CACHE/probe.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

show_logs() {
  local f
  for f in "$BROKER_OUT" "$SERVER_LOG"; do
    if [[ -s "$f" ]]; then
      log "last lines of $f:"
      tail -n 40 "$f" >&2
    fi
  done
}

# Poll until the broker answers or the deadline passes. `started` (a now_us
# value) is when the caller began, so the reported time covers the JVM start.
wait_ready() {
  local started=${1:-$(now_us)} deadline pid
  is_fetched || die "jars not fetched; run '$0 fetch' or '$0 start'"
  write_probe_config
  deadline=$(($(now_us) + START_TIMEOUT * 1000000))
  while (($(now_us) < deadline)); do
    # Fail fast when the broker we started has died instead of waiting out
    # the whole deadline. (With no pid file, we wait for any broker on the
    # port: `wait` may be used against a broker started elsewhere.)
    if [[ -f "$PID_FILE" ]]; then
      pid=$(cat "$PID_FILE" 2>/dev/null || true)
      if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
        rm -f "$PID_FILE"
        show_logs
        die "broker process $pid exited during startup"
      fi
    fi
    if port_open "$PORT" && probe; then
      log "broker ready on $BOOTSTRAP after $(elapsed_since "$started")s"
      return 0
    fi
    sleep 0.5
  done
  show_logs
  die "broker on $BOOTSTRAP not ready after ${START_TIMEOUT}s (KAFKA_START_TIMEOUT); stop it with '$0 stop'"
}

# --- start -------------------------------------------------------------------

write_server_properties() {
  # Regenerated on every start so that port changes take effect; the stored
  # cluster id and metadata live in $LOG_DIRS, not here.
  cat >"$CONFIG" <<EOF
# Written by scripts/kafka-local.sh on each start; edits are overwritten.

# One JVM is both KRaft controller and broker. A static voter set is the
# simplest single-node quorum: it needs no --standalone at format time and
# survives a change of KAFKA_CONTROLLER_PORT on existing data.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$NODE_ID@$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER

# Loopback only: this broker is for tests on this machine.
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$LOG_DIRS

# Every internal topic defaults to replication factor 3 and would never be
# created on one broker: consumer offsets, transaction state, share groups.
# Without these, transactional producers fail to initialise.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1

# Topics are created by the router's topology step or by each test; a typo
# must fail loudly instead of creating a stray topic.
auto.create.topics.enable=false

# Tests start consumers and expect an assignment at once, not after the
# default 3 s wait for more members to join.
group.initial.rebalance.delay.ms=0

# The cleaner re-checks for compactable logs every second (default 15 s), so
# tests that wait for compaction finish quickly.
log.cleaner.backoff.ms=1000

# One small machine: keep thread pools modest.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

# Format the storage directory once. StorageTool refuses to format a
# directory twice unless --ignore-formatted; meta.properties marks it done.
format_storage() {
  [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
  local cluster_id out
  cluster_id=$(run_tool kafka.tools.StorageTool random-uuid) ||
    die "StorageTool random-uuid failed"
  log "formatting $LOG_DIRS (cluster id $cluster_id)"
  if ! out=$(run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" \
    --ignore-formatted 2>&1); then
    printf '%s\n' "$out" >&2
    die "StorageTool format failed"
  fi
}

check_java() {
  require_cmd java "install a JDK 17+ (apt-get install openjdk-17-jdk-headless)"
  local spec
  spec=$(java -XshowSettings:properties -version 2>&1 |
    awk -F'= ' '/java.specification.version/ {print $2}')
  if ! [[ "${spec%%.*}" =~ ^[0-9]+$ ]] || ((${spec%%.*} < 17)); then
    die "Kafka $KAFKA_VERSION needs Java 17 or newer, found '${spec:-unknown}'"
  fi
}

cmd_start() {
  local started pid
  started=$(now_us)
  pid=$(broker_pid)
  if [[ -n "$pid" ]]; then
    write_probe_config
    if port_open "$PORT" && probe; then
      log "broker already running (pid $pid) on $BOOTSTRAP"
      return 0
    fi
    # Ours, alive, but not answering yet: most likely still starting.
    log "broker (pid $pid) is running but not ready yet; waiting"
    wait_ready "$started"
    return
  fi
  if port_open "$PORT"; then
    die "port $PORT is in use by a process not started from $DATA; stop it or set KAFKA_PORT"
  fi
  if port_open "$CONTROLLER_PORT"; then
    die "controller port $CONTROLLER_PORT is in use; stop that process or set KAFKA_CONTROLLER_PORT"
  fi

  cmd_fetch
  check_java
  mkdir -p "$DATA"
  write_server_properties
  format_storage

  # setsid: the broker gets its own session, so a Ctrl-C or a job-control
  # kill aimed at the calling shell does not take it down; nohup keeps it
  # alive when the terminal goes away. In a script a background job is not a
  # process-group leader, so setsid execs in place and $! is the JVM's pid.
  # The working directory is the data dir so hs_err files land there too.
  # shellcheck disable=SC2086 # HEAP_OPTS is a list of JVM flags
  (
    cd "$DATA"
    exec nohup setsid java $HEAP_OPTS \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
      -Dkafka.logs.dir="$DATA" \
      -cp "$LIBS/*" kafka.Kafka "$CONFIG"
  ) >"$BROKER_OUT" 2>&1 </dev/null 9>&- &
  echo $! >"$PID_FILE"
  log "started broker (pid $!), log: $SERVER_LOG"
  wait_ready "$started"
}

# --- stop, status, reset -----------------------------------------------------

cmd_stop() {
  local pid started deadline
  pid=$(broker_pid)
  if [[ -z "$pid" ]]; then
    log "broker not running"
    return 0
  fi
  started=$(now_us)
  # SIGTERM runs Kafka's shutdown hook: a clean shutdown closes the logs, so
  # the next start skips log recovery.
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((started + STOP_TIMEOUT * 1000000))
  while pid_alive "$pid" && (($(now_us) < deadline)); do
    sleep 0.2
  done
  if pid_alive "$pid"; then
    log "broker (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$(($(now_us) + 10 * 1000000))
    while pid_alive "$pid" && (($(now_us) < deadline)); do
      sleep 0.2
    done
    pid_alive "$pid" && die "broker (pid $pid) survived SIGKILL"
  fi
  rm -f "$PID_FILE"
  log "broker stopped (pid $pid) after $(elapsed_since "$started")s"
}

cmd_status() {
  local pid
  pid=$(broker_pid)
  if [[ -z "$pid" ]]; then
    log "broker not running"
    return 1
  fi
  write_probe_config
  if port_open "$PORT" && probe; then
    log "broker running (pid $pid) and answering on $BOOTSTRAP"
    return 0
  fi
  log "broker process $pid is alive but not answering on $BOOTSTRAP"
  return 1
}

cmd_reset() {
  cmd_stop
  # Guard the rm: an empty or root path from a bad override must not be wiped.
  [[ -n "$DATA" && "$DATA" != "/" && "$DATA" != "$HOME" ]] ||
    die "refusing to delete data dir '$DATA'"
  rm -rf "$DATA"
  log "deleted $DATA"
}

# --- main --------------------------------------------------------------------

# Fetch under the lock if needed, then drop the lock before exec-ing a tool
# that may run for a long time.
fetch_for_tool() {
  if ! is_fetched; then
    take_lock
    cmd_fetch
    exec 9>&-
  fi
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    fetch) take_lock && cmd_fetch ;;
    start) take_lock && cmd_start ;;
    stop) take_lock && cmd_stop ;;
    status) cmd_status ;;
    wait) wait_ready ;;
    reset) take_lock && cmd_reset ;;
    tool)
      [[ $# -gt 0 ]] || die "usage: $0 tool MAIN_CLASS [ARGS...]"
      fetch_for_tool
      exec java "${TOOL_JVM_OPTS[@]}" -cp "$LIBS/*" "$@"
      ;;
    topics)
      fetch_for_tool
      exec java "${TOOL_JVM_OPTS[@]}" -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" "$@"
      ;;
    -h | --help | help) usage ;;
    *)
      usage
      [[ -z "$cmd" ]] && exit 2
      die "unknown command '$cmd'"
      ;;
  esac
}

main "$@"
