#!/usr/bin/env bash
# Benchmarks: the agent against its anchors (Redis Sentinel, Redis FAILOVER, a hand-made floor, hand-made
# REPLICAOF, a Python oslo.messaging server). Installs what it needs (RabbitMQ and Redis via
# scripts/services.sh, the Python venv via scripts/pyenv.sh plus bench/requirements.txt), builds the
# binaries, starts every process it measures on 127.0.0.1 and stops them all at the end.
#
# Usage: scripts/bench.sh [--smoke] [--only LIST] [--keep] [--report-only]
#   (no flag)      the full suite at HEAD in one go (~30 min on 2 cores): writes BENCHMARKS.md (summary,
#                  charts, findings, targets), bench/charts/*.png, the detailed tables in
#                  bench/results/tables.md and the raw figures in bench/results/full.json; every section
#                  records the agent commit, the machine and the load averages before and after it
#   --smoke        tiny configuration (1 repetition, a few MB of data, a few minutes once built):
#                  writes its report into a temporary directory, never over BENCHMARKS.md; exits non-zero
#                  on any error (CI runs it so the suite cannot rot). Without --only: every benchmark
#                  but "trove" (Trove's services and guest containers take minutes to set up; CI runs
#                  its smoke inside the trove stage, scripts/trove-stage.sh with
#                  TROVE_STAGE_BENCH_SMOKE=1), the diagnostics fsync, agentcost and backup, then dualchannel
#                  on its own run on $BENCH_DUALCHANNEL_SERVER (default valkey-9.1.2, fetched by
#                  scripts/redis-servers.sh; report in <out>/dualchannel/), and the server matrix
#   --only LIST    comma-separated subset: switchover,failover,create,rpc,footprint,scale,sidebyside (trove-guestctl
#                  watch against 3 Sentinels, both through redis-py's Sentinel client),trove; re-runs
#                  just those and replaces just their sections in the results file (the report marks
#                  sections measured from another agent commit); the diagnostics "fsync" (the promote with
#                  and without fsync, via Debian's eatmydata) and "agentcost" run only when listed (or
#                  by --smoke without --only).
#                  "trove" runs inside scripts/trove-stage.sh --exec (Docker, MariaDB; the guest image
#                  $TROVE_GUEST_IMAGE is built as that stage builds it) on subnet $TROVE_STAGE_SUBNET
#                  (default here 172.28.93.0/24)
#                  "dualchannel" (diagnostic, only when listed or by --smoke): create through the agent with Valkey's
#                  dual-channel replication vs plain diskless, 1 and 2 replicas, 100 MB and 1 GB; needs
#                  BENCH_SERVER=valkey-8.0+
#                  "backup" (diagnostic, only when listed or by --smoke, 4 MB there): on scripts/swift.sh's
#                  Swift, 1 GB ($BENCH_BACKUP_MB) backed up and restored by the agent (create_backup until the
#                  conductor's COMPLETED; prepare with backup_info) beside redis-cli --rdb | gzip | openssl enc |
#                  swift upload (and back), 3 rounds; then the master's write latency at rest, during a backup
#                  on its replica and during one on the master
#                  "servers": the server matrix (switchover and create on each of $BENCH_MATRIX_SERVERS,
#                  default "valkey-9.1.2 redis-6.2.14", stored in the results file's "servers"); the full
#                  suite runs it after the main run; --smoke runs it on the first of those servers
#   --results F    raw figures file (default bench/results/full.json); --markdown F, --charts DIR likewise
#   --merge F      with --report-only: add the benchmarks of another results file (e.g. a diagnostic run)
#   --keep         keep the temporary directory (agent and Redis logs, data)
#   --report-only  regenerate BENCHMARKS.md and the charts from bench/results/full.json
# Environment:
#   BENCH_PROFILE  cargo profile of the binaries: release (default for the full suite) or debug
#                  (default for --smoke, which then reuses the binaries `cargo test` built)
#   BENCH_OUT      output directory for --smoke (default: a new temporary directory)
#   BENCH_BACKUP_MB  the backup diagnostic's data size in MB (default 1024; --smoke 4)
#   BENCH_DUALCHANNEL_SERVER  the Valkey 8.0+ server of --smoke's dualchannel run (default valkey-9.1.2)
#   BENCH_SERVER   the server every node of the run uses: a path, or <name>-<version> of
#                  scripts/redis-servers.sh (redis-6.0.9 ... valkey-9.1.2, fetched on first use);
#                  default Debian's redis-server. E.g. BENCH_SERVER=valkey-9.1.2 scripts/bench.sh
#                  --only switchover,create --results bench/results/valkey-9.1.json --markdown /tmp/v.md
#                  --charts /tmp/vc (the server is in the results' meta, "redis")
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SMOKE=0
ARGS=()
ONLY=""
prev=""
for a in "$@"; do
    case "$a" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$a") ;;
    esac
    [ "$prev" = "--only" ] && ONLY=$a
    prev=$a
