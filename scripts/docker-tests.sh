#!/usr/bin/env bash
# Fault-injection integration tests across real containers: one RabbitMQ broker and three guests
# (trove-guestagent + redis-server each), driven from the host with trove-guestctl and writers
# that record every acknowledged write (tests/docker/, Python standard library only).
#
# Scenarios: one file each in tests/docker/scenarios/ (a new scenario is a new file; the shared
# code is tests/docker/faultlib/). Each starts from three fresh guests; by default all run, in
# name order, then a short fixed-seed run of the randomized campaign (tests/docker/campaign.py)
# and a short fixed-seed run of the nemesis suite (tests/docker/nemesis.py):
#   agent_killed_mid_attach         the replica's agent is killed while attach_replica waits for a big sync
#   broker_restart                  docker restart of RabbitMQ under a writer; reconnect timed from the broker's accept
#   master_cut_off                  network cut of the master under writers (one inside it); eject; fenced; re-attach
#   master_killed_eject             docker kill of the master under a writer, one replica lagging; eject
#   promote_under_load              a writer follows the master through promote-to-replica-source
#   replica_net_drop_during_create  a replica's network drops during create-replicas
#   replica_redis_restart           a replica's redis-server is killed; it rejoins (partial resync)
#   tls_promote_and_eject           TLS replication; promote and a master kill under one writer; eject
#   watch_sentinel_client           the compose `watch` service and a host watcher fail over a docker-killed
#                                   master while redis-py's Sentinel client keeps writing; the old master
#                                   returns as a replica; then the new master is partitioned, failed over,
#                                   fenced, and follows after healing
#
# Scenarios that declare REQUIRES_REDIS_PY = True run with the project's venv python (redis-py,
# pinned by tests/compat/constraints.txt; scripts/pyenv.sh makes .venv), the others with python3
# and the standard library only. Without redis-py in the venv those scenarios fail and say so.
#
# Each scenario prints details and exactly one line
#   scenario=<name> result=pass|fail acked=<n> lost=<n> longest_pause_ms=<n> bound=<n>
# (lost: acknowledged writes missing on the final master; bound: the acknowledged writes inside
# the scenario's stated loss windows, 0 where nothing may be lost), and the run ends with the line
# `N passed, M failed`; the exit status is non-zero if any failed, and also when Docker is
# missing or not running (that is a failure, never a skip).
#
# What it does: checks the Docker engine; builds the release binaries and the images
# (scripts/docker-images.sh with TROVE_CARGO_BUILD=always: cargo and Docker's layer cache make a
# repeat build take seconds); starts its own compose project (docker-compose.yml plus
# tests/docker/compose.faults.yml) under a unique project name on a free private /24, the broker
# published on 127.0.0.1 only; runs each scenario under a time limit; and always removes the
# project's containers and network on exit (also after a failure, a timeout or Ctrl-C).
#
# Usage: scripts/docker-tests.sh [scenario...]              (no scenario: all, then the campaign and nemesis smoke runs)
#        scripts/docker-tests.sh campaign [--seed S] [--steps N]   (the randomized campaign alone)
#        scripts/docker-tests.sh nemesis [--seed S] [--rounds N] [--faults a,b]   (the nemesis suite alone:
#                                      seeded rounds of one fault each under two watchers, every write in a
#                                      history file under target/nemesis/<seed>/, checked; see tests/docker/nemesis.py)
# Environment:
#   TROVE_FAULTS_BUILD=0               skip the build (use the images and the binaries as they are)
#   TROVE_CARGO_PROFILE                release (default) or debug: the binaries' build (scripts/bins.sh)
#   TROVE_FAULTS_SCENARIO_TIMEOUT      seconds per scenario before it is killed and failed (default 180;
#                                      the campaign gets 60 s per step plus 120 s)
#   TROVE_FAULTS_CAMPAIGN_SEED/_STEPS  the campaign smoke run of a full run (default seed 2255, 4 steps: a broker
#                                      restart, a master cut off, a master killed, a replica's redis-server killed)
#   TROVE_FAULTS_NEMESIS_SEED/_ROUNDS  the nemesis smoke run of a full run (default seed 7, 4 rounds:
#                                      two_node, promote_in_fault, asymmetric, kill_watcher; 3-5 min)
#   TROVE_FAULTS_FLOW_DEADLINE         seconds create-replicas has to report a dropped replica (default 120;
#                                      the surviving replica alone needs about the master's repl-timeout)
#   TROVE_FAULTS_REPL_TIMEOUT          the master's repl-timeout in replica_net_drop_during_create (default 20;
#                                      Redis's own default of 60 makes the scenario 40 s longer)
#   TROVE_FAULTS_POPULATE              keys on the master for agent_killed_mid_attach (default 1000000)
#   TROVE_FAULTS_MIN_REPLICAS          the agents' [replication] min_replicas_to_write, the split-brain
#                                      fence master_cut_off relies on (default 1; 0 runs without it)
#   TROVE_FAULTS_MAX_LAG               the agents' min_replicas_max_lag, seconds (default 2, as shipped)
#   TROVE_FAULTS_PYTHON                the interpreter with redis-py (default .venv/bin/python)
#   TROVE_GUEST_IMAGE, TROVE_RABBITMQ_IMAGE  the images (default trove-redis-guest/{guest,rabbitmq}:latest)
#   TROVE_FAULTS_KEEP=1                keep the containers after the run (for debugging; remove them with
#                                      the `docker rm -f` command printed at the end)
#   TROVE_LOG_LEVEL                    agents' log level (default debug,lapin=info,redis=info)
#   TROVE_FAULTS_SERVER                the server in the guest image: debian (default, Debian's Redis 7.0)
#                                      or <name>-<version> of scripts/redis-servers.sh, e.g. valkey-9.1.2
#                                      (scripts/docker-images.sh's TROVE_GUEST_SERVER); its image is tagged
#                                      $TROVE_GUEST_IMAGE-<server>. The PyPI Valkey builds have no TLS:
#                                      on them tls_promote_and_eject cannot run and is refused if named.
# Logs: target/docker-tests/<project>/ (scenario output, and on failure every container's log,
# each guest's redis-server log and the inventory); target/docker-tests/last points to the newest.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

