#!/usr/bin/env bash
# The agent in systemd mode, as on a Trove VM: two guest containers with Debian's systemd as PID 1
# (docker/systemd/Dockerfile), the agent as trove-guestagent.service managing redis-server.service
# with systemctl, and a RabbitMQ broker, on a private network; tests/docker/systemd_scenario.py
# drives them from the host with trove-guestctl (prepare, attach, promote, kill -9 of redis-server,
# restart, stop_db).
#
# Fails loudly (exit 1) when Docker is missing or not running. Removes every container and the
# network it made, on success, failure or interrupt.
#
# Usage: scripts/systemd-tests.sh
# Environment:
#   TROVE_SYSTEMD_IMAGE   image tag to build and run (default trove-redis-guest/guest-systemd:latest)
#   TROVE_RABBITMQ_IMAGE  broker image (default trove-redis-guest/rabbitmq:latest; built when missing)
#   TROVE_INFRA_BUILD=0   skip cargo and docker build (use the binaries and the images as they are)
#   TROVE_CARGO_PROFILE   release (default) or debug: the binaries' build (scripts/bins.sh)
#   TROVE_INFRA_SUBNET    the /24 prefix to use (default 172.28.60)
#   TROVE_INFRA_TIMEOUT   seconds the scenario may take (default 240)
#   TROVE_INFRA_KEEP=1    leave the containers running for debugging
# Logs: target/infra-tests/systemd/ (scenario output, trove-guestctl runs, and every container's
# journal of the agent and Redis units).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/infra.sh
. scripts/infra.sh
IMAGE=${TROVE_SYSTEMD_IMAGE:-trove-redis-guest/guest-systemd:latest}
RMQ_IMAGE=${TROVE_RABBITMQ_IMAGE:-trove-redis-guest/rabbitmq:latest}
PREFIX=${TROVE_INFRA_SUBNET:-172.28.60}
TIMEOUT=${TROVE_INFRA_TIMEOUT:-240}
NET=infra-sd-net
BROKER=infra-sd-rmq
GUESTS=(infra-sd1 infra-sd2)
WORK="$ROOT/target/infra-tests/systemd"

log() { echo "systemd-tests: $*" >&2; }
fail() {
    not_run_banner systemd-tests "the systemd-mode test" "$*"
    echo "scenario=systemd result=fail"
    exit 1
}

problem=$(docker_problem)
[ -z "$problem" ] || fail "$problem"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null || fail "python3 (3.8 or later) is required."

# --- build -------------------------------------------------------------------------------------
if [ "${TROVE_INFRA_BUILD:-1}" != 0 ]; then
    log "cargo build ($TROVE_CARGO_PROFILE) of the binaries"
    build_bins || fail "cargo build ($TROVE_CARGO_PROFILE) failed."
    scripts/docker-base.sh >&2 || fail "the base image debian:bookworm-slim could not be made."
    if ! docker image inspect "$RMQ_IMAGE" >/dev/null 2>&1; then
        TROVE_RABBITMQ_IMAGE=$RMQ_IMAGE scripts/docker-images.sh rabbitmq >&2 || fail "building $RMQ_IMAGE failed."
    fi
    log "docker build $IMAGE (docker/systemd/Dockerfile)"
    docker build -q -f docker/systemd/Dockerfile --build-arg BIN_DIR="$BIN_DIR" -t "$IMAGE" . >/dev/null || fail "building $IMAGE failed."
fi
for img in "$IMAGE" "$RMQ_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || fail "image $img is missing."
done
[ -x "$BIN_DIR/trove-guestctl" ] || fail "$BIN_DIR/trove-guestctl is missing (scripts/bins.sh build_bins)."

