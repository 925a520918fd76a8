#!/usr/bin/env bash
# Installs, starts, stops and wipes waflow's local infrastructure: Apache Kafka (KRaft, single node) from Maven
# Central jars, and SecantusDB, a MongoDB-protocol server over WiredTiger (MongoDB's storage engine) that honours
# MongoDB's single-document atomicity, unique and secondary indexes, TTL indexes and transactions (tests/conformance
# proves it on every run). Production runs MongoDB 7+ as a replica set; SecantusDB (GPL-2.0, beta) only ever runs
# as a separate process for development and tests.
#
#   infra.sh install            fetch Kafka jars and install the database server (cached; repeated calls are cheap)
#   infra.sh start [kafka|mongo]   start and wait until ready
#   infra.sh stop  [kafka|mongo]
#   infra.sh wipe               stop and delete the data folders
#   infra.sh status
#
# The database server: secantusd-rs (Rust, built once by cargo from crates.io, about 5 minutes on 2 idle cores)
# when a Rust toolchain can build it, else secantusd-py (PyPI's manylinux wheel, nothing to build; about a fifth
# of the speed). WAFLOW_MONGO_SERVER=rs|py forces one. The start prints which one runs.
#
# Environment: WAFLOW_CACHE (jars and binaries, default ~/.cache/waflow), WAFLOW_DATA (default <repo>/.data/local),
# KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), MONGO_PORT (27017), KAFKA_HEAP (512m), MONGO_CACHE (1G).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${WAFLOW_CACHE:-$HOME/.cache/waflow}"
data="${WAFLOW_DATA:-$repo/.data/local}"
kafka_port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
mongo_port="${MONGO_PORT:-27017}"
kafka_heap="${KAFKA_HEAP:-512m}"
mongo_cache="${MONGO_CACHE:-1G}"
mongo_choice="${WAFLOW_MONGO_SERVER:-auto}"

pom="$here/kafka/pom.xml"
pom_hash="$(sha256sum "$pom" | cut -c1-12)"
kafka_libs="$cache/kafka-$pom_hash/libs"
secantus_rs_version="0.5.3-beta.196"
secantus_py_version="0.7.0b3"
secantus_rs="$cache/secantus-rs-$secantus_rs_version/secantusd-rs"
secantus_py_env="$cache/secantus-py-$secantus_py_version"
secantus_py="$secantus_py_env/bin/secantusd-py"

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

# secantusd-rs from crates.io. The crate declares Rust 1.98; it builds and passes tests/conformance with 1.95.
build_secantus_rs() {
  command -v cargo >/dev/null 2>&1 || return 1
  log "building secantusd-rs $secantus_rs_version from crates.io (once; about 5 minutes on 2 idle cores)"
  local root="$cache/secantus-rs-$secantus_rs_version"
  mkdir -p "$root"
  CARGO_TARGET_DIR="$cache/cargo-target" cargo install --quiet "secantus-mdb@$secantus_rs_version" \
    --ignore-rust-version --root "$root/install" >"$root/build.log" 2>&1 || {
    tail -5 "$root/build.log" >&2; return 1; }
  mv "$root/install/bin/secantusd-rs" "$secantus_rs"
  rm -rf "$root/install" "$cache/cargo-target"
}

# secantusd-py from PyPI, in an environment of its own (it is a tool beside the project, not one of its packages).
install_secantus_py() {
  if [ -x "$secantus_py" ]; then return; fi
  need uv "install uv (make installs it: make deps)"
  log "installing secantusd-py $secantus_py_version from PyPI"
  rm -rf "$secantus_py_env"
  uv venv --quiet --python 3.11 "$secantus_py_env" >/dev/null
  VIRTUAL_ENV="$secantus_py_env" uv pip install --quiet "secantusdb==$secantus_py_version"
}

# Prints the server to run: rs or py.
install_mongo() {
  case "$mongo_choice" in
    rs) [ -x "$secantus_rs" ] || build_secantus_rs || { log "secantusd-rs could not be built"; exit 1; }
        echo rs ;;
    py) install_secantus_py; echo py ;;
    auto)
      if [ -x "$secantus_rs" ] || build_secantus_rs; then echo rs; else
        log "no Rust toolchain could build secantusd-rs; using secantusd-py"
        install_secantus_py; echo py
      fi ;;
    *) log "WAFLOW_MONGO_SERVER must be rs, py or auto"; exit 2 ;;
  esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The log cleaner (compacted topics: contacts.v1, tenants.v1) takes its dedupe buffer from the heap in one piece:
# Kafka's default of 128 MB in a 256 MB test broker's heap failed with OutOfMemoryError on a restart (the Kafka
# outage test); 16 MB is plenty for a development broker's compacted topics.
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
log.cleaner.dedupe.buffer.size=16777216
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

start_mongo() {
  local server pidf="$data/mongo.pid"
  server="$(install_mongo)"
  if pid_alive "$pidf"; then log "database server already running on $mongo_port"; return; fi
  if port_open "$mongo_port"; then log "port $mongo_port is taken by another process"; exit 1; fi
  mkdir -p "$data/mongo"
  if [ "$server" = rs ]; then
    log "starting secantusd-rs $secantus_rs_version on 127.0.0.1:$mongo_port"
    nohup "$secantus_rs" --host 127.0.0.1 --port "$mongo_port" --storage-path "$data/mongo" \
      --cache-size "$mongo_cache" >"$data/mongo.log" 2>&1 &
  else
    log "starting secantusd-py $secantus_py_version on 127.0.0.1:$mongo_port"
    nohup "$secantus_py" --host 127.0.0.1 --port "$mongo_port" --storage-path "$data/mongo" \
      --cache-size "$mongo_cache" --log-level WARNING >"$data/mongo.log" 2>&1 &
  fi
  echo $! >"$pidf"
  echo "$server" >"$data/mongo.server"
  for _ in $(seq 1 150); do
    if port_open "$mongo_port"; then log "database server ready"; return; fi
    pid_alive "$pidf" || { tail -20 "$data/mongo.log" >&2; log "database server exited"; exit 1; }
    sleep 0.2
  done
  log "database server did not become ready"; exit 1
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
  install) install_kafka; install_mongo >/dev/null ;;
  start)
    case "$what" in kafka) start_kafka ;; mongo) start_mongo ;; all) start_kafka; start_mongo ;; esac ;;
  stop)
    case "$what" in kafka) stop_one kafka ;; mongo) stop_one mongo ;; all) stop_one kafka; stop_one mongo ;; esac ;;
  wipe) stop_one kafka; stop_one mongo; rm -rf "$data"; log "wiped $data" ;;
  status)
    for s in kafka mongo; do
      if pid_alive "$data/$s.pid"; then echo "$s: running (pid $(cat "$data/$s.pid"))"; else echo "$s: stopped"; fi
    done ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