mapfile -t ALL_SCENARIOS < <(cd tests/docker/scenarios && ls -1 -- *.py | grep -v '^_' | sed 's/\.py$//')
SERVER=${TROVE_FAULTS_SERVER:-debian}
export TROVE_GUEST_IMAGE=${TROVE_GUEST_IMAGE:-trove-redis-guest/guest:latest}
[ "$SERVER" = debian ] || TROVE_GUEST_IMAGE="$TROVE_GUEST_IMAGE-$SERVER"
# Scenarios a server cannot run, and why (the PyPI Valkey builds are built without TLS).
NO_TLS=""
case "$SERVER" in valkey-*) NO_TLS="tls_promote_and_eject" ;; esac
SCENARIO_TIMEOUT=${TROVE_FAULTS_SCENARIO_TIMEOUT:-180}
BUILD=${TROVE_FAULTS_BUILD:-1}
# shellcheck source=scripts/infra.sh
. scripts/infra.sh
KEEP=${TROVE_FAULTS_KEEP:-0}
PY_REDIS=${TROVE_FAULTS_PYTHON:-$ROOT/.venv/bin/python}
CAMPAIGN_ARGS=()
NEMESIS_ARGS=()

SCENARIOS=()
if [ "${1:-}" = campaign ]; then
    shift
    CAMPAIGN_ARGS=("$@")
    SCENARIOS=(campaign)
elif [ "${1:-}" = nemesis ]; then
    shift
    NEMESIS_ARGS=("$@")
    SCENARIOS=(nemesis)
