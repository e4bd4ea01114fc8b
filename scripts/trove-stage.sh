#!/usr/bin/env bash
# The `trove` test stage: Trove's own services (trove-api, trove-taskmanager, trove-conductor from
# trove 26.0.0) drive guest containers through the Redis replication flows, via python-troveclient.
#
# What it starts, all on loopback or on its own Docker network, and always stops (trap):
#   * MariaDB from Debian (installed with apt if missing; Debian's service is not used): its own
#     mariadbd with a fresh datadir on a free 127.0.0.1 port, database `trove`;
#   * the Docker network trovestage-<run> (subnet $TROVE_STAGE_SUBNET, default 172.28.90.0/24) and a
#     RabbitMQ container on it (image trove-redis-guest/rabbitmq:latest), published on a free
#     127.0.0.1 port for Trove; the guests reach it at its network address;
#   * a real OpenStack Swift (scripts/swift.sh, state in the run's directory) with tempauth: its proxy
#     on the network's gateway address only (Trove and the guests reach it there), its storage
#     servers and memcached on loopback; the tests log in as trovestage:trovestage and give Trove
#     that tempauth token, which Trove passes to the guests for their backups;
#   * Trove's services, started by tests/trove/conftest.py once per pass (plain RPC, then secure RPC),
#     with the stand-ins of tests/trove/trove_standins.py as Nova, Neutron, Glance and Cinder, and
#     its identity filter (tokens checked against Swift) in place of keystonemiddleware: Nova's
#     servers are containers of the guest image, configured only by the files Trove injects; each
#     instance's Cinder volume is a loop device over a sparse file in the run's directory, passed
#     into its container as /dev/vdb, where the agent formats and mounts it at /var/lib/redis (the
#     container then runs as root with CAP_SYS_ADMIN for mount; see trove_standins.py);
#     a deleted server's volume is detached (losetup -d), and the cleanup detaches any left.
# Then: trove-manage db_sync, the redis datastore and version registered, and pytest tests/trove:
# per pass the replication flows; in the plain pass also backups of a master and a replica to Swift,
# a restore and a replica of it, root (Trove's 422, then trove-guestctl) and a volume resize, then
# guest logs published to Swift, diagnostics and hwinfo as the cloud admin (tempauth's test:tester,
# role admin via the identity filter), client TLS (ssl enable/show/disable, a Barbican stand-in in
# the tests), a snapshot backup (storage_driver cinder), an upgrade of a master and its replica to Valkey 9.1 and a rebuild of the master on a
# second Glance image
# (the booted image is <guest image>-trovestage: the guest image plus Valkey 9.1.2 from
# scripts/redis-servers.sh and its [redis.servers]);
# with TROVE_STAGE_BENCH_SMOKE=1, then the trove benchmark's smoke in the same set-up.
# Needs root (losetup, loop devices), Docker, and Debian's swift and memcached (swift.sh installs them).
#
# Usage: scripts/trove-stage.sh [pytest args...]
#        scripts/trove-stage.sh --exec CMD [ARGS...]   the same set-up, then CMD instead of pytest (the
#                                                      trove benchmark, bench/trovebench/trovecp.py)
# Environment:
#   TROVE_GUEST_IMAGE        guest image (default trove-redis-guest/guest:latest)
#   TROVE_RABBITMQ_IMAGE     broker image (default trove-redis-guest/rabbitmq:latest)
#   TROVE_STAGE_BUILD=0      do not (re)build the images with scripts/docker-images.sh
#   TROVE_CARGO_PROFILE      release (default) or debug: the binaries' build (scripts/bins.sh)
#   TROVE_STAGE_SUBNET       the Docker network's subnet (default 172.28.90.0/24)
#   TROVE_STAGE_KEEP=1       leave everything running at the end (prints how to remove it)
#   TROVE_STAGE_BENCH_SMOKE=1  after the tests (pass or fail), `scripts/bench.sh --smoke --only trove` in
#                            this set-up (CI: the trove benchmark kept alive without setting Trove up
#                            twice); its report in <logs>/bench-smoke/; the stage fails if it fails
# Logs: target/trove-stage/<run>/ (trove-*.log, mariadb.log, swift/log/, guest-logs/, report.txt);
# target/trove-stage/last points to the newest run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/infra.sh
. scripts/infra.sh
EXEC=0
if [ "${1:-}" = "--exec" ]; then EXEC=1; shift; fi
GUEST_IMAGE=${TROVE_GUEST_IMAGE:-trove-redis-guest/guest:latest}
RABBIT_IMAGE=${TROVE_RABBITMQ_IMAGE:-trove-redis-guest/rabbitmq:latest}
SUBNET=${TROVE_STAGE_SUBNET:-172.28.90.0/24}
KEEP=${TROVE_STAGE_KEEP:-0}
VENV=${TROVE_VENV:-$ROOT/.venv}
PY="$VENV/bin/python"

