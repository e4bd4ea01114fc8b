#!/usr/bin/env bash
# Creates or updates the Python virtualenv .venv (gitignored) used by tests/compat:
# oslo.messaging 18.3.1 (the real RPC client and server), kombu, cryptography, pytest, and
# Trove 26.0.0 itself (its guest API client, serializers and exception classes; its services and
# python-troveclient 8.11.0 for the trove stage, scripts/trove-stage.sh).
#
# Usage: scripts/pyenv.sh [--refresh-constraints]
#   --refresh-constraints  resolve the newest versions again (ignoring tests/compat/constraints.txt)
#                          and rewrite that file from the result.
# Environment:
#   PYTHON                 interpreter for the venv (default: python3)
#   TROVE_VENV             venv directory (default: <repo>/.venv)
#   TROVE_PYENV_TROVE=0    do not install the trove package (tests that use it then fail, saying so)
#
# A second run with unchanged inputs (this script, requirements, constraints, interpreter) only
# checks a stamp file and exits in well under a second.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${TROVE_VENV:-$ROOT/.venv}
WITH_TROVE=${TROVE_PYENV_TROVE:-1}
REQ="$ROOT/tests/compat/requirements.txt"
CONSTRAINTS="$ROOT/tests/compat/constraints.txt"
TROVE_REQ="trove==26.0.0"
TROVECLIENT_REQ="python-troveclient==8.11.0"
STAMP="$VENV/.trove-pyenv-stamp"
REFRESH=0

log() { echo "pyenv.sh: $*" >&2; }

case "${1:-}" in
    --refresh-constraints) REFRESH=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

command -v "$PYTHON" >/dev/null 2>&1 || { log "ERROR: $PYTHON not found"; exit 1; }
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')

inputs_hash() {
    {
        cat "$0" "$REQ" "$CONSTRAINTS"
        echo "python=$PYVER with_trove=$WITH_TROVE"
    } | sha256sum | cut -d' ' -f1
}

WANT=$(inputs_hash)
if [ "$REFRESH" -eq 0 ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    log "$VENV is up to date"
    exit 0
fi

if [ -x "$VENV/bin/python" ]; then
    VENVVER=$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo none)
    if [ "$VENVVER" != "$PYVER" ]; then
        log "recreating $VENV (it has Python $VENVVER, $PYTHON is $PYVER)"
        rm -rf "$VENV"
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON ($PYVER)"
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_DISABLE_PIP_VERSION_CHECK=1

PKGS=(-r "$REQ")
[ "$WITH_TROVE" = "1" ] && PKGS+=("$TROVE_REQ" "$TROVECLIENT_REQ")

start=$SECONDS
FALLBACK=0
if [ "$REFRESH" -eq 1 ]; then
    log "installing newest versions (no constraints)"
    "${PIP[@]}" install -q --upgrade "${PKGS[@]}"
    {
        echo "# Exact versions of everything in .venv (scripts/pyenv.sh), resolved from PyPI for Python $PYVER"
        echo "# with $TROVE_REQ and oslo.messaging 18.3.1. Regenerate: scripts/pyenv.sh --refresh-constraints"
        "${PIP[@]}" freeze | grep -v -E '^(-e |pip==|setuptools==|wheel==)'
    } >"$CONSTRAINTS.tmp"
    mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
    log "rewrote $CONSTRAINTS"
    WANT=$(inputs_hash)
else
    log "installing ${PKGS[*]} (pinned by $CONSTRAINTS)"
    if ! "${PIP[@]}" install -q -c "$CONSTRAINTS" "${PKGS[@]}"; then
        if [ "$WITH_TROVE" = "1" ]; then
            log "WARNING: installing with $TROVE_REQ failed; retrying without it" \
                "(tests that use Trove's own client will fail)"
            "${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$REQ"
            FALLBACK=1
        else
            exit 1
        fi
    fi
fi

# Sanity check: the modules the suite imports.
PYTHONWARNINGS=ignore "$VENV/bin/python" - <<'EOF'
import importlib, sys
for m in ("oslo_messaging", "oslo_config", "kombu", "cryptography", "pytest"):
    importlib.import_module(m)
try:
    import trove.guestagent.api  # noqa: F401
    import troveclient.v1.client  # noqa: F401
    print("pyenv.sh: trove and troveclient importable", file=sys.stderr)
except Exception as e:  # noqa: BLE001
    print("pyenv.sh: trove NOT importable: %s" % e, file=sys.stderr)
EOF

if [ "$FALLBACK" -eq 0 ]; then
    echo "$WANT" >"$STAMP"
else
    log "no stamp written: the next run tries to install $TROVE_REQ again"
fi
log "done in $((SECONDS - start))s: $("$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(oslo\.messaging|trove|python-troveclient|kombu|pytest) ' | tr -s ' ' | tr '\n' ';')"