else
    for a in "$@"; do
        case "$a" in
            -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *)
                ok=0
                for s in "${ALL_SCENARIOS[@]}"; do [ "$s" = "$a" ] && ok=1; done
                [ $ok = 1 ] || { echo "unknown scenario: $a (one of: ${ALL_SCENARIOS[*]}, or: campaign [--seed S] [--steps N], or: nemesis [--seed S] [--rounds N])" >&2; exit 2; }
                SCENARIOS+=("$a")
                ;;
        esac
    done
    for a in "${SCENARIOS[@]}"; do
        [ "$a" != "$NO_TLS" ] || { echo "$a needs TLS, which the $SERVER binary is built without" >&2; exit 2; }
    done
    if [ ${#SCENARIOS[@]} -eq 0 ]; then
        for a in "${ALL_SCENARIOS[@]}"; do
            if [ "$a" = "$NO_TLS" ]; then
                echo "docker-tests: not run on $SERVER: $a (the binary is built without TLS)" >&2
            else
                SCENARIOS+=("$a")
            fi
        done
        SCENARIOS+=(campaign nemesis)
        CAMPAIGN_ARGS=(--seed "${TROVE_FAULTS_CAMPAIGN_SEED:-2255}" --steps "${TROVE_FAULTS_CAMPAIGN_STEPS:-4}")
        NEMESIS_ARGS=(--seed "${TROVE_FAULTS_NEMESIS_SEED:-7}" --rounds "${TROVE_FAULTS_NEMESIS_ROUNDS:-4}")
    fi
fi
# count_of FLAG DEFAULT ARGS...: the number after FLAG in ARGS (DEFAULT without it); not a number: exit 2.
count_of() {
    local flag=$1 v=$2; shift 2
    while [ $# -gt 0 ]; do
        [ "$1" = "$flag" ] && v=${2:-}
        shift
    done
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "$flag needs a number" >&2; return 2; }
    echo "$v"
}
# The campaign's time limit grows with its steps, the nemesis suite's with its rounds (8 by
# default: every fault kind once).
campaign_steps=$(count_of --steps 4 "${CAMPAIGN_ARGS[@]}") || exit 2
CAMPAIGN_TIMEOUT=$((120 + 60 * campaign_steps))
nemesis_rounds=$(count_of --rounds 8 "${NEMESIS_ARGS[@]}") || exit 2
NEMESIS_TIMEOUT=$((120 + 150 * nemesis_rounds))

log() { echo "docker-tests: $*" >&2; }
START=$SECONDS

# Not run at all: say so loudly, fail every scenario, exit non-zero.
abort_all() {
    not_run_banner docker-tests "the fault-injection tests" "$*"
    for s in "${SCENARIOS[@]}"; do
        echo "scenario=$s result=fail acked=0 lost=0 longest_pause_ms=0"
    done
    echo "0 passed, ${#SCENARIOS[@]} failed"
    exit 1
}

# --- prerequisites -------------------------------------------------------------------------
problem=$(docker_problem)
[ -z "$problem" ] || abort_all "$problem"
if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_BIN="docker-compose"
elif docker compose version >/dev/null 2>&1; then
    COMPOSE_BIN="docker compose"
else
    abort_all "neither docker-compose nor the docker compose plugin is installed."
fi
command -v python3 >/dev/null 2>&1 && python3 -c 'import tomllib' 2>/dev/null ||
    abort_all "python3 (3.11 or later) is required for tests/docker/run_scenario.py."

# --- build ---------------------------------------------------------------------------------
if [ "$BUILD" != 0 ]; then
    log "building the release binaries and the images (scripts/docker-images.sh)"
    TROVE_GUEST_SERVER=$SERVER TROVE_CARGO_BUILD=always scripts/docker-images.sh >&2 ||
        abort_all "building the binaries or the images failed (see above)."
fi
export TROVE_GUEST_IMAGE=${TROVE_GUEST_IMAGE:-trove-redis-guest/guest:latest}
export TROVE_RABBITMQ_IMAGE=${TROVE_RABBITMQ_IMAGE:-trove-redis-guest/rabbitmq:latest}
for img in "$TROVE_GUEST_IMAGE" "$TROVE_RABBITMQ_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || abort_all "image $img is missing (run scripts/docker-images.sh)."
done
[ -x "$BIN_DIR/trove-guestctl" ] || abort_all "$BIN_DIR/trove-guestctl is missing (scripts/docker-images.sh builds it)."

log "server in the guest image: $SERVER ($(docker run --rm --entrypoint redis-server "$TROVE_GUEST_IMAGE" --version 2>&1 | head -1))"

# --- our own compose project ---------------------------------------------------------------
PROJECT="trovefaults$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
WORK="$ROOT/target/docker-tests/$PROJECT"
mkdir -p "$WORK"
ln -sfn "$PROJECT" "$ROOT/target/docker-tests/last"
# Keep the logs of the last few runs only.
ls -1dt "$ROOT"/target/docker-tests/trovefaults* 2>/dev/null | tail -n +6 | xargs -r rm -rf

export TROVE_RABBITMQ_PORT=""   # a random port on 127.0.0.1 (the tests use the broker's private address)
export TROVE_FAULTS_PROJECT="$PROJECT"
export TROVE_FAULTS_GUESTCTL="$ROOT/$BIN_DIR/trove-guestctl"
export TROVE_FAULTS_COMPOSE="$COMPOSE_BIN -p $PROJECT -f $ROOT/docker-compose.yml -f $ROOT/tests/docker/compose.faults.yml"
export TROVE_FAULTS_WORKDIR="$WORK"
# shellcheck disable=SC2206
COMPOSE=($TROVE_FAULTS_COMPOSE)

RUN_PID=""
TAIL_PID=""
CLEANED=0
cleanup() {
    [ "$CLEANED" = 1 ] && return 0
    CLEANED=1
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        kill -TERM "$RUN_PID" 2>/dev/null # timeout(1) passes it on to the scenario
        sleep 1
    fi
    [ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null
    local filter="label=com.docker.compose.project=$PROJECT" left
    if [ "$KEEP" = 1 ]; then
        log "TROVE_FAULTS_KEEP=1: containers of $PROJECT left running; remove them with:"
        log "  docker rm -f \$(docker ps -aq --filter $filter) && docker network rm \$(docker network ls -q --filter $filter)"
        return 0
    fi
    if left=$(remove_project "$PROJECT"); then
        log "removed the containers and the network of $PROJECT"
    else
        log "WARNING: could not remove everything of $PROJECT: $left"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# A /24 in 172.28.0.0/16 that no Docker network, host address or route overlaps.
free_prefixes() {
    {
        docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $(docker network ls -q) 2>/dev/null
        ip -4 -o addr show 2>/dev/null | awk '{print $4}'
        ip -4 route show 2>/dev/null | awk '{print $1}'
    } | python3 -c '
import ipaddress, random, sys
used = []
for word in sys.stdin.read().split():
    try:
        used.append(ipaddress.ip_network(word if word != "default" else "0.0.0.0/32", strict=False))
    except ValueError:
        pass
cands = [f"172.28.{i}" for i in range(100, 255)]
random.shuffle(cands)
free = [c for c in cands
        if not any(u.prefixlen > 0 and ipaddress.ip_network(c + ".0/24").overlaps(u) for u in used if u.version == 4)]
print("\n".join(free[:5]))
'
}

started=0
for prefix in $(free_prefixes); do
    export TROVE_SUBNET_PREFIX="$prefix"
    log "starting project $PROJECT on $prefix.0/24 (broker first)"
    if "${COMPOSE[@]}" up -d --no-build rabbitmq >"$WORK/compose-up.log" 2>&1; then
        started=1
        break
    fi
    log "could not start on $prefix.0/24: $(tail -n 2 "$WORK/compose-up.log" | tr '\n' ' ')"
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    nets=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$nets" ] && docker network rm $nets >/dev/null 2>&1
done
[ "$started" = 1 ] || abort_all "could not start the compose project (see $WORK/compose-up.log)."

# --- scenarios -----------------------------------------------------------------------------
SUMMARY=()
PASSED=0
FAILED=0
for s in "${SCENARIOS[@]}"; do
    out="$WORK/$s.out"
    : >"$out"
    t0=$SECONDS
    if [ "$s" = campaign ]; then
        timeout -k 10 "$CAMPAIGN_TIMEOUT" python3 -u tests/docker/campaign.py "${CAMPAIGN_ARGS[@]}" >"$out" 2>&1 &
    elif [ "$s" = nemesis ] || grep -q '^REQUIRES_REDIS_PY = True' "tests/docker/scenarios/$s.py"; then
        if ! "$PY_REDIS" -c 'import redis, tomllib' >/dev/null 2>&1; then
            {
                echo "  ERROR: scenario $s needs redis-py, and $PY_REDIS cannot import it (or is missing):"
                echo "         run scripts/pyenv.sh (it makes .venv with redis-py), or set TROVE_FAULTS_PYTHON"
                echo "scenario=$s result=fail acked=0 lost=0 longest_pause_ms=0 bound=0"
            } >"$out"
            (exit 1) &
        elif [ "$s" = nemesis ]; then
            timeout -k 10 "$NEMESIS_TIMEOUT" "$PY_REDIS" -u tests/docker/nemesis.py "${NEMESIS_ARGS[@]}" >"$out" 2>&1 &
        else
            timeout -k 10 "$SCENARIO_TIMEOUT" "$PY_REDIS" -u tests/docker/run_scenario.py "$s" >"$out" 2>&1 &
        fi
    else
        timeout -k 10 "$SCENARIO_TIMEOUT" python3 -u tests/docker/run_scenario.py "$s" >"$out" 2>&1 &
    fi
    RUN_PID=$!
    tail -n +1 -f --pid="$RUN_PID" "$out" &
    TAIL_PID=$!
    rc=0
    wait "$RUN_PID" || rc=$?
    RUN_PID=""
    wait "$TAIL_PID" 2>/dev/null
    TAIL_PID=""
    line=$(grep -E "^scenario=$s result=(pass|fail) " "$out" | tail -n 1)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "  TIMEOUT: the scenario did not finish within its time limit and was killed" | tee -a "$out"
        line="scenario=$s result=fail acked=0 lost=0 longest_pause_ms=0"
        echo "$line" | tee -a "$out"
    elif [ -z "$line" ]; then
        echo "  ERROR: the scenario ended (exit $rc) without a summary line" | tee -a "$out"
        line="scenario=$s result=fail acked=0 lost=0 longest_pause_ms=0"
        echo "$line" | tee -a "$out"
    fi
    if [ "$rc" = 0 ] && [[ "$line" == *" result=pass "* ]]; then
        PASSED=$((PASSED + 1))
    else
        FAILED=$((FAILED + 1))
        [[ "$line" == *" result=pass "* ]] && line="${line/ result=pass / result=fail }"
    fi
    result=fail
    [[ "$line" == *" result=pass "* ]] && result=pass
    SUMMARY+=("$(printf '  %-32s %s  %4d s  %s' "$s" "$result" $((SECONDS - t0)) "${line#* result=* }")")
done

cleanup
echo
echo "== fault-injection summary (project $PROJECT, logs in target/docker-tests/$PROJECT, $((SECONDS - START)) s in all)"
for l in "${SUMMARY[@]}"; do echo "$l"; done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
