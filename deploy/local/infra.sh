#!/usr/bin/env bash
# Installs, starts, stops and wipes waflow's local infrastructure: Apache Kafka (KRaft, single node) from Maven
# Central jars, and FerretDB (MongoDB wire protocol over SQLite) built from the Go module proxy.
#
#   infra.sh install            fetch Kafka jars and build FerretDB (cached; repeated calls are cheap)
#   infra.sh start [kafka|ferretdb]   start and wait until ready
#   infra.sh stop  [kafka|ferretdb]
#   infra.sh wipe               stop and delete the data folders
#   infra.sh status
#
# Environment: WAFLOW_CACHE (jars and binaries, default ~/.cache/waflow), WAFLOW_DATA (default <repo>/.data/local),
# KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), MONGO_PORT (27017), KAFKA_HEAP (512m).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${WAFLOW_CACHE:-$HOME/.cache/waflow}"
data="${WAFLOW_DATA:-$repo/.data/local}"
kafka_port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
mongo_port="${MONGO_PORT:-27017}"
kafka_heap="${KAFKA_HEAP:-512m}"

pom="$here/kafka/pom.xml"
pom_hash="$(sha256sum "$pom" | cut -c1-12)"
kafka_libs="$cache/kafka-$pom_hash/libs"
fdb_src="$here/ferretdb"
fdb_hash="$(cat "$fdb_src/go.mod" "$fdb_src/main.go" "$fdb_src/patch.sh" | sha256sum | cut -c1-12)"
fdb_bin="$cache/ferretdb-$fdb_hash/ferretdb"

log() { printf '[infra] %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || { log "missing '$1': $2"; exit 1; }
}

install_kafka() {
  if [ -f "$kafka_libs/.complete" ]; then return; fi
  need java "install a Java 17+ runtime (Debian: apt-get install -y openjdk-17-jre-headless)"
  need mvn "install Maven (Debian: apt-get install -y maven)"
  log "fetching Apache Kafka jars from Maven Central"
  rm -rf "$kafka_libs" && mkdir -p "$kafka_libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$kafka_libs" -DincludeScope=runtime
  touch "$kafka_libs/.complete"
}

install_ferretdb() {
  if [ -x "$fdb_bin" ]; then return; fi
  need go "install Go 1.24+ (Debian: apt-get install -y golang, or the official toolchain)"
  log "building FerretDB from the Go module proxy, with waflow's fixes (see patch.sh; a few minutes the first time)"
  local work
  work="$(dirname "$fdb_bin")"
  rm -rf "$work/build" && mkdir -p "$work/build"
  # FerretDB's source with our fix applied (see patch.sh), built through our embedding module.
  bash "$fdb_src/patch.sh" "$work/src"
  cp "$fdb_src/go.mod" "$fdb_src/go.sum" "$fdb_src/main.go" "$work/build/"
  (cd "$work/build" && go mod edit -replace "github.com/FerretDB/FerretDB=$work/src" &&
    GOFLAGS=-mod=mod go build -o "$fdb_bin.tmp" . && mv "$fdb_bin.tmp" "$fdb_bin")
  rm -rf "$work/build" "$work/src"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_kafka() {
  install_kafka
  local dir="$data/kafka" pidf="$data/kafka.pid"
  if pid_alive "$pidf"; then log "kafka already running on $kafka_port"; return; fi
  if port_open "$kafka_port"; then log "port $kafka_port is taken by another process"; exit 1; fi
  mkdir -p "$dir/logs"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/logs
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.min.compaction.lag.ms=0
PROPS
  if [ ! -f "$dir/logs/meta.properties" ]; then
    java -cp "$kafka_libs/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$kafka_libs/*" kafka.tools.StorageTool random-uuid)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1
  fi
  log "starting kafka on 127.0.0.1:$kafka_port"
  nohup java "-Xmx$kafka_heap" "-Xms$kafka_heap" -XX:+UseG1GC -cp "$kafka_libs/*" kafka.Kafka \
    "$dir/server.properties" >"$data/kafka.log" 2>&1 &
  echo $! >"$pidf"
  for _ in $(seq 1 120); do
    if grep -q "Kafka Server started" "$data/kafka.log" 2>/dev/null && port_open "$kafka_port"; then
      log "kafka ready"; return
    fi
    pid_alive "$pidf" || { tail -20 "$data/kafka.log" >&2; log "kafka exited"; exit 1; }
    sleep 0.5
  done
  tail -20 "$data/kafka.log" >&2; log "kafka did not become ready"; exit 1
}

start_ferretdb() {
  install_ferretdb
  local pidf="$data/ferretdb.pid"
  if pid_alive "$pidf"; then log "ferretdb already running on $mongo_port"; return; fi
  if port_open "$mongo_port"; then log "port $mongo_port is taken by another process"; exit 1; fi
  mkdir -p "$data/ferretdb"
  log "starting ferretdb on 127.0.0.1:$mongo_port"
  nohup "$fdb_bin" --listen-addr "127.0.0.1:$mongo_port" --data-dir "$data/ferretdb" \
    ${FERRETDB_DEBUG_ADDR:+--debug-addr "$FERRETDB_DEBUG_ADDR"} >"$data/ferretdb.log" 2>&1 &
  echo $! >"$pidf"
  for _ in $(seq 1 100); do
    if port_open "$mongo_port"; then log "ferretdb ready"; return; fi
    pid_alive "$pidf" || { tail -20 "$data/ferretdb.log" >&2; log "ferretdb exited"; exit 1; }
    sleep 0.2
  done
  log "ferretdb did not become ready"; exit 1
}

stop_one() {
  local pidf="$data/$1.pid"
  if pid_alive "$pidf"; then
    local pid; pid="$(cat "$pidf")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    log "$1 stopped"
  fi
  rm -f "$pidf"
}

what="${2:-all}"
case "${1:-}" in
  install) install_kafka; install_ferretdb ;;
  start)
    case "$what" in kafka) start_kafka ;; ferretdb) start_ferretdb ;; all) start_kafka; start_ferretdb ;; esac ;;
  stop)
    case "$what" in kafka) stop_one kafka ;; ferretdb) stop_one ferretdb ;; all) stop_one kafka; stop_one ferretdb ;; esac ;;
  wipe) stop_one kafka; stop_one ferretdb; rm -rf "$data"; log "wiped $data" ;;
  status)
    for s in kafka ferretdb; do
      if pid_alive "$data/$s.pid"; then echo "$s: running (pid $(cat "$data/$s.pid"))"; else echo "$s: stopped"; fi
    done ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