# --- our containers and network (fixed names: remove leftovers of an interrupted run) ----------
cleanup() {
    if [ "${TROVE_INFRA_KEEP:-0}" = 1 ]; then
        log "TROVE_INFRA_KEEP=1: left running; remove with: docker rm -f $BROKER ${GUESTS[*]}; docker network rm $NET"
        return
    fi
    docker rm -f -v "$BROKER" "${GUESTS[@]}" >/dev/null 2>&1
    docker network rm "$NET" >/dev/null 2>&1
    if docker ps -a --format '{{.Names}}' | grep -qxE "$BROKER|$(IFS='|'; echo "${GUESTS[*]}")" ||
        docker network inspect "$NET" >/dev/null 2>&1; then
        log "WARNING: could not remove every container or the network $NET"
    else
        log "removed the containers and the network"
    fi
}
collect_logs() {
    docker logs "$BROKER" >"$WORK/$BROKER.log" 2>&1
    for c in "${GUESTS[@]}"; do
        docker exec "$c" journalctl --no-pager -o short-precise -u trove-guestagent -u redis-server >"$WORK/$c.journal" 2>&1
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
cleanup_quiet() { docker rm -f -v "$BROKER" "${GUESTS[@]}" >/dev/null 2>&1; docker network rm "$NET" >/dev/null 2>&1; }
cleanup_quiet

rm -rf "$WORK"
mkdir -p "$WORK"
docker network create --subnet "$PREFIX.0/24" "$NET" >/dev/null || fail "cannot create network $NET on $PREFIX.0/24."
docker run -d --name "$BROKER" --hostname "$BROKER" --network "$NET" --ip "$PREFIX.2" "$RMQ_IMAGE" >/dev/null ||
    fail "cannot start the broker."

# systemd in a container: its own cgroup subtree writable, /run and /run/lock as tmpfs, the
# capabilities its units' sandboxing needs. --privileged is not needed.
CGROUP_ARGS=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw)
SUFFIX=$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
IDS=()
PAIRS=()
for i in 1 2; do
    c=${GUESTS[$((i - 1))]}
    ip="$PREFIX.$((10 + i))"
    id="$c-$SUFFIX"
    conf="$WORK/$c.toml"
    (umask 077 && cat >"$conf" <<EOF
# trove-guestagent config of $c, as cloud-init would write it on a VM.
[rpc]
transport_url = "rabbit://trove:trove@$PREFIX.2:5672/"
reconnect_max_backoff = 2
[guest]
id = "$id"
[redis]
service = "systemd"
unit = "redis-server"
binary = "/usr/bin/redis-server"
config_file = "/etc/redis/redis.conf"
data_dir = "/var/lib/redis"
[replication]
diskless_sync_delay = 0
[log]
level = "debug,lapin=info,redis=info"
EOF
    )
    docker run -d --name "$c" --hostname "$c" --network "$NET" --ip "$ip" \
        --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        "${CGROUP_ARGS[@]}" --tmpfs /run --tmpfs /run/lock --tmpfs /tmp --stop-signal SIGRTMIN+3 \
        -v "$conf:/etc/trove/trove-guestagent.toml:ro" "$IMAGE" >/dev/null || fail "cannot start $c."
    IDS+=("$id")
    PAIRS+=("$c=$ip")
done

export TROVE_INFRA_GUESTCTL="$ROOT/$BIN_DIR/trove-guestctl"
export TROVE_INFRA_WORKDIR="$WORK"
export TROVE_INFRA_BROKER="$PREFIX.2"
export TROVE_INFRA_GUESTS=$(IFS=,; echo "${PAIRS[*]}")
export TROVE_INFRA_IDS=$(IFS=,; echo "${IDS[*]}")
start=$SECONDS
timeout -k 10 "$TIMEOUT" python3 -u tests/docker/systemd_scenario.py 2>&1 | tee "$WORK/scenario.out"
rc=${PIPESTATUS[0]}
collect_logs
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "  TIMEOUT: the scenario did not finish within ${TIMEOUT}s"
    echo "scenario=systemd result=fail"
fi
log "$((SECONDS - start)) s; logs in target/infra-tests/systemd/"
[ "$rc" = 0 ]
