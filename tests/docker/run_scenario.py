#!/usr/bin/env python3
"""Runs one fault scenario (tests/docker/scenarios/<name>.py) against the compose project.

    run_scenario.py NAME        (environment: see faultlib.env.Env; set by scripts/docker-tests.sh)

Each scenario starts from three fresh guest containers (guest1..3 of the compose project, with
guest ids unique to the scenario), prepares them, runs its faults with trove-guestctl on the host,
and prints detail lines followed by exactly one summary line:

    scenario=<name> result=pass|fail acked=<n> lost=<n> longest_pause_ms=<n> bound=<n>

`lost` counts acknowledged writes missing on the final master; `bound` is how many acknowledged
writes lay in the scenario's stated loss windows (0 where nothing may be lost). Exit status 0
when the scenario passed, 1 when it failed. A scenario module has a docstring, `run(env, res)`,
and optionally `compose_files(env)` (extra compose files) and `REDIS_CONF` (what prepare sends).

Only the Python standard library is used: Redis is spoken with a minimal RESP client, and the
containers are driven with the docker CLI. Writes go from the host to the containers' addresses
on the project's private bridge network.
"""

import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultlib.base import REDIS_CONF, say  # noqa: E402
from faultlib.checks import Failed, Result  # noqa: E402
from faultlib.env import Env  # noqa: E402

SCENARIO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")


def names():
    return sorted(f[:-3] for f in os.listdir(SCENARIO_DIR) if f.endswith(".py") and not f.startswith("_"))


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in names():
        print(f"usage: {sys.argv[0]} {{{'|'.join(names())}}}", file=sys.stderr)
        return 2
    name = sys.argv[1]
    mod = importlib.import_module(f"scenarios.{name}")
    res = Result(name)
    env = Env(name)
    print(f"--- {name}: {mod.__doc__.strip()}", flush=True)
    try:
        t = time.monotonic()
        if hasattr(mod, "compose_files"):
            for path in mod.compose_files(env):
                env.compose += ["-f", path]
        env.fresh_guests()
        env.write_inventory()
        env.prepare_all(getattr(mod, "REDIS_CONF", REDIS_CONF))
        say(f"fresh guests {env.tag}-guest1..3 prepared in {time.monotonic() - t:.1f}s")
        mod.run(env, res)
    except Failed:
        pass
    except Exception as e:  # noqa: BLE001 - any error fails the scenario, loudly
        res.failures.append(f"{type(e).__name__}: {e}")
        say(f"FAIL: {type(e).__name__}: {e}")
    env.stop_background()
    if res.failures:
        try:
            paths = env.save_logs()
            say(f"logs: {os.path.dirname(paths[0]) if paths else env.workdir}")
        except Exception as e:  # noqa: BLE001
            say(f"could not save logs: {e}")
    print(res.line(), flush=True)
    return 0 if not res.failures else 1


if __name__ == "__main__":
    sys.exit(main())