log() { echo "trove-stage: $*" >&2; }
die() {
    {
        echo
        echo "##########################################################################"
        echo "##  trove-stage: FAILED: $*"
        echo "##########################################################################"
    } >&2
    exit 1
}

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

RUN="trovestage-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
WORK="$ROOT/target/trove-stage/$RUN"
mkdir -p "$WORK/etc" "$WORK/pids" "$WORK/servers"
chmod 0700 "$WORK"
ln -sfn "$RUN" "$ROOT/target/trove-stage/last"
ls -1dt "$ROOT"/target/trove-stage/trovestage-* 2>/dev/null | tail -n +4 | xargs -r rm -rf

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- cleanup: everything this run started --------------------------------------------------------
MARIADB_PID=""
PYTEST_PID=""
SWIFT_STARTED=0
CLEANED=0
cleanup() {
    [ "$CLEANED" = 1 ] && return 0
    CLEANED=1
    set +e   # clean up as much as possible; no step may end the cleanup early
    trap '' INT TERM   # nor a second signal (a Ctrl-C reaches the whole process group, then its parent's TERM)
    if [ "$KEEP" = 1 ]; then
        log "TROVE_STAGE_KEEP=1: left running: containers and network $RUN, mariadbd pid ${MARIADB_PID:-none}," \
            "Trove services (pids in $WORK/pids); remove with: kill \$(cat $WORK/pids/*.pid) ${MARIADB_PID};" \
            "docker rm -f \$(docker ps -aq --filter label=trovestage.run=$RUN); docker network rm $RUN"
        return 0
    fi
    local f p ids
    if [ -n "$PYTEST_PID" ] && kill -0 "$PYTEST_PID" 2>/dev/null; then
        # the benchmark leads its own process group (setsid): its Python driver must stop too
        kill -TERM -- "-$PYTEST_PID" 2>/dev/null || kill -TERM "$PYTEST_PID" 2>/dev/null
        wait "$PYTEST_PID" 2>/dev/null
    fi
    for f in "$WORK"/pids/*.pid; do
        [ -e "$f" ] || continue
        p=$(tr -dc '0-9' <"$f")
        # each service leads its own process group (its workers included)
        [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null && log "stopped $(basename "$f" .pid) (pid $p)"
        rm -f "$f"
    done
    ids=$(docker ps -aq --filter "label=trovestage.run=$RUN" 2>/dev/null || true)
    if [ -n "$ids" ]; then
        mkdir -p "$WORK/guest-logs"
        for id in $ids; do
            name=$(docker inspect -f '{{.Name}}' "$id" 2>/dev/null | tr -d /)
            [ -n "$name" ] && docker logs -t "$id" >"$WORK/guest-logs/$name.log" 2>&1
        done
        docker rm -f -v $ids >/dev/null 2>&1 || true
    fi
    docker network rm "$RUN" >/dev/null 2>&1 || true
    if [ -n "$MARIADB_PID" ] && kill -0 "$MARIADB_PID" 2>/dev/null; then
        kill -TERM "$MARIADB_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$MARIADB_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$MARIADB_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK/mariadb/data" "$WORK/servers"
    # the volumes the Cinder stand-in left (a failed run): detach every loop device over their files
    for f in "$WORK"/volumes/*.img; do
        [ -e "$f" ] || continue
        for dev in $(losetup -j "$f" 2>/dev/null | cut -d: -f1); do
            losetup -d "$dev" 2>/dev/null && log "detached $dev ($(basename "$f"))"
        done
        rm -f "$f"
    done
    rm -f "$WORK"/volumes/*.snap "$WORK"/volumes/*.snap.json   # the Cinder stand-in's snapshots
    [ "$SWIFT_STARTED" = 1 ] && swift_sh stop 2>/dev/null && rm -rf "$SWIFT_STATE/devices"
    ids=$(docker ps -aq --filter "label=trovestage.run=$RUN" 2>/dev/null || true)
    left=$(for f in "$WORK"/volumes/*.img; do [ -e "$f" ] && losetup -j "$f"; done 2>/dev/null)
    if [ -n "$ids" ] || [ -n "$left" ] || docker network inspect "$RUN" >/dev/null 2>&1; then
        log "WARNING: could not remove everything of $RUN: containers [$ids], loop devices [$left]"
    else
        log "removed the containers, the volumes, Swift, the network and the database of $RUN"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# --- prerequisites -------------------------------------------------------------------------------
problem=$(docker_problem)
[ -z "$problem" ] || die "$problem"
[ -x "$PY" ] || die "no Python venv at $VENV (scripts/pyenv.sh makes it)"
"$PY" -c 'import trove, troveclient' 2>/dev/null ||
    die "trove or python-troveclient is not importable from $VENV (scripts/pyenv.sh installs them)"

if [ "${TROVE_STAGE_BUILD:-1}" != 0 ]; then
    log "building the images (scripts/docker-images.sh rabbitmq guest)"
    TROVE_GUEST_IMAGE="$GUEST_IMAGE" TROVE_RABBITMQ_IMAGE="$RABBIT_IMAGE" TROVE_CARGO_BUILD=always \
        scripts/docker-images.sh rabbitmq guest >&2 || die "building the images failed (see above)"
fi
for img in "$GUEST_IMAGE" "$RABBIT_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "image $img is missing (scripts/docker-images.sh builds it)"
done
# The image Nova's stand-in boots: the guest image plus a second server for the upgrade step,
# Valkey 9.1.2 (scripts/redis-servers.sh fetches it into .servers/) at /opt/valkey-9.1, and the
# agent's [redis.servers] naming both by Trove datastore version (a TOML file given with --config,
# under Trove's injected files, which do not set it). No boot step mounts the volume: the agent
# does it at start-up (Trove's default [redis] device_path /dev/vdb at /var/lib/redis), which the
# rebuild step proves.
UPGRADE_SERVER=valkey-9.1.2
upgrade_bin=$(bash scripts/redis-servers.sh --quiet "$UPGRADE_SERVER" | awk '{print $3}') && [ -x "$upgrade_bin" ] ||
    die "scripts/redis-servers.sh $UPGRADE_SERVER gave no server binary"
STAGE_IMAGE="${GUEST_IMAGE%:*}-trovestage:${GUEST_IMAGE##*:}"
mkdir -p "$WORK/image"
install -m 0755 "$upgrade_bin" "$WORK/image/valkey-server"
cat >"$WORK/image/servers.toml" <<'EOF'
# the stage image's agent settings (scripts/trove-stage.sh): a port for TLS clients (ssl_action),
# and the servers of this image, by Trove datastore version
[redis]
tls_port = 6380
[redis.servers]
"7.0" = "/usr/bin/redis-server"
"valkey-9.1" = "/opt/valkey-9.1/bin/valkey-server"
EOF
cat >"$WORK/image/Dockerfile" <<EOF
FROM $GUEST_IMAGE
COPY valkey-server /opt/valkey-9.1/bin/valkey-server
COPY servers.toml /etc/trove-guest/servers.toml
RUN ["/opt/valkey-9.1/bin/valkey-server", "--version"]
CMD ["--config", "/etc/trove-guest/servers.toml"]
EOF
docker build -q -t "$STAGE_IMAGE" "$WORK/image" >"$WORK/image/build.log" 2>&1 ||
    { tail -n 20 "$WORK/image/build.log" >&2; die "building $STAGE_IMAGE failed"; }
rm -f "$WORK/image/valkey-server"
log "guest image $STAGE_IMAGE ($GUEST_IMAGE with $UPGRADE_SERVER for the upgrade)"

# --- MariaDB -------------------------------------------------------------------------------------
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if ! have_pkg mariadb-server; then
    log "installing mariadb-server from Debian"
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep the package from starting its own service
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null ||
        { [ "$added_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; die "apt-get install mariadb-server failed"; }
    [ "$added_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
    if [ -d /run/systemd/system ]; then $SUDO systemctl disable --now mariadb >/dev/null 2>&1 || true; fi
fi
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
[ -x "$MARIADBD" ] || die "mariadbd not found after installing mariadb-server"

DB_DIR="$WORK/mariadb"
mkdir -p "$DB_DIR/data"
# Runs as the calling user (root included: --user=root), in the run's private work directory.
DB_USER_ARGS=(--user="$(id -un)")
log "initialising a MariaDB datadir ($DB_DIR/data)"
mariadb-install-db --no-defaults --datadir="$DB_DIR/data" "${DB_USER_ARGS[@]}" --auth-root-authentication-method=socket \
    --skip-test-db >"$DB_DIR/install.log" 2>&1 || { tail -n 20 "$DB_DIR/install.log" >&2; die "mariadb-install-db failed"; }
DB_PORT=$(free_port)
DB_SOCK="$DB_DIR/mysqld.sock"
"$MARIADBD" --no-defaults --datadir="$DB_DIR/data" "${DB_USER_ARGS[@]}" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$DB_SOCK" --pid-file="$DB_DIR/mysqld.pid" --skip-name-resolve --log-error="$WORK/mariadb.log" \
    --innodb-buffer-pool-size=64M --max-connections=300 &
MARIADB_PID=$!
for _ in $(seq 1 150); do
    mariadb --no-defaults -S "$DB_SOCK" -u root -e 'select 1' >/dev/null 2>&1 && break
    kill -0 "$MARIADB_PID" 2>/dev/null || { tail -n 20 "$WORK/mariadb.log" >&2; die "mariadbd exited at start-up"; }
    sleep 0.2
done
mariadb --no-defaults -S "$DB_SOCK" -u root -e 'select 1' >/dev/null 2>&1 ||
    { tail -n 20 "$WORK/mariadb.log" >&2; die "mariadbd did not accept connections within 30 s"; }
DB_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
mariadb --no-defaults -S "$DB_SOCK" -u root <<EOF
CREATE DATABASE trove CHARACTER SET utf8mb4;
CREATE USER 'trove'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON trove.* TO 'trove'@'127.0.0.1';
EOF
log "MariaDB on 127.0.0.1:$DB_PORT (pid $MARIADB_PID)"

# --- Docker network and RabbitMQ -----------------------------------------------------------------
# A network left by a killed earlier run holds the subnet: remove it if it is ours (trovestage-*).
for net in $(docker network ls --format '{{.Name}}' | grep '^trovestage-' || true); do
    if [ "$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$net" 2>/dev/null)" = "$SUBNET" ]; then
        log "removing $net, left by an earlier run, with its containers"
        ids=$(docker ps -aq --filter "network=$net")
        [ -n "$ids" ] && docker rm -f -v $ids >/dev/null 2>&1
        docker network rm "$net" >/dev/null || die "could not remove the stale network $net"
    fi
done
GATEWAY=$(python3 -c 'import ipaddress, sys; print(next(ipaddress.ip_network(sys.argv[1]).hosts()))' "$SUBNET") ||
    die "TROVE_STAGE_SUBNET=$SUBNET is not a subnet"
docker network create --subnet "$SUBNET" --gateway "$GATEWAY" --label "trovestage.run=$RUN" "$RUN" >/dev/null ||
    die "could not create the Docker network $RUN on $SUBNET"

# --- Swift ---------------------------------------------------------------------------------------
# A real Swift (scripts/swift.sh, its state in the run's directory): its proxy listens on the
# network's gateway address only, where both Trove (on this host) and the guests reach it; the
# storage servers and memcached stay on loopback. The stage's user trovestage:trovestage owns the
# account AUTH_trovestage, the tenant the tests use; its tempauth token is the token the tests give
# Trove, which hands it to the guests for backups (see identity_filter_factory in trove_standins.py).
SWIFT_STATE="$WORK/swift"
SWIFT_KEY=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
swift_sh() { TROVE_SWIFT_STATE="$SWIFT_STATE" TROVE_SWIFT_BIND="$GATEWAY" TROVE_SWIFT_USER=trovestage:trovestage \
    TROVE_SWIFT_KEY="$SWIFT_KEY" bash "$ROOT/scripts/swift.sh" "$@"; }
SWIFT_STARTED=1
SWIFT_AUTH=$(swift_sh start 2>"$WORK/swift-start.log") || { tail -n 20 "$WORK/swift-start.log" >&2; die "starting Swift failed"; }
# the login's headers hold the token: read them from a file, not a process argument
swift_login=$(curl -fsS -o /dev/null -D - -K - "$SWIFT_AUTH" <<<"header = \"X-Storage-User: trovestage:trovestage\"
header = \"X-Storage-Pass: $SWIFT_KEY\"" | tr -d '\r') || die "the tempauth login to $SWIFT_AUTH failed"
SWIFT_TOKEN=$(awk -F': ' 'tolower($1)=="x-auth-token"{print $2}' <<<"$swift_login")
SWIFT_STORAGE=$(awk -F': ' 'tolower($1)=="x-storage-url"{print $2}' <<<"$swift_login")
[ -n "$SWIFT_TOKEN" ] && [ "${SWIFT_STORAGE##*/}" = AUTH_trovestage ] ||
    die "the tempauth login gave no token or an unexpected storage URL ($SWIFT_STORAGE)"
