#!/usr/bin/env bash
# Installs and starts what the test suites need. Idempotent; a second run takes well under a second.
#
#   * Debian packages rabbitmq-server, redis-server, openssl, Swift with memcached for the backup tests
#     (scripts/swift.sh runs them), and prometheus (its prometheus and promtool, for the metrics
#     tests: tests/it/metrics.rs) (installed if missing, without letting the packages' own
#     services start);
#   * Debian's redis-server service is stopped if it runs (tests start their own redis-server
#     processes on free ports), and so is Debian's rabbitmq-server service if it holds our port;
#   * the default RabbitMQ node for the tests, via scripts/rabbitmq.sh, on 127.0.0.1:5672
#     (node trove@localhost, state in /tmp/trove-rabbit/trove).
#
# Prints the AMQP URL of the default node on stdout (the only line on stdout).
#
# Usage: scripts/services.sh
# Environment:
#   TROVE_RABBIT_NAME  node name of the default node (default trove)
#   TROVE_RABBIT_PORT  its AMQP port (default 5672)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NAME=${TROVE_RABBIT_NAME:-trove}
PORT=${TROVE_RABBIT_PORT:-5672}

log() { echo "services.sh: $*" >&2; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Runs a Debian service action through whatever init the machine has.
svc() {
    local name=$1 action=$2
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl "$action" "$name" >/dev/null 2>&1
    elif [ -x "/etc/init.d/$name" ]; then
        $SUDO "/etc/init.d/$name" "$action" >/dev/null 2>&1
    else
        return 1
    fi
}

svc_disable() {
    local name=$1
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable "$name" >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
        $SUDO update-rc.d "$name" disable >/dev/null 2>&1 || true
    fi
}

missing=()
for p in rabbitmq-server redis-server openssl swift swift-proxy swift-account swift-container swift-object memcached curl xfsprogs prometheus iptables; do
    # openssl: the TLS tests make their certificates; swift and memcached: the backup tests (scripts/swift.sh);
    # xfsprogs: the xfs volume test; prometheus: the metrics tests (Prometheus and promtool); iptables: the link-cut metrics test
    have_pkg "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting their services (a Debian
    # rabbitmq-server on 5672 would collide with our node; tests bring their own redis).
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap '[ "$added_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ "$added_policy" = 1 ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
        added_policy=0
    fi
    for p in "${missing[@]}"; do svc_disable "$p"; done
fi
command -v redis-server >/dev/null || { log "ERROR: redis-server not on PATH after install"; exit 1; }
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null \
    || { log "ERROR: rabbitmq-server not found after install"; exit 1; }

# Debian's redis-server service: stop it if it runs (pid file of the package's config).
if [ -s /run/redis/redis-server.pid ] && kill -0 "$(cat /run/redis/redis-server.pid)" 2>/dev/null; then
    log "stopping Debian's redis-server service (pid $(cat /run/redis/redis-server.pid))"
    svc redis-server stop || $SUDO kill -TERM "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
    svc_disable redis-server
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet redis-server 2>/dev/null; then
    log "stopping Debian's redis-server systemd service"
    $SUDO systemctl stop redis-server || true
    svc_disable redis-server
fi

# Debian's rabbitmq-server service would hold 5672 with another node; stop it if it runs.
deb_rabbit_pid=""
[ -s /var/run/rabbitmq/pid ] && deb_rabbit_pid=$(tr -dc '0-9' </var/run/rabbitmq/pid)
if { [ -n "$deb_rabbit_pid" ] && kill -0 "$deb_rabbit_pid" 2>/dev/null; } \
    || { [ -d /run/systemd/system ] && systemctl is-active --quiet rabbitmq-server 2>/dev/null; }; then
    log "stopping Debian's rabbitmq-server service"
    svc rabbitmq-server stop || true
    svc_disable rabbitmq-server
fi

exec bash "$HERE/rabbitmq.sh" start "$NAME" "$PORT"
