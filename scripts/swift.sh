#!/usr/bin/env bash
# Runs a real OpenStack Swift (proxy, account, container and object servers, one replica) on
# loopback for the backup tests, with tempauth and one test user.
#
# Usage: scripts/swift.sh start|stop|status|install
#
#   install  apt-get install Debian's swift packages and memcached (tempauth keeps its tokens in
#            memcache), unless swift-proxy-server is already there
#   start    install if needed, build one-replica rings on a plain directory (its file system must
#            support user xattrs; mount_check is off), start memcached and the four servers on free
#            loopback ports, wait until a tempauth login works, and print the auth URL;
#            idempotent: a running Swift from this state directory is reused
#   stop     stop what start started (by the pids it recorded); the data is kept
#   status   exit 0 and print the auth URL if the proxy answers, else exit 1
#
# The auth URL is v1 tempauth: GET <url> with X-Storage-User: test:tester and
# X-Storage-Pass: testing answers X-Storage-Url and X-Auth-Token.
#
# Environment:
#   TROVE_SWIFT_STATE   state directory: configs, rings, devices, logs, pids (default /tmp/trove-swift)
#   TROVE_SWIFT_BIND    the proxy's listen address (default 127.0.0.1; the trove stage gives its
#                       Docker network's gateway so that guest containers reach it); the account,
#                       container and object servers and memcached stay on 127.0.0.1
#   TROVE_SWIFT_USER    an extra tempauth user account:user (.admin of AUTH_<account>) with the
#   TROVE_SWIFT_KEY     key TROVE_SWIFT_KEY, besides test:tester and test:other
#
# Swift reads /etc/swift/swift.conf (its path is built in): it is written once if absent.
set -euo pipefail

CMD=${1:-}
STATE=${TROVE_SWIFT_STATE:-/tmp/trove-swift}
BIND=${TROVE_SWIFT_BIND:-127.0.0.1}
EXTRA_USER=${TROVE_SWIFT_USER:-}
EXTRA_KEY=${TROVE_SWIFT_KEY:-}
USER_NAME=test:tester
USER_KEY=testing