done
# "servers" in --only is the server matrix, run here after the Python suite; the rest goes to it.
MATRIX=0
if [ -z "$ONLY" ] || [[ ",$ONLY," == *,servers,* ]]; then MATRIX=1; fi
if [ -n "$ONLY" ]; then
    rest=$(echo "$ONLY" | tr ',' '\n' | grep -vx servers | paste -sd, -)
    for i in "${!ARGS[@]}"; do
        if [ "${ARGS[$i]}" = "$ONLY" ] && [ "$i" -gt 0 ] && [ "${ARGS[$((i - 1))]}" = "--only" ]; then
            if [ -n "$rest" ]; then ARGS[$i]=$rest; else unset "ARGS[$((i - 1))]" "ARGS[$i]"; fi
        fi
    done
    ARGS=("${ARGS[@]+"${ARGS[@]}"}")
    [ -z "$rest" ] && MAIN=0
fi
MAIN=${MAIN:-1}
MATRIX_SERVERS=${BENCH_MATRIX_SERVERS-valkey-9.1.2 redis-6.2.14}
[ "$SMOKE" = 1 ] && MATRIX_SERVERS=${MATRIX_SERVERS%% *}
log() { echo "bench.sh: $*" >&2; }
REPORT_ONLY=0
for a in "${ARGS[@]+"${ARGS[@]}"}"; do [ "$a" = "--report-only" ] && REPORT_ONLY=1; done