SWIFT_URL="${SWIFT_STORAGE%trovestage}"   # http://<gateway>:<port>/v1/AUTH_ ; Trove appends the tenant
# The cloud admin (Trove's management API: diagnostics, hwinfo, rebuild): swift.sh's own user
# test:tester of account AUTH_test; the identity filter gives the tenant `test` the role admin.
admin_login=$(curl -fsS -o /dev/null -D - -K - "$SWIFT_AUTH" <<<"header = \"X-Storage-User: test:tester\"
header = \"X-Storage-Pass: testing\"" | tr -d '\r') || die "the tempauth login of test:tester to $SWIFT_AUTH failed"
ADMIN_TOKEN=$(awk -F': ' 'tolower($1)=="x-auth-token"{print $2}' <<<"$admin_login")
[ -n "$ADMIN_TOKEN" ] || die "the tempauth login of test:tester gave no token"
umask 077
printf '%s' "$SWIFT_TOKEN" >"$WORK/etc/swift-token"
printf '%s' "$ADMIN_TOKEN" >"$WORK/etc/admin-token"
umask 022
log "Swift at $SWIFT_STORAGE (tempauth user trovestage:trovestage)"
RABBIT_PORT=$(free_port)
docker run -d --name "$RUN-rabbitmq" --label "trovestage.run=$RUN" --network "$RUN" \
    -p "127.0.0.1:$RABBIT_PORT:5672" "$RABBIT_IMAGE" >/dev/null || die "could not start the RabbitMQ container"
