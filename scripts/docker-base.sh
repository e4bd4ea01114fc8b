#!/usr/bin/env bash
# Makes sure the base image debian:bookworm-slim exists locally.
#
# Order of attempts, first success wins:
#   1. the image is already there (nothing to do, about 0.1 s);
#   2. `docker pull` (short timeout; fails fast on machines without a registry);
#   3. import a cached root filesystem tarball (a few seconds);
#   4. build that tarball with debootstrap --variant=minbase from a Debian mirror, apply the
#      bookworm-updates and security updates, trim it the way the official slim images are
#      trimmed, cache it, and import it (about a minute).
#
# The imported image behaves like the official one for our Dockerfiles: apt sources for
# bookworm, bookworm-updates and bookworm-security, dpkg path excludes for docs, man pages and
# locales, apt cache cleaning, and a policy-rc.d that keeps package scripts from starting services.
#
# Usage: scripts/docker-base.sh [--rebuild]
#   --rebuild   ignore the cached tarball and the existing image; debootstrap again.
# Environment:
#   TROVE_BASE_IMAGE   image name to provide        (default debian:bookworm-slim)
#   TROVE_DEBIAN_SUITE Debian suite                  (default bookworm)
#   TROVE_DEBIAN_MIRROR mirror used by debootstrap and written into the image's apt sources
#                                                    (default http://deb.debian.org/debian)
#   TROVE_PULL_TIMEOUT seconds allowed for docker pull; 0 skips the pull (default 20)
#   TROVE_CACHE_DIR    cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/trove-redis-guest)
set -euo pipefail

IMAGE=${TROVE_BASE_IMAGE:-debian:bookworm-slim}
SUITE=${TROVE_DEBIAN_SUITE:-bookworm}
MIRROR=${TROVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT=${TROVE_PULL_TIMEOUT:-20}
CACHE_DIR=${TROVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trove-redis-guest}
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
TARBALL="$CACHE_DIR/rootfs-$SUITE-minbase-$ARCH.tar"
DEB_CACHE="$CACHE_DIR/debootstrap-debs-$SUITE-$ARCH"

REBUILD=0
case "${1:-}" in
    --rebuild) REBUILD=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

log() { echo "docker-base: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if [ "$REBUILD" -eq 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is present"
    exit 0
fi

if [ "$REBUILD" -eq 0 ] && [ "$PULL_TIMEOUT" -gt 0 ]; then
    log "trying docker pull $IMAGE (timeout ${PULL_TIMEOUT}s)"
    if timeout "$PULL_TIMEOUT" docker pull -q "$IMAGE" >/dev/null 2>&1; then
        log "pulled $IMAGE"
        exit 0
    fi
    log "pull failed; building $IMAGE locally"
fi

import_tarball() {
    log "importing $TARBALL as $IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL org.opencontainers.image.description=\"debootstrap $SUITE minbase, imported by trove-redis-guest scripts/docker-base.sh\"" \
        "$TARBALL" "$IMAGE" >/dev/null
    log "done: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$IMAGE")"
}

if [ "$REBUILD" -eq 0 ] && [ -s "$TARBALL" ]; then
    import_tarball
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mkdir -p "$CACHE_DIR" "$DEB_CACHE"
ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/trove-rootfs.XXXXXX")
chmod 0755 "$ROOTFS" # it becomes the image's /
cleanup() {
    # debootstrap unmounts on success; after a failure it may leave proc/sys mounted.
    for m in proc sys dev/pts; do
        $SUDO umount "$ROOTFS/$m" 2>/dev/null || true
    done
    $SUDO rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $SUITE from $MIRROR (debs cached in $DEB_CACHE)"
if ! $SUDO debootstrap --variant=minbase --cache-dir="$DEB_CACHE" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$ROOTFS.log" 2>&1; then
    tail -n 30 "$ROOTFS.log" >&2
    log "debootstrap failed (full log: $ROOTFS.log)"
    exit 1
fi
rm -f "$ROOTFS.log"

log "configuring apt/dpkg, applying updates, trimming"
$SUDO sh -eu -c '
r=$1; suite=$2; mirror=$3
security_mirror=$(echo "$mirror" | sed "s#/debian/*\$#/debian-security#")

rm -f "$r/etc/apt/sources.list"
cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Keep later package installs slim too (same idea as the official images).
cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<EOF
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$r/etc/apt/apt.conf.d/docker-clean" <<EOF
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo "Acquire::Languages \"none\";" >"$r/etc/apt/apt.conf.d/docker-no-languages"
echo "Acquire::GzipIndexes \"true\";" >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
printf "%s\n" "Apt::AutoRemove::SuggestsImportant \"false\";" >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
# Package maintainer scripts must not start services inside an image build.
printf "#!/bin/sh\nexit 101\n" >"$r/usr/sbin/policy-rc.d"
chmod 0755 "$r/usr/sbin/policy-rc.d"

# debootstrap installs only the release suite; take the point and security updates too.
if ! { chroot "$r" apt-get update -qq &&
        chroot "$r" env DEBIAN_FRONTEND=noninteractive apt-get -y -q \
            -o Dpkg::Options::=--force-confold dist-upgrade &&
        chroot "$r" apt-get clean; } >"$r/tmp/upgrade.log" 2>&1; then
    cat "$r/tmp/upgrade.log" >&2
    exit 1
fi
echo "docker-base: $(grep -c "^Setting up" "$r/tmp/upgrade.log" || true) packages updated" >&2
rm -f "$r/tmp/upgrade.log"

find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$r/usr/share/man/"* "$r/usr/share/info/"* "$r/usr/share/groff/"* "$r/usr/share/lintian/"*
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin "$r/var/cache/apt/archives/"*.deb \
       "$r/var/cache/debconf/"*-old "$r/var/lib/dpkg/"*-old "$r/var/cache/ldconfig/aux-cache"
find "$r/var/log" -type f -delete
# Docker provides these at run time.
: >"$r/etc/resolv.conf"
: >"$r/etc/hostname"
: >"$r/etc/machine-id"
' sh "$ROOTFS" "$SUITE" "$MIRROR"

log "writing $TARBALL"
$SUDO tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$TARBALL.tmp" .
$SUDO chown "$(id -u):$(id -g)" "$TARBALL.tmp"
mv -f "$TARBALL.tmp" "$TARBALL"
log "rootfs $(du -sh "$TARBALL" | cut -f1)"

import_tarball
