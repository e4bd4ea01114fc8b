"""The master is cut off the network under writers (one on the host, one inside its container), ejected, fenced, then re-attached."""

import time

from faultlib.base import GUESTS, say
from faultlib.checks import (Window, caught_up, check_losses, check_writer, config_get, create, linked_to, replica_state,
                             show_table, tail_window, wait_for)
from faultlib.env import set_net
from faultlib.writer import ContainerWriter, Writer

MIN_WRITES = 300
# Redis counts a replica good while its last REPLCONF ACK (sent every second) is at most
# min-replicas-max-lag seconds old, and re-counts once a second: the cut-off master stops
# acknowledging within max_lag + 3 s of the cut (ack period, re-count period, reporting delay).
FENCE_SLACK_S = 3.0
# How long the refusals must have gone on before the master is reconnected.
REFUSING_S = 1.5


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

    # Keep guest1 cut off until it has refused writes for a while (fence on), or for the fence's
    # window plus its slack (fence off); the writer inside it keeps trying all along.
    limit = env.max_lag + FENCE_SLACK_S + 10
    if fence > 0:
        def refusing():
            r = [t for _, t in inside.refused if t > t_cut]
            return r and time.monotonic() - r[0] >= REFUSING_S
        wait_for(refusing, max(0.0, t_cut + limit - time.monotonic()), interval=0.1)
    else:
        wait_for(lambda: time.monotonic() - t_cut >= env.max_lag + FENCE_SLACK_S, limit, interval=0.1)
    set_net(env, "guest1", True)
    t_back = time.monotonic()
    say(f"reconnected guest1 {t_back - t_cut:.1f}s after the cut")
    cut_acked = [t - t_cut for _, t in inside.acked if t_cut < t <= t_back]
    cut_refused = [t - t_cut for _, t in inside.refused if t_cut < t <= t_back]
    say(f"writes on guest1 during the cut (from inside its container): acknowledged {len(cut_acked)}"
        f"{' (the last %.2fs after the cut)' % cut_acked[-1] if cut_acked else ''}, refused with NOREPLICAS {len(cut_refused)}"
        f"{' (the first %.2fs after the cut)' % cut_refused[0] if cut_refused else ''}; "
        f"min-replicas-max-lag={env.max_lag}s")
    # After the reconnect the old master must still refuse: probe it a little longer from inside.
    n_back = len(inside.acked) + len(inside.refused)
    wait_for(lambda: len(inside.acked) + len(inside.refused) - n_back >= 20, 10, interval=0.1)
    inside.stop()
    say(inside.summary())
    back_acked = [n for n, t in inside.acked if t > t_back]
    back_refused = [n for n, t in inside.refused if t > t_back]
    say(f"writes on guest1 after the reconnect: acknowledged {len(back_acked)}, refused with NOREPLICAS {len(back_refused)}; "
        f"{config_get(env, 'guest1', 'min-replicas-*')}")
    if fence > 0:
        res.check(cut_refused, "split-brain fence: Redis on the cut-off master never refused a write with NOREPLICAS during the cut "
                  "(connection errors do not count)")
        res.check(not cut_acked or cut_acked[-1] <= env.max_lag + FENCE_SLACK_S,
                  f"the cut-off master acknowledged writes {cut_acked[-1] if cut_acked else 0:.1f}s after the cut, "
                  f"past min-replicas-max-lag ({env.max_lag}s) + {FENCE_SLACK_S}s")
        res.check(not back_acked and back_refused, f"split brain: after the reconnect the old master acknowledged {len(back_acked)} "
                  f"writes and refused {len(back_refused)} with NOREPLICAS")
    else:
        res.check(cut_acked, "without the fence the cut-off master should have acknowledged writes during the cut")
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
    # Stated bounds: the tail the old master acknowledged but had not replicated when cut; then,
    # with the fence, what it acknowledged within min-replicas-max-lag (+ slack) of the cut;
    # without the fence, everything it acknowledged until it was re-attached.
    m = env.ip("guest1")
    windows = [tail_window(m, t_before, t_cut, "network cut of the master")]
    if fence > 0:
        windows.append(Window(m, t_cut, t_cut + env.max_lag + FENCE_SLACK_S,
                              f"cut off, fenced by min-replicas-to-write after min-replicas-max-lag={env.max_lag}s"))
    else:
        windows.append(Window(m, t_cut, t_attached, "cut off without the fence: every write until re-attached"))
    check_losses(env, res, w.records() + inside.records(), new, [other, "guest1"], windows)
    show_table(env)
