# Guest image: Debian's redis-server (7.0 on bookworm) plus the trove-guestagent binary.
#
# `docker build .` expects binaries built on the host beforehand with `cargo build --release`:
#   target/release/trove-guestagent   (required)
#   target/release/trove-guestctl     (copied too when present)
# .dockerignore sends only those two files from the repository. They link against the host's
# glibc, so build them on Debian 12 or another system with glibc <= 2.36, or the check below
# fails. scripts/docker-images.sh builds the binaries and all images.
#
# Two ways to boot (docker/guest/entrypoint.sh):
# * As Trove boots a guest: Trove's injected guest_info.conf and trove-guestagent.conf mounted in
#   /etc/trove/conf.d (readable by the redis user); the entrypoint runs
#   `trove-guestagent --config-dir /etc/trove/conf.d`, as Trove's guest-agent.service does.
# * Otherwise from TROVE_GUESTAGENT__<SECTION>__<KEY> variables (defaults below; see
#   etc/trove-guestagent.toml for every key); TROVE_GUESTAGENT__GUEST__ID must be set, and the
#   broker defaults to rabbit://trove:trove@rabbitmq:5672/.
# In both, the variables below place Redis (Trove's files do not say where) and any
# TROVE_GUESTAGENT__* variable overrides the files. With REDIS__SERVICE=supervised the
# agent runs redis-server as its own child, so the image has no init system; use `docker run
# --init` (compose: `init: true`) so that orphaned processes are reaped.
#
# The server: build argument GUEST_SERVER, `debian` (the default: Debian's Redis 7.0) or one of the
# matrix servers as <name>-<version> (redis-6.0.9, redis-6.2.5, redis-6.2.14, redis-7.2.4,
# redis-7.4.1, valkey-8.1.8, valkey-9.0.0, valkey-9.1.2), whose binary (and, for the redis-stack
# builds, OpenSSL 1.1) scripts/docker-images.sh stages from .servers/ into target/guest-server
# (TROVE_GUEST_SERVER=valkey-9.1.2 scripts/docker-images.sh guest). docker/guest/server.sh puts it
# at /usr/bin/redis-server, which the agent runs (it tells Redis from Valkey by --version);
# redis-cli is Debian's in every image.
FROM debian:bookworm-slim

RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o redis -g redis -m 0750 /var/lib/redis /var/log/trove; \
    install -d -o redis -g redis -m 0755 /var/run/redis; \
    install -d -m 0755 /etc/trove/conf.d; \
    redis-server --version

ENV TROVE_GUESTAGENT__REDIS__SERVICE=supervised \
    TROVE_GUESTAGENT__REDIS__BINARY=/usr/bin/redis-server \
    TROVE_GUESTAGENT__REDIS__CONFIG_FILE=/var/lib/redis/redis.conf \
    TROVE_GUESTAGENT__REDIS__DATA_DIR=/var/lib/redis \
    TROVE_GUESTAGENT__REDIS__PORT=6379

# The agent and Redis run as the unprivileged redis user; everything they write is under
# /var/lib/redis (config, agent state, dump.rdb), the agent's log under /var/log/trove when
# Trove's log_dir puts it there, and the pidfile and unix socket of Trove's stock template under
# /var/run/redis (which the agent, not being root, could not create).
COPY docker/guest/entrypoint.sh /usr/local/bin/trove-guest-entrypoint
ARG GUEST_SERVER=debian
# The glob lets the staged directory be absent (GUEST_SERVER=debian with a plain `docker build`).
COPY docker/guest/server.sh target/guest-serve[r] /opt/trove-server/
RUN /opt/trove-server/server.sh "$GUEST_SERVER"
LABEL org.trove-redis-guest.server=$GUEST_SERVER
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["trove-guest-entrypoint"]

# Last, so that a new binary rebuilds only these two layers. The glob copies trove-guestctl only
# if it was built (the files stay root-owned); the RUN fails if the agent is missing or needs
# libraries (or a glibc) that the image lacks.
ARG BIN_DIR=target/release
COPY ${BIN_DIR}/trove-guest* /usr/local/bin/
RUN set -eu; \
    test -x /usr/local/bin/trove-guestagent; \
    for b in /usr/local/bin/trove-guest*; do \
        if ldd "$b" 2>&1 | grep 'not found'; then echo "$b cannot run here" >&2; exit 1; fi; \
    done
