"""A replica's redis-server is killed; the agent restarts it; it rejoins the current master, partially when the backlog allows."""

import time

from faultlib.base import GUESTS, say
from faultlib.checks import check_losses, check_writer, create, linked_to, replica_state, stats, wait_for
from faultlib.resp import Redis, rcall, rinfo
from faultlib.writer import Writer, missing_on

MIN_WRITES = 100


def run(env, res):
    env.redis_cli("guest1", "DEBUG", "POPULATE", "20000", "s6pop", "100")
    create(env, res, "guest1", ["guest2", "guest3"])
    c = env.ctl("promote-to-replica-source", env.gid("guest2"))
    say(f"promote-to-replica-source guest2 (so that the current master is not the original one): rc={c.rc} in {c.ms} ms")
    res.require(c.rc == 0, "promote failed: " + c.describe())
    res.require(wait_for(lambda: linked_to(env, "guest3", "guest2"), 15), "guest3 does not follow guest2 after the promote")
    backlog = int((rinfo(env.ip("guest2"), "replication") or {}).get("repl_backlog_size", "0"))
    wa = Writer([env.ip("guest2")], "s6a")
    wa.start()
    time.sleep(0.5)

    def restart_once(label, during=None):
        before = stats(env, "guest2")
        pid = (rinfo(env.ip("guest3"), "server") or {}).get("process_id")
        res.require(pid, "cannot read guest3's redis pid")
        env.exec("guest3", "sh", "-c", f"kill -9 {pid}")
        t_kill = time.monotonic()
        if during:
            during()
        back = wait_for(lambda: linked_to(env, "guest3", "guest2"), 30, interval=0.05)
        down_s = time.monotonic() - t_kill
        new_pid = (rinfo(env.ip("guest3"), "server") or {}).get("process_id")
        after = stats(env, "guest2")
        full = after.get("sync_full", 0) - before.get("sync_full", 0)
        partial = after.get("sync_partial_ok", 0) - before.get("sync_partial_ok", 0)
        say(f"{label}: killed guest3's redis-server (pid {pid}); " +
            (f"back as a linked replica of guest2 after {down_s:.1f}s (pid {new_pid}); " if back else
             f"NOT back after {down_s:.1f}s: {replica_state(env, 'guest3')}; ") +
            f"resyncs served by guest2: full={full} partial={partial}")
        res.check(back, f"{label}: guest3 did not come back as a replica of the current master guest2")
        return full, partial

    full, partial = restart_once("within the backlog")
    res.check(full == 0 and partial >= 1, f"a restart within the backlog ({backlog} bytes) must resync partially: full={full} partial={partial}")
    time.sleep(0.3)
    wa.stop()
    say(wa.summary())
    res.pause_ms = int(wa.longest * 1000)
    big = [(f"s6big:{i}", "x" * 100_000) for i in range(3 * backlog // 100_000 + 1)]

    def overflow():
        r = Redis(env.ip("guest2"), timeout=10)
        try:
            replies = r.pipeline([("SET", k, v) for k, v in big])
        finally:
            r.close()
        res.require(all(x == "OK" for x in replies), f"bulk writes failed: {set(map(str, replies))}")

    full, partial = restart_once(f"after {len(big) * 100} kB written during the restart (over the backlog)", overflow)
    res.check(full == 1, f"a restart past the backlog resyncs fully (once): full={full} partial={partial}")
    missing = missing_on(env.ip("guest3"), big)
    res.check(missing is not None, "guest3 could not be read to check the bulk writes")
    res.check(missing is not None and not missing, f"guest3 lacks {len(missing or [])} of the bulk writes")
    check_writer(res, wa, MIN_WRITES)
    check_losses(env, res, wa.records(), "guest2", ["guest1", "guest3"])
    sizes = {g: rcall(env.ip(g), "DBSIZE") for g in GUESTS}
    say(f"dbsize: {sizes}")
    res.check(len(set(sizes.values())) == 1, f"the nodes hold different key counts: {sizes}")