VENV="${TROVE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# 1. Python: the project's venv (oslo.messaging, trove) plus the benchmark's own packages.
bash "$ROOT/scripts/pyenv.sh" >&2
BENCH_STAMP="$VENV/.trove-bench-stamp"
want=$(cat "$ROOT/bench/requirements.txt" "$ROOT/bench/constraints.txt" "$ROOT/tests/compat/constraints.txt" \
    <("$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)
if [ ! -f "$BENCH_STAMP" ] || [ "$(cat "$BENCH_STAMP")" != "$want" ] \
    || ! "$PY" -c 'import redis, matplotlib, psutil' 2>/dev/null; then
    log "installing bench/requirements.txt into $VENV"
    "$PY" -m pip install -q --disable-pip-version-check -c "$ROOT/tests/compat/constraints.txt" \
        -c "$ROOT/bench/constraints.txt" -r "$ROOT/bench/requirements.txt"
    echo "$want" > "$BENCH_STAMP"
fi

if [ "$REPORT_ONLY" = 1 ]; then
    exec env PYTHONPATH="$ROOT/bench" "$PY" -m trovebench "${ARGS[@]}"
fi

# 2. RabbitMQ and Redis (Debian packages), the default broker node on 127.0.0.1:5672.
AMQP_URL=$(bash "$ROOT/scripts/services.sh")
AMQP_URL="rabbit://${AMQP_URL#*://}"   # oslo.messaging's scheme; the agent accepts both
command -v redis-server >/dev/null || { log "redis-server missing after services.sh"; exit 1; }
# server_bin NAME: a path, or <name>-<version> of scripts/redis-servers.sh (fetched on first use).
server_bin() {
    if [ -x "$1" ]; then echo "$1"; return; fi
    local bin
    bin=$(bash "$ROOT/scripts/redis-servers.sh" --quiet | awk -v s="$1" '$1 "-" $2 == s { print $3 }')
    [ -n "$bin" ] || { log "server $1: neither an executable nor a server of scripts/redis-servers.sh"; exit 2; }
    echo "$bin"
}
if [ -n "${BENCH_SERVER:-}" ]; then
    BENCH_SERVER_BIN=$(server_bin "$BENCH_SERVER")
    export BENCH_SERVER_BIN
    log "server: $("$BENCH_SERVER_BIN" --version)"
fi

# The fsync diagnostic needs libeatmydata (Debian package eatmydata).
if { [[ " ${ARGS[*]+"${ARGS[*]}"} " == *fsync* ]] || { [ "$SMOKE" = 1 ] && [ -z "$ONLY" ]; }; } && ! dpkg-query -W -f='${Status}' eatmydata 2>/dev/null | grep -q 'install ok installed'; then
    log "installing eatmydata (for the fsync diagnostic)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq eatmydata >/dev/null
fi

# 3. Binaries: the agent and CLI, and the RPC load generator (bench/rpc-load, built on the agent's library).
command -v cargo >/dev/null || { log "cargo is required"; exit 1; }
if [ "$SMOKE" = 1 ]; then PROFILE=${BENCH_PROFILE:-debug}; else PROFILE=${BENCH_PROFILE:-release}; fi
case "$PROFILE" in
    release) CARGO_FLAGS=(--release); BIN="$ROOT/target/release" ;;
    debug) CARGO_FLAGS=(); BIN="$ROOT/target/debug" ;;
    *) log "BENCH_PROFILE must be release or debug"; exit 2 ;;
esac
# The trove section's images take their binaries from the same profile (scripts/bins.sh).
export TROVE_CARGO_PROFILE="$PROFILE"
log "building ($PROFILE)"
cargo build --quiet "${CARGO_FLAGS[@]}" --bins
CARGO_TARGET_DIR="$ROOT/target" cargo build --quiet "${CARGO_FLAGS[@]}" --manifest-path "$ROOT/bench/rpc-load/Cargo.toml"

# 4. Run. The Python driver owns every process it starts and stops them on exit (also on errors,
# Ctrl-C and SIGTERM).
RUN=(env PYTHONPATH="$ROOT/bench" PYTHONWARNINGS=ignore AMQP_URL="$AMQP_URL" "$PY" -m trovebench
     --bin-dir "$BIN" --load-bin "$BIN/trovebench-rpc-load")
# The server matrix: each server's switchover and create into the results file the main run wrote.
run_matrix() {
    local s bin
    [ "$MATRIX" = 1 ] || return 0
    for s in $MATRIX_SERVERS; do
        bin=$(server_bin "$s")
        log "server matrix: $s ($("$bin" --version | cut -c1-40))"
        BENCH_SERVER_BIN=$bin "${RUN[@]}" --server-matrix "$s" "$@"
    done
}
if [ "$SMOKE" = 1 ]; then
    OUT=${BENCH_OUT:-$(mktemp -d /tmp/trove-bench-smoke.XXXXXX)}
    mkdir -p "$OUT"
    start=$SECONDS
    SMOKE_FILES=(--smoke --results "$OUT/results.json" --markdown "$OUT/BENCHMARKS.md" --charts "$OUT/charts")
    if [ "$MAIN" = 1 ]; then "${RUN[@]}" "${SMOKE_FILES[@]}" "${ARGS[@]+"${ARGS[@]}"}"; fi
    # The dualchannel diagnostic needs Valkey 8.0+ on every node: its own run (without --only).
    DUAL=""
    if [ -z "$ONLY" ]; then
        DUAL="$OUT/dualchannel"
        bin=$(server_bin "${BENCH_DUALCHANNEL_SERVER:-valkey-9.1.2}")
        log "dualchannel diagnostic on $("$bin" --version | cut -c1-40)"
        BENCH_SERVER_BIN=$bin "${RUN[@]}" --smoke --only dualchannel --results "$DUAL/results.json" \
            --markdown "$DUAL/BENCHMARKS.md" --charts "$DUAL/charts"
    fi
    run_matrix "${SMOKE_FILES[@]}"
    # The report must have come out whole: one section and one readable PNG per benchmark run.
    [ "$MATRIX" = 1 ] || MATRIX_SERVERS=""
    MATRIX_SERVERS=$MATRIX_SERVERS DUAL=$DUAL "$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