log() { echo "swift.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

auth_url() { echo "http://$BIND:$(cat "$STATE/proxy.port")/auth/v1.0"; }

# A tempauth login: the proxy, memcached and the account server all answer.
login_ok() {
    [ -f "$STATE/proxy.port" ] || return 1
    local url
    url=$(curl -fsS -o /dev/null -D - -H "X-Storage-User: $USER_NAME" -H "X-Storage-Pass: $USER_KEY" "$(auth_url)" 2>/dev/null \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}') || return 1
    [ -n "$url" ] || return 1
    local token
    token=$(curl -fsS -o /dev/null -D - -H "X-Storage-User: $USER_NAME" -H "X-Storage-Pass: $USER_KEY" "$(auth_url)" \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')
    # The account exists (or is auto-created) and answers.
    curl -fsS -o /dev/null -H "X-Auth-Token: $token" "$url" 2>/dev/null
}

install() {
    if command -v swift-proxy-server >/dev/null && command -v memcached >/dev/null && command -v swift-ring-builder >/dev/null; then
        return 0
    fi
    log "installing swift and memcached (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends swift swift-proxy swift-account swift-container swift-object memcached curl >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends swift swift-proxy swift-account swift-container swift-object memcached curl >&2; }
}

free_port() {
    python3 -c 'import socket, sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1]); s.close()' "${1:-127.0.0.1}"
}

stop() {
    local f pid
    for f in "$STATE"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

write_configs() {
    local ports=("$@") # proxy account container object memcached
    mkdir -p "$STATE/devices/d1" "$STATE/run" "$STATE/log"
    python3 - "$STATE/devices/d1" <<'EOF' || die "$STATE/devices/d1: no user xattr support on this file system"
import os, sys
p = os.path.join(sys.argv[1], ".xattr-probe")
open(p, "w").close()
os.setxattr(p, "user.swift.probe", b"1")
os.remove(p)
EOF
    if [ ! -f /etc/swift/swift.conf ]; then
        mkdir -p /etc/swift
        printf '[swift-hash]\nswift_hash_path_suffix = trove-redis-guest-tests\nswift_hash_path_prefix = trove\n\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n' > /etc/swift/swift.conf
    fi
    local common="[DEFAULT]
bind_ip = 127.0.0.1
devices = $STATE/devices
mount_check = false
swift_dir = $STATE
user = $(id -un)
workers = 1
log_name = %s
log_facility = LOG_LOCAL0
log_level = INFO
"
    local kind port
    for kind in account container object; do
        case $kind in account) port=${ports[1]};; container) port=${ports[2]};; object) port=${ports[3]};; esac
        {
            printf "$common" "$kind-server"
            echo "bind_port = $port"
            echo
            echo "[pipeline:main]"
            echo "pipeline = $kind-server"
            echo
            echo "[app:$kind-server]"
            echo "use = egg:swift#$kind"
            [ "$kind" = container ] && echo "allow_versions = true"
            echo
            echo "[$kind-replicator]"
            echo "[$kind-auditor]"
            [ "$kind" = account ] && echo "[account-reaper]"
            [ "$kind" = container ] && { echo "[container-updater]"; echo "[container-sync]"; }
            [ "$kind" = object ] && echo "[object-updater]"
            true
        } > "$STATE/$kind-server.conf"
    done
    {
        printf "$common" "proxy-server" | sed "s/^bind_ip = .*/bind_ip = $BIND/"
        echo "bind_port = ${ports[0]}"
        cat <<EOF

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = $USER_KEY .admin
user_test_other = other .admin
${EXTRA_USER:+user_${EXTRA_USER/:/_} = $EXTRA_KEY .admin}

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${ports[4]}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
min_segment_size = 1
[filter:dlo]
use = egg:swift#dlo
EOF
    } > "$STATE/proxy-server.conf"
    local ring
    for ring in account container object; do
        case $ring in account) port=${ports[1]};; container) port=${ports[2]};; object) port=${ports[3]};; esac
        rm -f "$STATE/$ring.builder" "$STATE/$ring.ring.gz"
        (cd "$STATE" && swift-ring-builder "$ring.builder" create 6 1 1 >/dev/null \
            && swift-ring-builder "$ring.builder" add "r1z1-127.0.0.1:$port/d1" 1 >/dev/null \
            && swift-ring-builder "$ring.builder" rebalance >/dev/null) || die "building the $ring ring failed"
    done
}

start() {
    if login_ok; then
        auth_url
        return 0
    fi
    stop
    install
    mkdir -p "$STATE"
    local ports=("$(free_port "$BIND")") i
    for i in 1 2 3 4; do ports+=("$(free_port)"); done
    # the proxy's configuration may hold a tempauth key
    (umask 077; write_configs "${ports[@]}")
    echo "${ports[0]}" > "$STATE/proxy.port"
    # 9>&-: the servers must not inherit the lock's descriptor (they would hold the lock for good)
    memcached -l 127.0.0.1 -p "${ports[4]}" -U 0 -u "$(id -un)" -m 16 > "$STATE/log/memcached.log" 2>&1 9>&- &
    echo $! > "$STATE/memcached.pid"
    local kind
    for kind in account container object proxy; do
        "swift-$kind-server" "$STATE/$kind-server.conf" > "$STATE/log/$kind.log" 2>&1 9>&- &
        echo $! > "$STATE/$kind.pid"
    done
    for _ in $(seq 150); do
        if login_ok; then
            log "swift is up: $(auth_url) (user $USER_NAME, key $USER_KEY)"
            auth_url
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$STATE"/log/*.log >&2 || true
    stop
    die "swift did not answer a tempauth login within 30 s"
}

# One caller at a time (tests start it concurrently; the first may be installing packages).
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock 9

case "$CMD" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) login_ok && auth_url ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac
