#!/usr/bin/env bash
# Builds the images that docker-compose.yml runs, and prints how long each step took.
#
#   base      debian:bookworm-slim, pulled or made by scripts/docker-base.sh
#   rabbitmq  trove-redis-guest/rabbitmq:latest from docker/rabbitmq/Dockerfile
#   guest     trove-redis-guest/guest:latest from Dockerfile, with the host-built
#             trove-guestagent and trove-guestctl (target/release; see scripts/bins.sh for
#             TROVE_CARGO_PROFILE=debug)
#
# Usage: scripts/docker-images.sh [base|rabbitmq|guest]...   (default: all three, in that order)
#
# Docker's layer cache makes a repeat run take seconds: apt layers are reused, and only the
# COPY of the binaries is redone when they changed. The binaries are built with
# `cargo build --release` only when target/release/trove-guestagent is missing; set
# TROVE_CARGO_BUILD=always to run cargo every time (it is quick when nothing changed).
# Environment: TROVE_GUEST_IMAGE, TROVE_RABBITMQ_IMAGE override the image names (docker-compose.yml
# uses the defaults); docker-base.sh's variables pass through.
#   TROVE_GUEST_SERVER   the server in the guest image: debian (default, Debian's Redis 7.0) or
#                        <name>-<version> of scripts/redis-servers.sh (redis-6.0.9 ... valkey-9.1.2),
#                        fetched by that script and staged into target/guest-server with OpenSSL 1.1
#                        for the redis-stack builds (build argument GUEST_SERVER of the Dockerfile).
set -euo pipefail

cd "$(dirname "$0")/.."
GUEST_IMAGE=${TROVE_GUEST_IMAGE:-trove-redis-guest/guest:latest}
RABBITMQ_IMAGE=${TROVE_RABBITMQ_IMAGE:-trove-redis-guest/rabbitmq:latest}
CARGO_BUILD=${TROVE_CARGO_BUILD:-missing}
GUEST_SERVER=${TROVE_GUEST_SERVER:-debian}
# shellcheck source=scripts/bins.sh
. scripts/bins.sh

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(base rabbitmq guest)
fi
for t in "${targets[@]}"; do
    case "$t" in
        base|rabbitmq|guest) ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown target: $t (base, rabbitmq or guest)" >&2; exit 2 ;;
    esac
done

now() { date +%s.%N; }
# elapsed START: seconds since START, one decimal.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timings=()
total_start=$(now)

# run_step NAME COMMAND...: runs the command with its output in a log, shown only on failure.
run_step() {
    local name=$1; shift
    local start log
    start=$(now)
    log=$(mktemp "${TMPDIR:-/tmp}/trove-images-$name.XXXXXX")
    echo "== $name: $*" >&2
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "== $name failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
    timings+=("$(printf '%-10s %7s s' "$name" "$(elapsed "$start")")")
}

# Stages the chosen server for the guest image in target/guest-server (emptied for Debian's).
stage_server() {
    rm -rf target/guest-server
    [ "$GUEST_SERVER" = debian ] && return 0
    local manifest path dir
    manifest=$(bash scripts/redis-servers.sh --quiet) || return 1
    path=$(awk -v s="$GUEST_SERVER" '$1 "-" $2 == s { print $3 }' <<<"$manifest")
    [ -n "$path" ] || { echo "TROVE_GUEST_SERVER=$GUEST_SERVER is none of: debian $(awk '{ printf "%s-%s ", $1, $2 }' <<<"$manifest")" >&2; return 1; }
    dir=$(dirname "$path")
    [ "$(basename "$path")" = server ] || dir=$(dirname "$dir")  # a wrapper sits beside bin/
    mkdir -p target/guest-server/bin
    cp -L "$dir"/bin/*-server target/guest-server/bin/
    if [ "$(basename "$path")" = server ]; then
        mkdir -p target/guest-server/lib
        local ssl
        ssl=$(sed -n 's/^LD_LIBRARY_PATH=\([^$]*\)\${.*/\1/p' "$path")
        cp -L "$ssl/libssl.so.1.1" "$ssl/libcrypto.so.1.1" target/guest-server/lib/
    fi
}

# build_image NAME TAG CONTEXT [docker build args...]: docker build, then drop the image TAG used to name if nothing
# else uses it, so repeated rebuilds do not pile up dangling images.
build_image() {
    local name=$1 tag=$2 context=$3 old
    shift 3
    old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    run_step "$name" docker build -t "$tag" "$@" "$context"
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
}

for t in "${targets[@]}"; do
    case "$t" in
        base)
            # Its own progress messages are short; let them through.
            start=$(now)
            echo "== base: scripts/docker-base.sh" >&2
            scripts/docker-base.sh
            timings+=("$(printf '%-10s %7s s' base "$(elapsed "$start")")")
            ;;
        rabbitmq)
            build_image rabbitmq "$RABBITMQ_IMAGE" docker/rabbitmq
            ;;
        guest)
            if [ "$CARGO_BUILD" = always ] || [ ! -x "$BIN_DIR/trove-guestagent" ]; then
                run_step cargo build_bins
            fi
            run_step server stage_server
            build_image guest "$GUEST_IMAGE" . --build-arg GUEST_SERVER="$GUEST_SERVER" --build-arg BIN_DIR="$BIN_DIR"
            ;;
    esac
done

timings+=("$(printf '%-10s %7s s' total "$(elapsed "$total_start")")")
printf '%s\n' "${timings[@]}"
