# Sourced by the container test scripts: which build of the binaries goes into the images and runs
# on the host (trove-guestctl).
#   TROVE_CARGO_PROFILE  release (the default: what operators ship, `cargo build --release`) or debug
#                        (the build `cargo test` already made, stripped of debug info into
#                        target/image-bin; CI's container stages use it and skip the release
#                        profile's LTO build, ten minutes on two cores). scripts/bench.sh always
#                        measures release.
# Sets BIN_DIR (relative to the repository root, usable as the Dockerfiles' BIN_DIR build argument)
# and defines build_bins.
TROVE_CARGO_PROFILE=${TROVE_CARGO_PROFILE:-release}
case "$TROVE_CARGO_PROFILE" in
    release) BIN_DIR=target/release ;;
    debug) BIN_DIR=target/image-bin ;;
    *) echo "TROVE_CARGO_PROFILE=$TROVE_CARGO_PROFILE is neither release nor debug" >&2; exit 2 ;;
esac
export TROVE_CARGO_PROFILE BIN_DIR

# build_bins: cargo build of both binaries in the chosen profile (quick when nothing changed).
build_bins() {
    if [ "$TROVE_CARGO_PROFILE" = release ]; then
        cargo build --release --bins --quiet
    else
        cargo build --bins --quiet || return 1
        mkdir -p target/image-bin
        local b
        for b in trove-guestagent trove-guestctl; do
            strip --strip-debug -o "target/image-bin/$b.tmp" "target/debug/$b" && mv "target/image-bin/$b.tmp" "target/image-bin/$b" || return 1
        done
    fi
}
