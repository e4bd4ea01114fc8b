# Sourced by the container test scripts (docker-tests.sh, systemd-tests.sh, cluster-tests.sh): the
# loud "did not run" banner, the Docker preflight and the removal of a compose project. Sources
# scripts/bins.sh (the binaries' build) too.
# shellcheck source=scripts/bins.sh
. "$(dirname "${BASH_SOURCE[0]}")/bins.sh"

# not_run_banner WHO WHAT REASON: the banner on stderr that says a test did not run, and why.
not_run_banner() {
    {
        echo
        echo "##########################################################################"
        echo "##  $1: FAILED, $2 did NOT run:"
        echo "##  $3"
        echo "##########################################################################"
        echo
    } >&2
}

# docker_problem: why the Docker engine cannot be used here, on stdout (nothing when it can).
docker_problem() {
    command -v docker >/dev/null 2>&1 || { echo "the docker CLI is not installed; these tests need a running Docker engine."; return; }
    local err
    err=$(timeout 30 docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null) ||
        echo "the Docker engine is not running or not reachable (docker info: ${err:-timed out})."
}

# remove_project PROJECT: unpauses, then removes every container (with its volumes) and network of
# a compose project. Succeeds when none is left; otherwise prints what is left.
remove_project() {
    local filter="label=com.docker.compose.project=$1" ids paused nets
    paused=$(docker ps -q --filter "$filter" --filter status=paused 2>/dev/null)
    [ -n "$paused" ] && docker unpause $paused >/dev/null 2>&1
    ids=$(docker ps -aq --filter "$filter" 2>/dev/null)
    [ -n "$ids" ] && docker rm -f -v $ids >/dev/null 2>&1
    nets=$(docker network ls -q --filter "$filter" 2>/dev/null)
    [ -n "$nets" ] && docker network rm $nets >/dev/null 2>&1
    ids=$(docker ps -aq --filter "$filter" 2>/dev/null)
    nets=$(docker network ls -q --filter "$filter" 2>/dev/null)
    [ -z "$ids$nets" ] && return 0
    echo "containers [$ids] networks [$nets]"
    return 1
}
