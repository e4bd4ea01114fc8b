"""The replica's agent is killed while attach_replica waits for a large sync; the retried create converges."""

import os
import subprocess
import time

from faultlib.base import say
from faultlib.checks import check_losses, check_writer, create, linked_to, replica_state, stats, wait_for
from faultlib.env import kill_agent
from faultlib.resp import rcall, rinfo
from faultlib.writer import Writer

MIN_WRITES = 100


def run(env, res):
    keys = int(os.environ.get("TROVE_FAULTS_POPULATE", "1000000"))
    t = time.monotonic()
    env.redis_cli("guest1", "DEBUG", "POPULATE", str(keys), "s5pop", "100")
    mem = rinfo(env.ip("guest1"), "memory") or {}
    say(f"populated guest1 with {keys} keys ({mem.get('used_memory_human')}) in {time.monotonic() - t:.1f}s")
    full0 = stats(env, "guest1")
    w = Writer([env.ip("guest1")], "s5")
    w.start()
    p, t_start, out, err = env.ctl_background("create-replicas", "--replica-of", env.gid("guest1"), env.gid("guest2"))
    seen = wait_for(lambda: (replica_state(env, "guest2") or {}).get("role") == "slave" or p.poll() is not None, 60, interval=0.01)
    st = replica_state(env, "guest2")
    res.require(seen and p.poll() is None, f"never saw guest2 start replicating while the create ran (create exit {p.poll()})")
    old_pid = kill_agent(env, "guest2")
    say(f"killed guest2's agent (pid {old_pid}) {time.monotonic() - t_start:.2f}s into the create; guest2 then: "
        f"role={st['role']} link={st['link']} sync_in_progress={st['sync']}")
    back = env.wait_ping("guest2", 30)
    new_pid = env.agent_pid("guest2")
    res.require(back, "guest2's agent did not come back")
    say(f"guest2's agent is back (pid {new_pid}) {time.monotonic() - t_start:.1f}s into the create")
    try:
        p.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    if p.poll() is None:
        p.terminate()
        p.wait()
        say("the interrupted create-replicas was still waiting for attach_replica's reply (lost with the agent); stopped it, "
            "as a taskmanager timeout would")
    else:
        say(f"the interrupted create-replicas ended by itself: exit {p.returncode}: {open(err).read().strip()[-300:]}")
    create(env, res, "guest1", ["guest2"])
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.check(wait_for(lambda: linked_to(env, "guest2", "guest1"), 20), f"guest2 is not a linked replica: {replica_state(env, 'guest2')}")
    inv = env.inventory_replica_of()
    res.check(inv.get(env.gid("guest2")) == env.gid("guest1"), f"inventory does not record guest2 as replica of guest1: {inv}")
    d1, d2 = rcall(env.ip("guest1"), "DBSIZE"), rcall(env.ip("guest2"), "DBSIZE")
    say(f"dbsize master={d1} replica={d2}")
    res.check(d1 == d2, f"the replica has {d2} keys, the master {d1}")
    full1 = stats(env, "guest1")
    say(f"full syncs served by guest1 for the create and its retry: {full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"(partial {full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)})")
    check_writer(res, w, MIN_WRITES)
    check_losses(env, res, w.records(), "guest1", ["guest2"])