for _ in $(seq 1 300); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$RUN-rabbitmq" 2>/dev/null)" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$RUN-rabbitmq" 2>/dev/null)" = true ] ||
        { docker logs "$RUN-rabbitmq" 2>&1 | tail -n 20 >&2; die "the RabbitMQ container exited"; }
    sleep 0.5
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$RUN-rabbitmq")" = healthy ] ||
    die "the RabbitMQ container was not healthy within 150 s"
RABBIT_IP=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$RUN\").IPAddress}}" "$RUN-rabbitmq")
log "RabbitMQ at 127.0.0.1:$RABBIT_PORT for Trove, $RABBIT_IP:5672 for the guests"

# --- Trove's configuration -----------------------------------------------------------------------
SITE=$("$PY" -c 'import os, trove; print(os.path.dirname(trove.__file__))')
PASTE_SRC="$VENV/etc/trove/api-paste.ini"
[ -f "$PASTE_SRC" ] || die "Trove's api-paste.ini is not at $PASTE_SRC"
# In place of keystonemiddleware's authtoken: tokens checked with Swift's tempauth (trove_standins.py).
sed '/^\[filter:authtoken\]/,/^\[/ s#^paste.filter_factory = .*#paste.filter_factory = trove_standins:identity_filter_factory#' \
    "$PASTE_SRC" >"$WORK/etc/api-paste.ini"
