#!/usr/bin/env bash
# A RabbitMQ node dies in the middle of a promote: a 3-node cluster of Debian's rabbitmq-server
# and three guests whose agents use a multi-host transport_url and quorum queues
# (tests/docker/compose.cluster.yml), driven from the host by tests/docker/cluster_scenario.py:
# first the agents' node dies (the promote goes on), then, with it restarted, the node of the
# agents and of trove-guestctl (the promote fails at once; a retry completes).
#
# Fails loudly (exit 1) when Docker is missing or not running. Removes every container and the
# network it made, on success, failure or interrupt.
#
# Usage: scripts/cluster-tests.sh
# Environment:
#   TROVE_GUEST_IMAGE     guest image tag to build and run (default trove-redis-guest/guest:cluster, so that
#                         the compose test bed's trove-redis-guest/guest:latest is left alone)
#   TROVE_RABBITMQ_IMAGE  broker image (default trove-redis-guest/rabbitmq:latest; built when missing)
#   TROVE_INFRA_BUILD=0   skip cargo and docker build (use the binaries and the images as they are)
#   TROVE_CARGO_PROFILE   release (default) or debug: the binaries' build (scripts/bins.sh)
#   TROVE_INFRA_CLUSTER_PREFIX  the /24 prefix to use (default 172.28.61)
#   TROVE_INFRA_TIMEOUT   seconds the scenario may take once the cluster is up (default 240)
#   TROVE_INFRA_KEEP=1    leave the containers running for debugging
# Logs: target/infra-tests/cluster/ (scenario output, trove-guestctl runs, every container's log).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/infra.sh
. scripts/infra.sh
export TROVE_GUEST_IMAGE=${TROVE_GUEST_IMAGE:-trove-redis-guest/guest:cluster}
export TROVE_RABBITMQ_IMAGE=${TROVE_RABBITMQ_IMAGE:-trove-redis-guest/rabbitmq:latest}
export TROVE_INFRA_CLUSTER_PREFIX=${TROVE_INFRA_CLUSTER_PREFIX:-172.28.61}
TIMEOUT=${TROVE_INFRA_TIMEOUT:-240}
PROJECT=infracluster
NODES=(infra-rmq1 infra-rmq2 infra-rmq3)
GUESTS=(infra-cg1 infra-cg2 infra-cg3)
WORK="$ROOT/target/infra-tests/cluster"

log() { echo "cluster-tests: $*" >&2; }
fail() {
    not_run_banner cluster-tests "the RabbitMQ cluster test" "$*"
    echo "scenario=rmq_cluster result=fail"
    exit 1
}

problem=$(docker_problem)
[ -z "$problem" ] || fail "$problem"
command -v docker-compose >/dev/null 2>&1 || fail "docker-compose is not installed."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null || fail "python3 (3.8 or later) is required."

# --- build -------------------------------------------------------------------------------------
if [ "${TROVE_INFRA_BUILD:-1}" != 0 ]; then
    log "cargo build ($TROVE_CARGO_PROFILE) of the binaries"
    build_bins || fail "cargo build ($TROVE_CARGO_PROFILE) failed."
    scripts/docker-base.sh >&2 || fail "the base image debian:bookworm-slim could not be made."
    if ! docker image inspect "$TROVE_RABBITMQ_IMAGE" >/dev/null 2>&1; then
        scripts/docker-images.sh rabbitmq >&2 || fail "building $TROVE_RABBITMQ_IMAGE failed."
    fi
    log "docker build $TROVE_GUEST_IMAGE (Dockerfile)"
    docker build -q --build-arg BIN_DIR="$BIN_DIR" -t "$TROVE_GUEST_IMAGE" . >/dev/null || fail "building $TROVE_GUEST_IMAGE failed."
fi
for img in "$TROVE_GUEST_IMAGE" "$TROVE_RABBITMQ_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || fail "image $img is missing."
done
[ -x "$BIN_DIR/trove-guestctl" ] || fail "$BIN_DIR/trove-guestctl is missing (scripts/bins.sh build_bins)."

# --- the project -------------------------------------------------------------------------------
export TROVE_ERLANG_COOKIE=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export TROVE_RUN_TAG=$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
COMPOSE=(docker-compose -p "$PROJECT" -f tests/docker/compose.cluster.yml)

cleanup() {
    if [ "${TROVE_INFRA_KEEP:-0}" = 1 ]; then
        log "TROVE_INFRA_KEEP=1: left running; remove with: docker rm -f ${NODES[*]} ${GUESTS[*]}; docker network rm ${PROJECT}_cluster"
        return
    fi
    local left
    if left=$(remove_project "$PROJECT"); then log "removed the containers and the network"; else log "WARNING: could not remove everything of $PROJECT: $left"; fi
}
collect_logs() {
    for c in "${NODES[@]}" "${GUESTS[@]}"; do docker logs -t "$c" >"$WORK/$c.log" 2>&1; done
}
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]; }
wait_healthy() {
    local deadline=$((SECONDS + $2))
    until healthy "$1"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 1
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
remove_project "$PROJECT" >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"
start=$SECONDS
# The first node boots alone; the other two find it by classic peer discovery and join it.
"${COMPOSE[@]}" up -d --no-build rmq1 >"$WORK/compose.log" 2>&1 || fail "cannot start infra-rmq1 (see $WORK/compose.log)."
wait_healthy infra-rmq1 120 || fail "infra-rmq1 did not accept AMQP connections within 120 s."
"${COMPOSE[@]}" up -d --no-build rmq2 rmq3 >>"$WORK/compose.log" 2>&1 || fail "cannot start infra-rmq2/3."
wait_healthy infra-rmq2 120 && wait_healthy infra-rmq3 120 || fail "infra-rmq2/3 did not accept AMQP connections within 120 s."
running=$(docker exec infra-rmq1 rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))' 2>/dev/null)
[ "$running" = 3 ] || fail "the three nodes did not form one cluster (running nodes seen by infra-rmq1: ${running:-?})."
log "3-node cluster up in $((SECONDS - start)) s"
"${COMPOSE[@]}" up -d --no-build --no-deps cg1 cg2 cg3 >>"$WORK/compose.log" 2>&1 || fail "cannot start the guests."

export TROVE_INFRA_GUESTCTL="$ROOT/$BIN_DIR/trove-guestctl"
export TROVE_INFRA_WORKDIR="$WORK"
export TROVE_INFRA_PREFIX="$TROVE_INFRA_CLUSTER_PREFIX"
timeout -k 10 "$TIMEOUT" python3 -u tests/docker/cluster_scenario.py 2>&1 | tee "$WORK/scenario.out"
rc=${PIPESTATUS[0]}
collect_logs
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "  TIMEOUT: the scenario did not finish within ${TIMEOUT}s"
    echo "scenario=rmq_cluster result=fail"
fi
log "$((SECONDS - start)) s; logs in target/infra-tests/cluster/"
[ "$rc" = 0 ]
