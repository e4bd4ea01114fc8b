#!/usr/bin/env bash
# The main job: builds the project, makes sure RabbitMQ and Redis are installed and running, starts a
# local topology of three guests (each a supervised redis-server on its own port with its own agent)
# and walks through the replication lifecycle with trove-guestctl, printing `show` after each step.
#
# Usage: scripts/demo.sh [--keep]     --keep leaves the topology running for trying commands by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "install and start RabbitMQ and Redis (Debian packages), build the agent"
AMQP_URL=$(bash scripts/services.sh)
command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }
cargo build --release --quiet
BIN="$ROOT/target/release"

DEMO=${DEMO_DIR:-$ROOT/.demo}
rm -rf "$DEMO"; mkdir -p "$DEMO"; chmod 700 "$DEMO"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for f in "$DEMO"/*/redis.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}
if [ $KEEP = 0 ]; then trap cleanup EXIT; fi

for port in 16379 16380 16381; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is in use (an earlier demo --keep?); stop that first" >&2; exit 1
  fi
done
RUN=$(date +%s)
INV="$DEMO/inventory.toml"
{
  echo "transport_url = \"$AMQP_URL\""
  echo 'control_exchange = "trove"'
} > "$INV"
for i in 1 2 3; do
  id="demo$RUN-$i"; port=$((16378 + i)); dir="$DEMO/$id"; mkdir -p "$dir"
  echo -e "\n[[guest]]\nid = \"$id\"" >> "$INV"
  TROVE_GUESTAGENT__RPC__TRANSPORT_URL="$AMQP_URL" \
  TROVE_GUESTAGENT__GUEST__ID="$id" \
  TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL=5 \
  TROVE_GUESTAGENT__REDIS__SERVICE=supervised \
  TROVE_GUESTAGENT__REDIS__CONFIG_FILE="$dir/redis.conf" \
  TROVE_GUESTAGENT__REDIS__DATA_DIR="$dir/data" \
  TROVE_GUESTAGENT__REDIS__PORT=$port \
  TROVE_GUESTAGENT__REDIS__ADVERTISE_HOST=127.0.0.1 \
  TROVE_GUESTAGENT__REPLICATION__FAILOVER_DETACH_GRACE=30 \
    "$BIN/trove-guestagent" > "$dir/agent.log" 2>&1 &
  PIDS+=($!)
done
chmod 600 "$INV"
export TROVE_GUESTCTL_INVENTORY="$INV"
ctl() { echo "\$ trove-guestctl $*" >&2; "$BIN/trove-guestctl" "$@"; }
G1="demo$RUN-1"; G2="demo$RUN-2"; G3="demo$RUN-3"
P1=16379; P2=16380; P3=16381

step "prepare three guests (what Trove's taskmanager casts to a new instance)"
for i in 1 2 3; do
  id="demo$RUN-$i"; dir="$DEMO/$id"
  conf=$(printf 'bind 127.0.0.1\nport 6379\nsave 3600 1 300 100\nappendonly no\npidfile %s/redis.pid\nlogfile ""\nrequirepass demo-secret\n' "$dir")
  args=$(CONF="$conf" python3 -c 'import json,os; print(json.dumps({"config_contents": os.environ["CONF"], "overrides": {}, "snapshot": None, "packages": None, "databases": [], "users": [], "memory_mb": 512, "device_path": None, "mount_point": None, "backup_info": None, "root_password": None, "cluster_config": None}))')
  for _ in $(seq 50); do "$BIN/trove-guestctl" call "$id" rpc_ping >/dev/null 2>&1 && break; sleep 0.2; done
  echo "\$ trove-guestctl call $id prepare - < prepare-args.json   # config_contents with requirepass" >&2
  printf '%s' "$args" | "$BIN/trove-guestctl" call "$id" prepare - >/dev/null
done
ctl show

rcli() { REDISCLI_AUTH=demo-secret redis-cli --no-auth-warning -p "$@"; }

step "1. create two replicas of $G1"
ctl create-replicas --replica-of "$G1" "$G2" "$G3"
ctl show

step "2. write on the master, read on a replica"
rcli $P1 set greeting "hello from the master" >/dev/null
for _ in $(seq 50); do [ -n "$(rcli $P2 get greeting)" ] && break; sleep 0.1; done
echo "replica $G2 reads: $(rcli $P2 get greeting)"
echo "replica $G2 refuses writes: $(rcli $P2 set x 1 2>&1 || true)"

step "3. promote $G2 to replica source"
ctl promote-to-replica-source "$G2"
ctl show
rcli $P2 set after-promote yes >/dev/null

step "4. kill the master $G2 (agent and Redis), then eject it"
kill -9 "${PIDS[1]}"; kill -9 "$(cat "$DEMO/$G2/redis.pid")"
sleep 1
ctl eject-replica-source "$G2"
ctl show
NEWM=$("$BIN/trove-guestctl" show --json | python3 -c 'import json,sys; print([r["id"] for r in json.load(sys.stdin) if r["role"]=="master"][0])')
echo "new master $NEWM has after-promote = $(rcli $([ "$NEWM" = "$G1" ] && echo $P1 || echo $P3) get after-promote)"

step "5. detach the remaining replica"
REPL=$([ "$NEWM" = "$G1" ] && echo "$G3" || echo "$G1")
ctl detach-replica "$REPL"
ctl show
echo "detached $REPL accepts writes: $(rcli $([ "$REPL" = "$G1" ] && echo $P1 || echo $P3) set detached yes)"

if [ $KEEP = 1 ]; then
  step "topology left running"
  echo "export TROVE_GUESTCTL_INVENTORY=$INV   # then: $BIN/trove-guestctl show"
  echo "agent pids: ${PIDS[*]}  (logs in $DEMO/*/agent.log)"
else
  step "done; stopping everything the demo started"
fi