grep -q 'trove_standins:identity_filter_factory' "$WORK/etc/api-paste.ini" ||
    die "could not put the fake identity filter into api-paste.ini"
API_PORT=$(free_port)
BARBICAN_PORT=$(free_port)   # the tests' Barbican stand-in (tests/trove/conftest.py) listens there
umask 077
cat >"$WORK/etc/trove.conf" <<EOF
# trove.conf of the trove test stage (scripts/trove-stage.sh). Every value differing from
# Trove 26's default is here; enable_secure_rpc_messaging is set per pass in pass.conf.
[DEFAULT]
debug = True
log_dir = $WORK
bind_host = 127.0.0.1
bind_port = $API_PORT
api_paste_config = $WORK/etc/api-paste.ini
transport_url = rabbit://trove:trove@127.0.0.1:$RABBIT_PORT/
control_exchange = trove
# the files injected into every guest: guest_info.conf (Trove writes it) and this one
guest_config = $WORK/etc/trove-guestagent.conf
injected_config_location = /etc/trove/conf.d
cloudinit_location = $WORK/etc/cloudinit
# compute, network, image and volumes: our stand-ins (tests/trove/trove_standins.py)
remote_nova_client = trove_standins.nova_client
remote_neutron_client = trove_standins.neutron_client
remote_glance_client = trove_standins.glance_client
remote_cinder_client = trove_standins.cinder_client
# object storage: the real Swift above, with Trove's own client; <swift_url><tenant> is the
# tenant's account, where backups go (the guests reach it at the same address)
swift_url = $SWIFT_URL
nova_compute_url = http://127.0.0.1:1/unused
# ssl enable: Trove's API reads the PKCS#12 container from Barbican (the tests' stand-in)
barbican_url = http://127.0.0.1:$BARBICAN_PORT
neutron_url = http://127.0.0.1:1/unused
glance_url = http://127.0.0.1:1/unused
cinder_url = http://127.0.0.1:1/unused
trove_volume_support = True
# resize volume offline (stop_db, unmount, detach, extend, attach, resize_fs, mount, restart): growing
# a mounted ext4 needs CAP_SYS_RESOURCE in the guest container, which a sandboxed Docker may not grant
online_volume_resize = False
trove_security_groups_support = False
management_networks =
verify_replica_volume_size = False
# An eject is refused while the old master's last heartbeat is younger than this (default 90 s);
# a live guest must heartbeat more often (report_interval in trove-guestagent.conf).
agent_heartbeat_expiry = 10
# how long the taskmanager waits for a new guest to become ACTIVE (default 1800 s)
usage_timeout = 240
# every \`instance show\` calls the guest; a dead guest makes each show wait this long (default 15 s)
agent_call_low_timeout = 5
server_delete_time_out = 60
[database]
connection = mysql+pymysql://trove:$DB_PASS@127.0.0.1:$DB_PORT/trove
[redis]
# a volume per instance (a loop device from the Cinder stand-in), /dev/vdb in the guest, where the
# agent formats and mounts it (device_path = /dev/vdb, mount_point = /var/lib/redis: Trove's defaults)
volume_support = True
[network]
network_isolation = False
[oslo_concurrency]
lock_path = $WORK/locks
[oslo_policy]
enforce_scope = False
enforce_new_defaults = False
EOF
# Trove's user data for redis guests, merged with the injected files' cloud-config. Trove 26's
# rebuild needs one: without it RebuildAction passes None to yaml.safe_load (docs/trove.md §5).
mkdir -p "$WORK/etc/cloudinit"
cat >"$WORK/etc/cloudinit/redis.cloudinit" <<EOF
#cloud-config
final_message: "trove-redis-guest (trove stage)"
EOF
cat >"$WORK/etc/trove-guestagent.conf" <<EOF
# The operator's guest configuration (trove.conf guest_config): Trove injects it into every guest
# as /etc/trove/conf.d/trove-guestagent.conf, next to the guest_info.conf it writes itself.
[DEFAULT]
transport_url = rabbit://trove:trove@$RABBIT_IP:5672/
control_exchange = trove
# heartbeat period; must stay well under agent_heartbeat_expiry (10 s here): the agent checks it on a
# min(report_interval, 5 s) tick, so heartbeats come every 2-4 s
report_interval = 2
debug = False
# guest logs: published to <swift_url><tenant> (the stage has no Keystone catalog to find Swift in)
swift_url = $SWIFT_URL
EOF
umask 022
echo "[DEFAULT]" >"$WORK/etc/pass.conf"

