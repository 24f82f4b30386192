#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, combined broker + controller) on loopback, for development,
# tests and benchmarks. The broker jars are resolved once by Maven into .cache/kafka/.
#
#   dev/kafka/kafka.sh start    format storage if needed, start, wait until it accepts clients
#   dev/kafka/kafka.sh stop     stop it (SIGTERM, then SIGKILL after a grace period)
#   dev/kafka/kafka.sh status   exit 0 and print details when running, exit 3 otherwise
#   dev/kafka/kafka.sh fetch    only resolve the jars
#   dev/kafka/kafka.sh classpath  print the classpath (for Kafka's own tools)
#
# Settings (environment):
#   KAFKA_PORT             client port                      (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port                  (default KAFKA_PORT + 1)
#   KAFKA_STATE_DIR        data, config, pid file and logs  (default var/kafka-$KAFKA_PORT)
#   KAFKA_HEAP_OPTS        JVM heap flags                   (default -Xms256m -Xmx1g)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness    (default 180)
#   KAFKA_VERSION          must match dev/kafka/pom.xml     (default 4.1.1)
#
# Optional SASL_SSL listener (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN over TLS), next to PLAINTEXT:
#   KAFKA_SASL_SSL_PORT    port of the SASL_SSL listener    (default: none, no such listener)
#   KAFKA_TLS_KEYSTORE     PEM file: the broker's private key (PKCS#8) then its certificate chain
#   KAFKA_TLS_TRUSTSTORE   PEM file of CA certificates that sign client certificates (optional)
#   KAFKA_TLS_CLIENT_AUTH  none | requested | required     (default none)
#   KAFKA_SASL_USERS       "name:password ..." users; SCRAM credentials are created when the
#                          storage is formatted (a fresh KAFKA_STATE_DIR), PLAIN reads them from
#                          the listener's JAAS config
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_STATE_DIR="${KAFKA_STATE_DIR:-$root/var/kafka-$KAFKA_PORT}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-180}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-}"
KAFKA_TLS_KEYSTORE="${KAFKA_TLS_KEYSTORE:-}"
KAFKA_TLS_TRUSTSTORE="${KAFKA_TLS_TRUSTSTORE:-}"
KAFKA_TLS_CLIENT_AUTH="${KAFKA_TLS_CLIENT_AUTH:-none}"
KAFKA_SASL_USERS="${KAFKA_SASL_USERS:-}"
libs="$root/.cache/kafka/libs-$KAFKA_VERSION"
pid_file="$KAFKA_STATE_DIR/kafka.pid"
log_dir="$KAFKA_STATE_DIR/logs"
props="$KAFKA_STATE_DIR/server.properties"

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }

need_java() {
  command -v java >/dev/null 2>&1 || die "Java 17 or newer is required but 'java' is not on PATH (install a JDK 17+, e.g. the openjdk-17-jdk-headless package)"
  local v major
  v="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  major="${v%%.*}"
  [[ "$major" == "1" ]] && major="$(echo "$v" | cut -d. -f2)"
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot read the Java version from 'java -version' (got '$v')"
  (( major >= 17 )) || die "Java 17 or newer is required, found Java $v"
}

