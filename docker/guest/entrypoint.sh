#!/bin/sh
# Guest image entrypoint: boot from Trove's injected files when there are any, else from the environment.
#
# Trove's taskmanager injects guest_info.conf and trove-guestagent.conf into /etc/trove/conf.d
# (TROVE_CONF_DIR overrides the path), and Trove's guest image starts its agent with
# --config-dir on that directory; so does this one when the directory holds *.conf files.
# Otherwise the agent takes its settings from TROVE_GUESTAGENT__<SECTION>__<KEY> variables alone
# (docker-compose.yml), with the broker at rabbitmq:5672 unless the environment names another.
# Arguments are passed on to trove-guestagent.
set -eu
dir="${TROVE_CONF_DIR:-/etc/trove/conf.d}"
for f in "$dir"/*.conf; do
    if [ -f "$f" ]; then
        exec trove-guestagent --config-dir "$dir" "$@"
    fi
done
: "${TROVE_GUESTAGENT__RPC__TRANSPORT_URL:=rabbit://trove:trove@rabbitmq:5672/}"
export TROVE_GUESTAGENT__RPC__TRANSPORT_URL
exec trove-guestagent "$@"
