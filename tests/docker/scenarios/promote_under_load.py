"""A writer follows the master through promote-to-replica-source; nothing acknowledged is lost."""

import time

from faultlib.base import GUESTS, say
from faultlib.checks import check_losses, check_writer, create, linked_to, promote, replica_state, show_table, stats, wait_for
from faultlib.writer import Writer

MIN_WRITES = 200


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    full0 = stats(env, "guest2")
    w = Writer([env.ip(g) for g in GUESTS], "s1")
    w.start()
    time.sleep(1.5)
    c, rep = promote(env, "guest2")
    time.sleep(1.5)
    w.stop()
    say(w.summary())
    say("master switches seen by the writer: " + ", ".join(f"{h}@{t / 1000:.1f}s" for t, h in w.switches))
    res.pause_ms = int(w.longest * 1000)
    res.require(c.rc == 0, "promote failed: " + c.describe())
    check_writer(res, w, MIN_WRITES)
    for g in ("guest1", "guest3"):
        res.check(wait_for(lambda: linked_to(env, g, "guest2"), 15), f"{g} is not a linked replica of guest2 after the promote: {replica_state(env, g)}")
    # A planned switchover fences writes on the old master before the promote: bound 0.
    check_losses(env, res, w.records(), "guest2", ["guest1", "guest3"])
    full1 = stats(env, "guest2")
    say(f"resyncs served by the new master guest2: full={full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"partial={full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)}")
    show_table(env)