res = json.load(open(os.path.join(out, "results.json")))
md = open(os.path.join(out, "BENCHMARKS.md")).read()
charts = {"switchover": "switchover.png", "failover": "failover.png", "create": "create.png", "rpc": "rpc.png",
          "footprint": "footprint.png", "scale": "scale.png", "trove": "trove.png", "fsync": "fsync.png"}
bad = []
dual = os.environ.get("DUAL")
if dual:  # its own run; the report does not render it, so its figures must be there
    d = json.load(open(os.path.join(dual, "results.json"))) if os.path.exists(os.path.join(dual, "results.json")) else {}
    if not d.get("dualchannel", {}).get("summary"):
        bad.append("no dualchannel summary in %s/results.json" % dual)
# Benchmarks without a chart (sidebyside) must have their detailed section and their summary rows instead.
tables_md = os.path.join(out, "bench", "results", "tables.md")
tables = open(tables_md).read() if os.path.exists(tables_md) else ""
sections = {"sidebyside": ("side by side with Redis Sentinel", "watch vs Sentinel"),
            "agentcost": ("what the agent's CPU per call and memory are made of", "## Summary"),
            "backup": ("backup and restore, the agent beside the hand-made pipeline", "## Summary")}
for name in os.environ.get("MATRIX_SERVERS", "").split():
    if name not in res.get("servers", {}):
        bad.append("no server-matrix results for %s" % name)
    elif not res["servers"][name]["switchover"]["runs"] or not res["servers"][name]["create"]["runs"]:
        bad.append("server %s: no switchover or create rounds" % name)
if os.environ.get("MATRIX_SERVERS") and "Server matrix" not in tables:
    bad.append("no server matrix section in bench/results/tables.md")
for name in res["meta"]["only"]:
    if name in sections:
        if sections[name][0] not in tables:
            bad.append("no %s section in bench/results/tables.md" % name)
        if sections[name][1] not in md:
            bad.append("no %s rows in the summary of BENCHMARKS.md" % name)
    else:
        png = os.path.join(out, "charts", charts[name])
        if not os.path.exists(png) or open(png, "rb").read(8) != b"\x89PNG\r\n\x1a\n":
            bad.append("chart %s missing or not a PNG" % charts[name])
    if name not in res:
        bad.append("no results for %s" % name)
    elif not res[name].get("run", {}).get("agent", {}).get("src_commit"):
        bad.append("section %s does not record its agent commit" % name)
if "| ---" not in md and "|---" not in md:
    bad.append("BENCHMARKS.md has no table")
for head in ("## Summary", "## Targets", "## Provenance"):
    if head not in md:
        bad.append("BENCHMARKS.md has no %r" % head)
if not os.path.exists(os.path.join(out, "bench", "results", "tables.md")):
    bad.append("no detailed tables (bench/results/tables.md)")
if bad:
    sys.exit("bench.sh --smoke: " + "; ".join(bad))
EOF
    log "smoke passed in $((SECONDS - start))s: report in $OUT/BENCHMARKS.md"
else
    if [ "$MAIN" = 1 ]; then "${RUN[@]}" "${ARGS[@]+"${ARGS[@]}"}"; fi
    run_matrix "${ARGS[@]+"${ARGS[@]}"}"
fi
