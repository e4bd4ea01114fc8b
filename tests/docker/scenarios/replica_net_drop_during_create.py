"""A replica's network drops during a create: the flow names that guest's failure; the others finish."""

import os
import time

from faultlib.base import say
from faultlib.checks import check_losses, check_writer, linked_to, replica_state, stats, wait_for
from faultlib.env import set_net
from faultlib.resp import rinfo
from faultlib.writer import Writer

MIN_WRITES = 100


def run(env, res):
    keys = int(os.environ.get("TROVE_FAULTS_POPULATE_SMALL", "300000"))
    env.redis_cli("guest1", "DEBUG", "POPULATE", str(keys), "s7pop", "100")
    say(f"populated guest1 with {keys} keys")
    # A replica that drops out of the shared diskless transfer stalls the others until the master's
    # repl-timeout (60 s by default); a shorter one keeps the scenario short and changes nothing else.
    repl_timeout = os.environ.get("TROVE_FAULTS_REPL_TIMEOUT", "20")
    env.redis_cli("guest1", "CONFIG", "SET", "repl-timeout", repl_timeout)
    say(f"guest1's repl-timeout set to {repl_timeout} s")
    w = Writer([env.ip("guest1")], "s7")
    w.start()
    p, t_start, out, err = env.ctl_background("create-replicas", "--replica-of", env.gid("guest1"), env.gid("guest2"), env.gid("guest3"))

    def guest3_joined():
        # guest3 is among the master's replicas (waiting for, or receiving, the shared diskless transfer).
        info = rinfo(env.ip("guest1"), "replication") or {}
        return any(k.startswith("slave") and f"ip={env.ip('guest3')}," in v for k, v in info.items()) or p.poll() is not None

    seen = wait_for(guest3_joined, 60, interval=0.01)
    res.require(seen and p.poll() is None, f"never saw guest3 join the master's sync while the create ran (create exit {p.poll()})")
    set_net(env, "guest3", False)
    t_cut = time.monotonic()
    say(f"disconnected guest3 {t_cut - t_start:.2f}s into the create")
    g2_done = None
    while p.poll() is None and time.monotonic() - t_cut < env.flow_deadline:
        if g2_done is None and linked_to(env, "guest2", "guest1"):
            g2_done = time.monotonic() - t_cut
        time.sleep(0.5)
    waited = time.monotonic() - t_cut
    rc = p.poll()
    if rc is None:
        p.terminate()
        p.wait()
    text = open(err).read() + open(out).read()
    say(f"create-replicas: {'exit %d' % rc if rc is not None else 'still running'} {waited:.1f}s after the cut")
    for line in text.strip().splitlines()[-8:]:
        say("  | " + line)
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.check(rc is not None, f"create-replicas did not report within {env.flow_deadline}s of guest3's network drop "
              "(it waits for attach_replica's reply, with no liveness check)")
    if rc is not None:
        res.check(rc != 0, "create-replicas exited 0 although guest3 could not be attached")
        res.check(env.gid("guest3") in text, "the failure output does not name guest3")
    done = wait_for(lambda: linked_to(env, "guest2", "guest1"), 20)
    if g2_done is None and done:
        g2_done = time.monotonic() - t_cut
    say(f"guest2 linked and caught up {g2_done:.1f}s after guest3's drop" if g2_done is not None else "guest2 never finished")
    full = stats(env, "guest1")
    say(f"full syncs served by guest1: {full.get('sync_full')} (a replica dropping out of a shared diskless transfer "
        "stalls the others until repl-timeout, then they sync again)")
    res.check(done, f"guest2 did not finish: {replica_state(env, 'guest2')}")
    inv = env.inventory_replica_of()
    say(f"inventory replica_of: { {k.split('-', 1)[1]: v and v.split('-', 1)[1] for k, v in inv.items()} }")
    res.check(inv.get(env.gid("guest2")) == env.gid("guest1"), "the inventory does not record guest2, which finished, as a replica of guest1")
    res.check(inv.get(env.gid("guest3")) is None, "the inventory records guest3 as a replica although it failed")
    check_writer(res, w, MIN_WRITES)
    check_losses(env, res, w.records(), "guest1", ["guest2"])
