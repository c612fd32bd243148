#!/usr/bin/env bash
# A callbox cluster on one machine: Kamailio (deploy/kamailio/callbox-dispatcher.cfg) in front
# of two `callbox serve` nodes, each with its own data dir, ports and node_id. Prints where
# everything listens; Ctrl-C stops everything.
#
#   scripts/cluster.sh [DIR]          state and logs in DIR (default ./cluster-data)
#
# Environment: CONFIG (the nodes' callbox.toml: projects, routes; default ./callbox.toml),
# DRAIN_SECONDS (each node's [cluster] drain_seconds, 30), PORT_OFFSET (added to every port
# below, 0), CALLBOX (the callbox command, .venv/bin/callbox).
#
# Each service is one start_* function that records its pid in PIDS; PostgreSQL, S3 and NATS
# come later as more of them (start_postgres, start_s3, start_nats), called from main before
# the nodes, with the nodes' environment pointing at them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR=$(mkdir -p "${1:-./cluster-data}" && cd "${1:-./cluster-data}" && pwd)
CONFIG=${CONFIG:-./callbox.toml}
CALLBOX=${CALLBOX:-.venv/bin/callbox}
PORT_OFFSET=${PORT_OFFSET:-0}
DRAIN_SECONDS=${DRAIN_SECONDS:-30}
HOST=127.0.0.1
KAMAILIO_CONFIG=$PWD/deploy/kamailio/callbox-dispatcher.cfg

# Kamailio's SIP port; each node: name, SIP port, HTTPS port, first and last RTP port.
SIP_PORT=$((5060 + PORT_OFFSET))
NODES=(
  "node-a $((5070 + PORT_OFFSET)) $((8443 + PORT_OFFSET)) $((20000 + PORT_OFFSET))-$((20499 + PORT_OFFSET))"
  "node-b $((5080 + PORT_OFFSET)) $((8444 + PORT_OFFSET)) $((20500 + PORT_OFFSET))-$((20999 + PORT_OFFSET))"
)

PIDS=()
NODE_PIDS=()

fail() { echo "cluster.sh: $*" >&2; exit 2; }

stop_all() {
  trap - INT TERM EXIT
  echo "stopping..."
  # Two SIGTERMs: the first starts a node's drain, the second ends it (calls are hung up).
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit 0
}

start_node() {  # name sip_port https_port rtp_ports
  local name=$1 sip=$2 https=$3 rtp=$4
  mkdir -p "$DIR/$name"
  # setsid: a Ctrl-C in the terminal reaches this script only, which stops the nodes itself.
  CALLBOX_CLUSTER_NODE_ID=$name CALLBOX_CLUSTER_DRAIN_SECONDS=$DRAIN_SECONDS \
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
  trap stop_all INT TERM EXIT
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