export PYTHONPATH="$ROOT/tests/trove${PYTHONPATH:+:$PYTHONPATH}"
export TROVE_STAGE_RUN="$RUN" TROVE_STAGE_NETWORK="$RUN" TROVE_STAGE_WORK="$WORK" TROVE_STAGE_SUBNET="$SUBNET"
export TROVE_STAGE_SWIFT_URL="$SWIFT_URL" TROVE_STAGE_TOKEN_FILE="$WORK/etc/swift-token"
export TROVE_STAGE_ADMIN_TENANT=test TROVE_STAGE_ADMIN_TOKEN_FILE="$WORK/etc/admin-token"
# Trove's database (root over the socket), for what its API does not show (a backup's checksum)
export TROVE_STAGE_DB_SOCK="$DB_SOCK"
# trove-guestctl (built with the images) and the broker as this host reaches it, for guest-side calls
export TROVE_STAGE_GUESTCTL="$ROOT/$BIN_DIR/trove-guestctl" TROVE_STAGE_TRANSPORT="rabbit://trove:trove@127.0.0.1:$RABBIT_PORT/"
export TROVE_GUEST_IMAGE="$STAGE_IMAGE" TROVE_STAGE_REBUILD_IMAGE="$("$PY" -c 'import trove_standins; print(trove_standins.REBUILD_IMAGE_ID)')"
TM=("$VENV/bin/trove-manage" --config-file "$WORK/etc/trove.conf")
log "trove-manage db_sync"
"${TM[@]}" db_sync >"$WORK/db_sync.log" 2>&1 || { tail -n 30 "$WORK/db_sync.log" >&2; die "trove-manage db_sync failed"; }
IMAGE_ID=$("$PY" -c 'import trove_standins; print(trove_standins.IMAGE_ID)')
{
    "${TM[@]}" datastore_update redis ''
    "${TM[@]}" datastore_version_update redis 7.0 redis "$IMAGE_ID" '' 1 \
        --registry-ext trove.guestagent.datastore.experimental.redis.manager.Manager
    "${TM[@]}" datastore_update redis 7.0
    # the upgrade step's target: the same image, whose agent maps the version to Valkey 9.1
    "${TM[@]}" datastore_version_update redis valkey-9.1 redis "$IMAGE_ID" '' 1 \
        --registry-ext trove.guestagent.datastore.experimental.redis.manager.Manager
} >"$WORK/datastore.log" 2>&1 || { tail -n 30 "$WORK/datastore.log" >&2; die "registering the redis datastore failed"; }
grep -q "updated" "$WORK/datastore.log" || { cat "$WORK/datastore.log" >&2; die "registering the redis datastore failed"; }
log "redis 7.0 and valkey-9.1 registered"

