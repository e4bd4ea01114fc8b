#!/usr/bin/env bash
# A/B of the agent against an earlier revision: the same switchover benchmark, run alternately
# with each build in the same window (this machine's load moves absolute figures by 2x and more).
#
# Usage: scripts/bench-ab.sh REV [ROUNDS] [OUT.json]
#   REV     a git revision to compare with (built in a temporary worktree)
#   ROUNDS  alternations (default 2; each runs the 6-repetition switchover once per build)
#   OUT     merged raw figures (default bench/results/ab-switchover.json)
# Prints medians and p95 of "ours" (command -> writable, all linked, longest write pause) per build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REV=${1:?usage: scripts/bench-ab.sh REV [ROUNDS] [OUT.json]}
ROUNDS=${2:-2}
OUT=${3:-$ROOT/bench/results/ab-switchover.json}
log() { echo "[bench-ab $(date +%H:%M:%S)] $*" >&2; }

BASE_SHA=$(git -C "$ROOT" rev-parse --verify "$REV^{commit}")
HEAD_SHA=$(git -C "$ROOT" rev-parse HEAD)
WORK=$(mktemp -d /tmp/trove-bench-ab.XXXXXX)
cleanup() { git -C "$ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

# The benchmark's Python packages, RabbitMQ and Redis, as scripts/bench.sh sets them up.
bash "$ROOT/scripts/pyenv.sh" >&2
PY="${TROVE_VENV:-$ROOT/.venv}/bin/python"
"$PY" -m pip install -q --disable-pip-version-check -c "$ROOT/tests/compat/constraints.txt" \
    -c "$ROOT/bench/constraints.txt" -r "$ROOT/bench/requirements.txt"
AMQP_URL=$(bash "$ROOT/scripts/services.sh")
AMQP_URL="rabbit://${AMQP_URL#*://}"

log "building HEAD ${HEAD_SHA:0:7} and $REV (${BASE_SHA:0:7}) in release"
(cd "$ROOT" && cargo build --quiet --release --bins)
git -C "$ROOT" worktree add --force --detach "$WORK/base" "$BASE_SHA" >/dev/null 2>&1
(cd "$WORK/base" && CARGO_TARGET_DIR="$WORK/target" cargo build --quiet --release --bins)

declare -A BIN=([base]="$WORK/target/release" [head]="$ROOT/target/release")
FILES=()
for i in $(seq 1 "$ROUNDS"); do
    for which in base head; do
        f="$WORK/$which-$i.json"
        log "round $i/$ROUNDS: $which"
        env PYTHONPATH="$ROOT/bench" PYTHONWARNINGS=ignore AMQP_URL="$AMQP_URL" "$PY" -m trovebench \
            --bin-dir "${BIN[$which]}" --only switchover --results "$f" --markdown "$WORK/$which.md" \
            --charts "$WORK/charts" >"$WORK/$which-$i.log" 2>&1 || { tail -20 "$WORK/$which-$i.log" >&2; exit 1; }
        FILES+=("$which=$f")
    done
done

"$PY" - "$OUT" "$BASE_SHA" "$HEAD_SHA" "${FILES[@]}" <<'PYEOF'
import json, os, statistics, sys
out, base_sha, head_sha, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = {"base": [], "head": []}
for spec in files:
    which, path = spec.split("=", 1)
    for r in json.load(open(path))["switchover"]["runs"]:
        if r["method"] == "ours":
            runs[which].append({k: r[k] for k in ("writable_ms", "all_linked_ms", "longest_pause_ms", "lost", "sync_full_delta")})
def stat(rows, key):
    v = sorted(x[key] for x in rows if x[key] is not None)
    return statistics.median(v), v[max(0, int(round(0.95 * len(v))) - 1)]
print("| build | rounds | command -> writable (ms) | all linked (ms) | longest write pause (ms) | lost |")
print("|---|---|---|---|---|---|")
summary = {}
for which, sha in (("base", base_sha), ("head", head_sha)):
    rows = runs[which]
    cells = [stat(rows, k) for k in ("writable_ms", "all_linked_ms", "longest_pause_ms")]
    summary[which] = {"commit": sha, "rounds": len(rows), "medians": [c[0] for c in cells], "p95": [c[1] for c in cells],
                      "lost": sum(r["lost"] for r in rows)}
    print("| %s %s | %d | %s | %d |" % (which, sha[:7], len(rows),
          " | ".join("%.1f (p95 %.1f)" % c for c in cells), summary[which]["lost"]))
ratio = [h / b if b else float("nan") for h, b in zip(summary["head"]["medians"], summary["base"]["medians"])]
print("| head / base | | %s | |" % " | ".join("%.2fx" % r for r in ratio))
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump({"summary": summary, "ratios": ratio, "runs": runs, "load": open("/proc/loadavg").read().strip()}, open(out, "w"), indent=1)
PYEOF
log "raw figures: $OUT"