fetch() {
  if [[ -f "$libs/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "Maven ('mvn') is required once to fetch the Kafka $KAFKA_VERSION jars into $libs, and is not on PATH (install the maven package)"
  need_java
  say "resolving Apache Kafka $KAFKA_VERSION jars with Maven into $libs (first run only)"
  rm -rf "$libs.tmp"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs.tmp" \
    || die "Maven could not resolve the Kafka jars (see the output above)"
  rm -rf "$libs" && mv "$libs.tmp" "$libs" && touch "$libs/.complete"
}

running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid; pid="$(cat "$pid_file" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # guard against pid reuse: the process must be our broker
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $props" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_sasl_ssl_settings() {
  [[ -n "$KAFKA_SASL_SSL_PORT" ]] || return 0
  [[ -f "$KAFKA_TLS_KEYSTORE" ]] || die "KAFKA_SASL_SSL_PORT needs KAFKA_TLS_KEYSTORE, a PEM file with the broker's key and certificate"
  [[ -n "$KAFKA_SASL_USERS" ]] || die "KAFKA_SASL_SSL_PORT needs KAFKA_SASL_USERS (name:password ...)"
  local pair
  for pair in $KAFKA_SASL_USERS; do
    [[ "$pair" =~ ^[A-Za-z0-9_.-]+:[^[:space:]\",=]+$ ]] || die "KAFKA_SASL_USERS: '$pair' is not name:password (no spaces, quotes, commas or '=' in the password)"
  done
}

sasl_ssl_properties() {
  [[ -n "$KAFKA_SASL_SSL_PORT" ]] || return 0
  local plain_users="" pair
  for pair in $KAFKA_SASL_USERS; do plain_users+=" user_${pair%%:*}=\"${pair#*:}\""; done
  cat <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_TLS_KEYSTORE
listener.name.sasl_ssl.ssl.client.auth=$KAFKA_TLS_CLIENT_AUTH
PROPS
  if [[ -n "$KAFKA_TLS_TRUSTSTORE" ]]; then
    echo "listener.name.sasl_ssl.ssl.truststore.type=PEM"
    echo "listener.name.sasl_ssl.ssl.truststore.location=$KAFKA_TLS_TRUSTSTORE"
  fi
}

write_properties() {
  mkdir -p "$KAFKA_STATE_DIR/data" "$log_dir"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    protocols+=",SASL_SSL:SASL_SSL"
  fi
  local extra
  extra="$(sasl_ssl_properties)"
  cat > "$props" <<PROPS
# generated by dev/kafka/kafka.sh on every start; edit the script, not this file
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
$extra
log.dirs=$KAFKA_STATE_DIR/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.retention.hours=-1
log.segment.bytes=104857600
# the log cleaner looks for dirty compacted logs every second (default 15 s), so that the
# table changelogs are cleaned within a test or bench run (docs/topology.md#changelogs-compaction)
log.cleaner.backoff.ms=1000
PROPS
}

start() {
  local pid
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  need_java
  fetch
  if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
    die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on 127.0.0.1 is taken by another process; set KAFKA_PORT to a free port"
  fi
  check_sasl_ssl_settings
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]] && port_open "$KAFKA_SASL_SSL_PORT"; then
    die "port $KAFKA_SASL_SSL_PORT (KAFKA_SASL_SSL_PORT) on 127.0.0.1 is taken by another process"
  fi
  write_properties
  local cp="$libs/*"
  if [[ ! -f "$KAFKA_STATE_DIR/data/meta.properties" ]]; then
    local cluster_id pair
    local scram=()
    if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
      for pair in $KAFKA_SASL_USERS; do
        scram+=(--add-scram "SCRAM-SHA-256=[name=${pair%%:*},password=${pair#*:}]")
        scram+=(--add-scram "SCRAM-SHA-512=[name=${pair%%:*},password=${pair#*:}]")
      done
    fi
    # a base64url UUID; never one that starts with '-' (the tool would read it as an option)
    cluster_id="-"
    while [[ "$cluster_id" == -* ]]; do
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    say "formatting KRaft storage in $KAFKA_STATE_DIR/data (cluster $cluster_id)"
    java -cp "$cp" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$log_dir" \
      kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$props" "${scram[@]}" \
      >> "$log_dir/format.log" 2>&1 || die "formatting storage failed; see $log_dir/format.log"
  fi
  say "starting on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT), log $log_dir/server.log"
  # shellcheck disable=SC2086
  nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$log_dir" \
    -cp "$cp" kafka.Kafka "$props" > "$log_dir/stdout.log" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while (( SECONDS < deadline )); do
    if ! pid="$(running_pid)"; then
      tail -n 20 "$log_dir/stdout.log" "$log_dir/server.log" 2>/dev/null >&2 || true
      die "the broker exited during start-up; see $log_dir/server.log"
    fi
    if port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$log_dir/server.log" 2>/dev/null; then
      say "ready (pid $pid) after $((SECONDS - deadline + KAFKA_START_TIMEOUT))s: bootstrap servers 127.0.0.1:$KAFKA_PORT${KAFKA_SASL_SSL_PORT:+, SASL_SSL 127.0.0.1:$KAFKA_SASL_SSL_PORT}"
      return 0
    fi
    sleep 0.2
  done
  die "the broker did not become ready within ${KAFKA_START_TIMEOUT}s; see $log_dir/server.log"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    say "not running on port $KAFKA_PORT"
    rm -f "$pid_file"
    return 0
  fi
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; say "stopped"; return 0; }
    sleep 0.2
  done
  say "still running after 30s: killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    say "running (pid $pid) on 127.0.0.1:$KAFKA_PORT, state in $KAFKA_STATE_DIR"
    return 0
  fi
  say "not running on port $KAFKA_PORT"
  return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) need_java; fetch; say "jars cached in $libs" ;;
  classpath) fetch >&2; echo "$libs/*" ;;
  *) echo "usage: $0 start|stop|status|fetch|classpath" >&2; exit 2 ;;
esac
