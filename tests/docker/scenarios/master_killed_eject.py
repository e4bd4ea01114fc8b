"""The master dies (docker kill) with one replica lagging, under a writer; eject picks the most current one."""

import time

from faultlib.base import GUESTS, say
from faultlib.checks import (caught_up, check_losses, check_writer, create, linked_to, replica_state, stats,
                             tail_window, wait_for)
from faultlib.resp import rcall
from faultlib.writer import Writer

MIN_WRITES = 500
MIN_WRITES_NEW_MASTER = 50


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    m = env.ip("guest1")
    # One writer, following the master, runs from before the lag through the kill and the eject.
    w = Writer([env.ip(g) for g in GUESTS], "s2")
    w.start()
    time.sleep(0.5)
    env.docker("pause", env.cid("guest3"))
    rcall(m, "CLIENT", "KILL", "TYPE", "replica")
    say("paused guest3 and cut the replica links on the master (CLIENT KILL TYPE replica)")
    time.sleep(1.0)
    res.require(wait_for(lambda: caught_up(env, "guest2", "guest1"), 10),
                f"guest2 did not catch up with the master before the kill: {replica_state(env, 'guest2')}")
    before = {g: replica_state(env, g) for g in ("guest1", "guest2")}
    t_before = time.monotonic()
    env.docker("kill", env.cid("guest1"))
    t_kill = time.monotonic()
    env.docker("unpause", env.cid("guest3"))
    say(f"killed guest1 while the writer ran (master offset {before['guest1']['master_repl_offset']}, "
        f"guest2 offset {before['guest2']['offset']} just before); unpaused guest3")
    full0 = stats(env, "guest2")
    c = env.ctl("eject-replica-source", env.gid("guest1"), timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest1: rc={c.rc} in {c.ms} ms (the flow itself: total_ms={rep.get('total_ms')}), "
        f"new_master={rep.get('new_master')}")
    for line in c.err.splitlines():
        if "candidate" in line:
            say("  " + line.strip())
    time.sleep(1.5)
    w.stop()
    say(w.summary())
    after = [t for _, h, t in w.acked if h == env.ip("guest2")]
    gap = (after[0] - t_kill) if after else 0
    say(f"writes unavailable from the kill until the first write on the new master: {int(gap * 1000)} ms")
    res.pause_ms = int(w.longest * 1000)
    res.require(c.rc == 0, "eject failed: " + c.describe())
    res.check(rep.get("new_master") == env.gid("guest2"), f"the most current replica guest2 must win, got {rep.get('new_master')}")
    offsets = {e["id"]: e["offset"] for e in rep.get("evidence", [])}
    res.check(len(set(offsets.values())) > 1, f"the lag was not real: {offsets}")
    res.check(wait_for(lambda: linked_to(env, "guest3", "guest2"), 15), f"guest3 does not follow guest2: {replica_state(env, 'guest3')}")
    check_writer(res, w, MIN_WRITES)
    res.check(len(after) >= MIN_WRITES_NEW_MASTER, f"too few writes on the new master ({len(after)})")
    # Asynchronous replication: what the master acknowledged in its last moments may not have
    # reached guest2. Only that tail may be missing on the new master.
    check_losses(env, res, w.records(), "guest2", ["guest3"],
                 [tail_window(m, t_before, t_kill, "docker kill of the master")])
    full1 = stats(env, "guest2")
    say(f"guest3's resync from guest2: full={full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"partial={full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)}")
    inv = env.inventory_replica_of()
    res.check(inv.get(env.gid("guest3")) == env.gid("guest2") and inv.get(env.gid("guest2")) is None,
              f"the inventory does not record the new topology: {inv}")