export TROVE_STAGE_API="http://127.0.0.1:$API_PORT" TROVE_STAGE_BARBICAN_PORT="$BARBICAN_PORT"
export TROVE_STAGE_CONF="$WORK/etc/trove.conf"
export TROVE_STAGE_PASS_CONF="$WORK/etc/pass.conf"
export TROVE_STAGE_PIDS="$WORK/pids"
export TROVE_STAGE_VENV="$VENV"
rc=0
# In the background, so that a TERM or INT to this script runs the cleanup at once.
if [ "$EXEC" = 1 ]; then
    log "running $1 (logs in $WORK)"
    "$@" &
else
    log "running tests/trove (logs in $WORK)"
    "$PY" -m pytest -q -p no:cacheprovider --disable-warnings --timeout 420 tests/trove "$@" &
fi
PYTEST_PID=$!
wait "$PYTEST_PID" || rc=$?
PYTEST_PID=""
[ -f "$WORK/report.txt" ] && cat "$WORK/report.txt"
if [ "$EXEC" = 0 ] && [ "${TROVE_STAGE_BENCH_SMOKE:-0}" = 1 ]; then
    log "the trove benchmark's smoke: scripts/bench.sh --smoke --only trove (report in $WORK/bench-smoke)"
    BENCH_OUT="$WORK/bench-smoke" TROVE_VENV="$VENV" setsid bash "$ROOT/scripts/bench.sh" --smoke --only trove &
    PYTEST_PID=$!
    brc=0
    wait "$PYTEST_PID" || brc=$?
    PYTEST_PID=""
    if [ "$brc" != 0 ]; then
        echo "##  trove-stage: FAILED: the trove benchmark's smoke (exit $brc; logs in $WORK)" >&2
        [ "$rc" = 0 ] && rc=$brc
    fi
fi
exit $rc
