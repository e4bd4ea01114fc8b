#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what it needs, then runs
#   1. Rust unit tests and property tests, and the integration tests (real RabbitMQ, real redis-server,
#      agents as separate processes);
#   2. the oslo.messaging compatibility tests (the real Python client, Trove's own guest API);
#   3. the fault-injection tests across Docker containers, the agent under systemd, and a promote
#      through the loss of a RabbitMQ cluster node (fails loudly without a Docker engine);
#   4. a smoke run of the benchmarks, so they cannot rot.
# Usage: scripts/test.sh [rust|compat|docker|bench ...]   (default: all stages)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(rust compat docker bench)

banner() { printf '\n==== %s ====\n' "$*"; }
passed=0; failed=0; failures=()
run_stage() {
  local name=$1; shift
  banner "$name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); echo "stage $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "stage $name: FAILED ($((SECONDS - start)) s)"
  fi
}

banner "services"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
AMQP_URL=$(bash scripts/services.sh)
export AMQP_URL
bash scripts/pyenv.sh

stage_rust() { cargo test --all-targets; }
stage_compat() {
  cargo build --bins --quiet &&
  TROVE_GUESTAGENT_BIN="$ROOT/target/debug/trove-guestagent" .venv/bin/python -m pytest -q tests/compat
}
# The fault scenarios, then systemd mode and the RabbitMQ cluster (each runs even if one before failed).
stage_docker() {
  local rc=0
  bash scripts/docker-tests.sh || rc=1
  bash scripts/systemd-tests.sh || rc=1
  bash scripts/cluster-tests.sh || rc=1
  return $rc
}
stage_bench() { bash scripts/bench.sh --smoke; }

for s in "${STAGES[@]}"; do
  case $s in
    rust) run_stage rust stage_rust ;;
    compat) run_stage compat stage_compat ;;
    docker) run_stage docker stage_docker ;;
    bench) run_stage bench stage_bench ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done

banner "summary"
[ $failed -gt 0 ] && echo "failed stages: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
[ $failed -eq 0 ]
