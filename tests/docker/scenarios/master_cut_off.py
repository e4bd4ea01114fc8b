"""The master is cut off the network under writers (one on the host, one inside its container), ejected, fenced, then re-attached."""

import time

from faultlib.base import GUESTS, say
from faultlib.checks import (caught_up, check_fence, check_losses, check_writer, config_get, create, cut_windows, linked_to,
                             replica_state, show_table, wait_fenced, wait_for)
from faultlib.env import set_net
from faultlib.writer import ContainerWriter, Writer

MIN_WRITES = 300


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    t_created = time.monotonic()
    fence = env.min_replicas
    if fence > 0:
        # The agent arms min-replicas-to-write once the replicas are online (at its next status probe).
        armed = wait_for(lambda: config_get(env, "guest1", "min-replicas-to-write") == {"min-replicas-to-write": str(fence)}, 15)
        say(f"split-brain fence on guest1 {'armed' if armed else 'NOT armed'} {time.monotonic() - t_created:.1f}s after create-replicas returned")
        res.check(armed, f"the agent did not arm min-replicas-to-write={fence} on the master within 15 s of create-replicas")
    else:
        say("the agent's split-brain fence is off (TROVE_FAULTS_MIN_REPLICAS=0): writes on the cut-off master are not bounded")
    say(f"guest1 before the cut: {config_get(env, 'guest1', 'min-replicas-*')}")
    w = Writer([env.ip(g) for g in GUESTS], "s3")
    w.start()
    inside = ContainerWriter(env, "guest1", "s3in")
    inside.start()
    res.require(wait_for(lambda: len(inside.acked) >= 5, 15), f"the writer inside guest1 made no writes before the cut: {inside.summary()}")
    time.sleep(0.5)
    for g in ("guest2", "guest3"):
        res.require(wait_for(lambda: caught_up(env, g, "guest1"), 10), f"{g} did not catch up before the cut: {replica_state(env, g)}")
    t_before = time.monotonic()
    set_net(env, "guest1", False)
    t_cut = time.monotonic()
    say("disconnected guest1 from the network (its agent cannot reach RabbitMQ either); both writers keep going")
    c = env.ctl("eject-replica-source", env.gid("guest1"), timeout=120)
    if c.rc == 3 and "alive" in c.err:
        say("eject refused (the old master still answered); retrying with --force")
        c = env.ctl("eject-replica-source", env.gid("guest1"), "--force", timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest1: rc={c.rc} in {c.ms} ms (the flow itself: total_ms={rep.get('total_ms')}), "
        f"new_master={rep.get('new_master')}")
    res.require(c.rc == 0, "eject failed: " + c.describe())
    new = next((g for g in GUESTS if env.gid(g) == rep.get("new_master")), None)
    res.require(new in ("guest2", "guest3"), f"unexpected new master {rep.get('new_master')}")
    other = "guest3" if new == "guest2" else "guest2"

    # Keep guest1 cut off until the fence shows; the writer inside it keeps trying all along.
    wait_fenced(env, inside, t_cut)
    set_net(env, "guest1", True)
    t_back = time.monotonic()
    say(f"reconnected guest1 {t_back - t_cut:.1f}s after the cut")
    check_fence(env, res, inside, "guest1", t_cut, t_back)
    pinged = env.wait_ping("guest1", 40)
    say(f"guest1's agent answers again {time.monotonic() - t_back:.1f}s after the reconnect" if pinged else "guest1's agent does not answer")
    res.require(pinged, "the old master's agent did not come back within 40 s of the reconnect")
    create(env, res, new, ["guest1"])
    t_attached = time.monotonic()
    res.check(wait_for(lambda: linked_to(env, "guest1", new), 15), f"guest1 is not a linked replica of {new}: {replica_state(env, 'guest1')}")
    time.sleep(0.5)
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    check_writer(res, w, MIN_WRITES)
    check_writer(res, inside, 20, "the writer inside guest1")
    windows = cut_windows(env, env.ip("guest1"), t_before, t_cut, t_attached)
    check_losses(env, res, w.records() + inside.records(), new, [other, "guest1"], windows)
    show_table(env)
