#!/usr/bin/env bash
# The server matrix: the replication core of the integration tests (tests/it) against each of
# Redis 6.0.9, 6.2.5, 6.2.14, Debian's 7.0.15, 7.2.4, 7.4.1 and Valkey 8.1.8, 9.0.0, 9.1.2, one
# server after another, plus pairs across servers; prints one line per run and fails if any fails.
# A server that cannot be fetched or run fails its line; nothing is skipped.
#
# Usage: scripts/test-matrix.sh [filter ...]   (filters: run only servers whose "name-version" contains one)
# Environment: AMQP_URL (RabbitMQ, as for tests/it), MATRIX_THREADS (test threads per run, default 2),
#              MATRIX_JOBS (servers run at once, default 2: the tests mostly wait on Redis and the
#              broker), MATRIX_LOGS (per-run cargo output, default target/matrix).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
THREADS=${MATRIX_THREADS:-2}
JOBS=${MATRIX_JOBS:-2}
LOGS=${MATRIX_LOGS:-$ROOT/target/matrix}
mkdir -p "$LOGS"

# The replication core: create with a password, two replicas in one diskless transfer, promote in Trove's order (fence, no lost write,
# partial resync), an attach to a fenced master (its offset stays), eject, detach, kill -9 and restart, ACL user, the fences and refusals, the
# deposed master's held fence (epochs), the hostile-input catalogue (every case leaves redis.conf and
# the agent state byte-identical) and odd
# passwords, Valkey's dual-channel setting, and what differs between servers (tests/it/matrix.rs).
TESTS=(
  redis_sync::create_replica_with_password_keeps_master_running
  redis_sync::two_replicas_share_one_diskless_transfer_without_the_delay
  redis_sync::a_gather_whose_replicas_do_not_all_come_changes_nothing
  redis_sync::trove_promote_order_continues_partially
  redis_sync::an_attach_to_a_fenced_master_leaves_its_offset
  redis_sync::detach_makes_a_writable_master_with_the_data
  redis_sync::replica_survives_kill_9_and_idempotent_attach
  redis_sync::replica_of_a_replica_is_refused
  redis_sync::acl_replication_user
  redis_sync::fence_expires
  redis_sync::split_brain_fence_refuses_writes_without_replicas
  flows::promote_loses_no_acknowledged_write
  flows::eject_picks_the_most_current_replica
  epochs::a_deposed_master_refuses_writes_and_the_next_coordinator_completes_the_switch
  hostile::hostile_input_catalogue
  hostile::odd_but_valid_passwords_are_accepted_and_quoted
  root::root_on_a_master_and_its_replica
  root::generated_root_and_hostile_inputs_change_nothing
  matrix::
)

if ! manifest=$(bash scripts/redis-servers.sh); then
  echo "test-matrix.sh: the servers could not all be fetched and run (see above)" >&2
  exit 1
fi
debian=$(command -v redis-server || true)
[ -n "$debian" ] || { echo "test-matrix.sh: Debian's redis-server is not installed (scripts/services.sh installs it)" >&2; exit 1; }
manifest=$(printf 'redis %s %s\n%s\n' "$("$debian" --version | sed -n 's/.* v=\([0-9.]*\) .*/\1/p')" "$debian" "$manifest" | sort -t' ' -k1,1 -k2,2V)
path_of() { awk -v n="$1" -v v="$2" '$1 == n && $2 == v { print $3 }' <<<"$manifest"; }

echo "building the agent and the integration tests"
cargo build --quiet --bins && cargo test --quiet --test it --no-run 2>/dev/null || { echo "test-matrix.sh: build failed" >&2; exit 1; }

# run <label> <server path> [env...] -- tests...: one run, in the background; its row goes to
# $LOGS/<label>.row and a failure's details to $LOGS/<label>.why (printed in order at the end).
labels=()
run() {
  local label=$1 server=$2; shift 2
  labels+=("$label")
  rm -f "$LOGS/$label.row"
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  run_one "$label" "$server" "$@" &
}
run_one() {
  local label=$1 server=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local log="$LOGS/$label.log" why="$LOGS/$label.why" start=$SECONDS
  : >"$why"
  # Every filter must match, and every test it names must pass (a renamed test cannot drop out).
  local expected=0 f n
  for f in "$@"; do
    n=$(cargo test --quiet --test it -- --list "$f" 2>/dev/null | grep -c ': test$')
    [ "$n" -gt 0 ] || echo "---- $label: the filter $f matches no test" >>"$why"
    expected=$((expected + n))
    [ "$n" -gt 0 ] || expected=-1000000
  done
  env TROVE_TEST_REDIS_SERVER="$server" "${envs[@]}" cargo test --quiet --test it -- --test-threads "$THREADS" "$@" >"$log" 2>&1
  local rc=$? secs=$((SECONDS - start))
  local pass fail
  pass=$(sed -n 's/^test result: .*[^0-9]\([0-9][0-9]*\) passed.*/\1/p' "$log" | tail -1)
  fail=$(sed -n 's/^test result: .* \([0-9][0-9]*\) failed.*/\1/p' "$log" | tail -1)
  pass=${pass:-0}; fail=${fail:-?}
  local verdict=ok
  if [ $rc -ne 0 ] || [ "$fail" != 0 ] || [ "$pass" -ne "$expected" ]; then
    [ "$pass" -ne "$expected" ] && echo "---- $label: $pass passed, $expected expected" >>"$why"
    verdict=FAILED
    { echo "---- $label: failing tests (full output in $log)"; grep -E '^test .* FAILED$|panicked at' "$log" | head -20; } >>"$why"
  fi
  printf '%-28s %6s %6s %6ss  %s\n' "$label" "$pass" "$fail" "$secs" "$verdict" | tee "$LOGS/$label.row"
}

selected() {
  [ ${#FILTERS[@]} -eq 0 ] && return 0
  local f; for f in "${FILTERS[@]}"; do [[ "$1" == *"$f"* ]] && return 0; done
  return 1
}
FILTERS=("$@")

while read -r name version path; do
  selected "$name-$version" || continue
  run "$name-$version" "$path" -- "${TESTS[@]}"
done <<<"$manifest"

# Pairs across servers: an upgrade (6.2 master, 7.4 replica promoted) and a move to Valkey.
for pair in "redis 6.2.14 redis 7.4.1" "redis 7.2.4 valkey 9.1.2"; do
  read -r mn mv rn rv <<<"$pair"
  selected "$mn-$mv>$rn-$rv" || continue
  run "$mn-$mv>$rn-$rv" "$(path_of "$rn" "$rv")" TROVE_TEST_REDIS_MASTER_SERVER="$(path_of "$mn" "$mv")" -- matrix::pair_across_servers
done

wait
echo
printf '%-28s %6s %6s %7s  %s\n' "server" "passed" "failed" "time" "verdict"
[ ${#labels[@]} -gt 0 ] || { echo "test-matrix.sh: no server selected" >&2; exit 1; }
failed=0
for label in "${labels[@]}"; do
  row=$(cat "$LOGS/$label.row" 2>/dev/null) || row=$(printf '%-28s %6s %6s %7s  %s' "$label" - - - "FAILED (no result)")
  echo "$row"
  [[ "$row" == *" ok" ]] || failed=$((failed + 1))
done
for label in "${labels[@]}"; do cat "$LOGS/$label.why" 2>/dev/null; done
[ $failed -eq 0 ]
