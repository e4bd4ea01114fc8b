#!/bin/sh
# Guest image build step: puts the chosen server at /usr/bin/redis-server (the agent's
# redis.binary, and the name every tool and scenario looks for). GUEST_SERVER=debian: Debian's
# Redis stays. Otherwise "<name>-<version>" (e.g. valkey-9.1.2) staged by scripts/docker-images.sh
# into /opt/trove-server: bin/<name>-server, plus lib/ with OpenSSL 1.1 for the redis-stack builds
# (then /usr/bin/redis-server is a wrapper that sets LD_LIBRARY_PATH and execs the server: same
# process). Debian's binary stays installed as redis-check-rdb (its redis-server was a link to
# it). Fails unless the installed server runs and reports the version asked for.
set -eu
want="${1:?usage: server.sh GUEST_SERVER}"
target=/usr/bin/redis-server
if [ "$want" != debian ]; then
    bin=$(ls /opt/trove-server/bin/*-server 2>/dev/null | head -1)
    [ -n "$bin" ] || { echo "GUEST_SERVER=$want: no server staged in target/guest-server (scripts/docker-images.sh stages it)" >&2; exit 1; }
    chmod 0755 "$bin"
    rm -f "$target"
    if [ -d /opt/trove-server/lib ]; then
        printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/trove-server/lib exec %s "$@"\n' "$bin" >"$target"
        chmod 0755 "$target"
    else
        ln -s "$bin" "$target"
    fi
fi
got=$("$target" --version)
echo "$got"
if [ "$want" != debian ]; then
    echo "$got" | grep -qi "^${want%%-*} server v=${want#*-} " || { echo "GUEST_SERVER=$want, but the staged server says: $got" >&2; exit 1; }
fi
