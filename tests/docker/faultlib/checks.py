"""Scenario checks: the result line, waits, replication state, flows, and loss accounting."""

import time

from .base import T0, say
from .resp import ReplyError, rcall, rinfo
from .writer import missing_on


class Failed(Exception):
    pass


class Result:
    def __init__(self, name):
        self.name = name
        self.acked = 0
        self.lost = 0
        self.pause_ms = 0
        self.bound = 0
        self.failures = []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
            say(f"FAIL: {msg}")
        return cond

    def require(self, cond, msg):
        if not self.check(cond, msg):
            raise Failed(msg)

    def line(self):
        result = "pass" if not self.failures else "fail"
        return (f"scenario={self.name} result={result} acked={self.acked} lost={self.lost} "
                f"longest_pause_ms={self.pause_ms} bound={self.bound}")


def wait_for(fn, secs, interval=0.1):
    deadline = time.monotonic() + secs
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


def replica_state(env, g):
    info = rinfo(env.ip(g), "replication")
    if info is None:
        return None
    return {
        "role": info.get("role"),
        "master_host": info.get("master_host"),
        "link": info.get("master_link_status"),
        "sync": info.get("master_sync_in_progress"),
        "offset": int(info.get("slave_repl_offset", info.get("master_repl_offset", "-1"))),
        "master_repl_offset": int(info.get("master_repl_offset", "-1")),
        "connected_slaves": int(info.get("connected_slaves", "0")),
        "replid": info.get("master_replid"),
    }


def linked_to(env, g, master):
    """g replicates from master, its link is up and it has reached the offset master had just
    before (asked first: under a running writer, a master asked second is always ahead)."""
    m = replica_state(env, master)
    s = replica_state(env, g)
    return bool(s and m and s["role"] == "slave" and s["master_host"] == env.ip(master) and s["link"] == "up"
                and s["sync"] == "0" and s["offset"] >= m["master_repl_offset"])


def config_get(env, g, pattern):
    try:
        r = rcall(env.ip(g), "CONFIG", "GET", pattern)
    except (OSError, ReplyError) as e:
        return f"(CONFIG GET failed: {e})"
    return {k.decode(): v.decode() for k, v in zip(r[::2], r[1::2])}


def stats(env, g):
    info = rinfo(env.ip(g), "stats")
    if not info:
        return {}
    return {k: int(info.get(k, "0")) for k in ("sync_full", "sync_partial_ok", "sync_partial_err")}


def create(env, res, master, replicas, timeout=120):
    c = env.ctl("create-replicas", "--replica-of", env.gid(master), *[env.gid(r) for r in replicas], timeout=timeout)
    say(f"create-replicas {master} <- {','.join(replicas)}: rc={c.rc} in {c.ms} ms")
    res.require(c.rc == 0, "create-replicas failed: " + c.describe())
    return c


def promote(env, g, note=""):
    """promote-to-replica-source g; returns the command and its JSON report, and says how it went."""
    c = env.ctl("promote-to-replica-source", env.gid(g))
    rep = c.json() or {}
    say(f"promote-to-replica-source {g}{note}: rc={c.rc} in {c.ms} ms, writes_blocked_ms={rep.get('writes_blocked_ms')}, "
        f"total_ms={rep.get('total_ms')}")
    return c, rep


def verify_writes(env, res, pairs, nodes, secs=15, label="acknowledged writes"):
    """Waits until every pair is on every node; sets res.acked/res.lost (bound 0); returns the missing map."""
    missing = {}

    def all_there():
        missing.clear()
        for g in nodes:
            m = missing_on(env.ip(g), pairs)
            if m is None:
                missing[g] = list(pairs)
            elif m:
                missing[g] = m
        return not missing

    wait_for(all_there, secs, interval=0.5)
    lost = set()
    for g, m in missing.items():
        lost.update(k for k, _ in m)
        say(f"{g} lacks {len(m)} of the {len(pairs)} {label} (first: {[k for k, _ in m[:5]]})")
    res.acked = len(pairs)
    res.lost = len(lost)
    res.bound = 0
    say(f"{label}: {len(pairs)} checked on {','.join(nodes)}, {len(lost)} missing (bound 0)")
    res.check(not lost, f"{len(lost)} {label} are missing after {secs}s")
    return missing


class Window:
    """A stated loss window: writes `host` acknowledged between `start` and `end` (monotonic
    times) may be lost, for the reason `why`. Anything lost outside every window fails."""

    def __init__(self, host, start, end, why):
        self.host, self.start, self.end, self.why = host, start, end, why

    def holds(self, host, t):
        return (self.host is None or host == self.host) and self.start <= t <= self.end


def check_losses(env, res, records, final, others=(), windows=(), secs=15, label="acknowledged writes"):
    """Counts the acknowledged writes (key, value, host, time) missing on the final master `final`.

    Each missing write must lie in a stated Window; the bound is how many acknowledged writes
    lay in the windows (what could have been lost). Writes the final master holds must reach
    every node in `others` within `secs`. Sets res.acked, res.lost, res.bound; returns the lost records."""
    pairs = [(k, v) for k, v, _, _ in records]
    missing = missing_on(env.ip(final), pairs)
    if not res.check(missing is not None, f"cannot read the final master {final} to count losses"):
        return []
    gone = {k for k, _ in missing}
    lost = [r for r in records if r[0] in gone]
    bounded = [r for r in records if any(w.holds(r[2], r[3]) for w in windows)]
    outside = [r for r in lost if not any(w.holds(r[2], r[3]) for w in windows)]
    res.acked += len(records)
    res.lost += len(lost)
    res.bound += len(bounded)
    for w in windows:
        inw = [r for r in records if w.holds(r[2], r[3])]
        lw = [r for r in lost if w.holds(r[2], r[3])]
        span = (max(r[3] for r in lw) - min(r[3] for r in lw)) * 1000 if lw else 0
        before = (w.end - min(r[3] for r in lw)) * 1000 if lw else 0
        stated = f"{(w.end - w.start) * 1000:.0f} ms" if w.start > float("-inf") else "from the start"
        say(f"loss window [{w.why}] on {w.host or 'any node'}: {stated} stated, {len(inw)} writes acked in it, "
            f"{len(lw)} lost (spanning {span:.0f} ms, the first {before:.0f} ms before the window's end)")
    say(f"{label}: {len(records)} checked on the final master {final}: {len(lost)} lost, bound {len(bounded)}, "
        f"{len(outside)} lost outside the stated windows")
    res.check(not outside, f"{len(outside)} {label} lost outside the stated windows "
              f"(first: {[(k, h, round(t - T0, 3)) for k, _, h, t in outside[:5]]})")
    kept = [(k, v) for k, v, _, _ in records if k not in gone]
    for g in others:
        m = wait_for(lambda: missing_on(env.ip(g), kept) == [], secs, interval=0.5)
        if not m:
            left = missing_on(env.ip(g), kept)
            res.check(False, f"{g} lacks {'all (unreadable)' if left is None else len(left)} of the {len(kept)} writes "
                      f"the final master {final} holds after {secs}s")
    return lost


def check_writer(res, w, minimum, label=None):
    """Every writer must have made writes: at least `minimum` acknowledged."""
    n = len(w.acked)
    return res.check(n >= minimum, f"{label or 'writer ' + w.prefix} made too few acknowledged writes ({n} < {minimum})")


def show_table(env):
    c = env.ctl("show", timeout=30)
    for line in c.out.rstrip().splitlines():
        say("  " + line)


def caught_up(env, g, master, slack=65536):
    """g replicates from master with its link up, within `slack` bytes of master's offset (a
    writer may be running, so exact equality is a race)."""
    s, m = replica_state(env, g), replica_state(env, master)
    return bool(s and m and s["role"] == "slave" and s["master_host"] == env.ip(master) and s["link"] == "up"
                and s["sync"] == "0" and s["offset"] >= m["master_repl_offset"] - slack)


# kill -9 or a cut of a master: Redis acknowledges a write before its replicas have it, so the
# writes the master acknowledged just before it died may be missing on the promoted replica.
# Stated bound: only writes the dead master acknowledged in the last REPL_TAIL_S before the fault.
REPL_TAIL_S = 1.0


def tail_window(host, t_before, t_after, what):
    """The loss window of a master killed or cut between t_before and t_after."""
    return Window(host, t_before - REPL_TAIL_S, t_after, f"{what}: writes acked by the old master in the last "
                  f"{REPL_TAIL_S:.0f} s before the fault, not yet replicated")


# Redis counts a replica good while its last REPLCONF ACK (sent every second) is at most
# min-replicas-max-lag seconds old, and re-counts once a second: the cut-off master stops
# acknowledging within max_lag + 3 s of the cut (ack period, re-count period, reporting delay).
FENCE_SLACK_S = 3.0
# How long the refusals must have gone on before the master is reconnected.
REFUSING_S = 1.5


def wait_fenced(env, inside, t_cut):
    """Waits while a master is cut off (at t_cut) with a ContainerWriter `inside` it: until Redis
    has refused its writes with NOREPLICAS for REFUSING_S (fence on), or for the fence's window
    (fence off)."""
    limit = env.max_lag + FENCE_SLACK_S + 10
    if env.min_replicas > 0:
        def refusing():
            r = [t for _, t in inside.refused if t > t_cut]
            return r and time.monotonic() - r[0] >= REFUSING_S
        wait_for(refusing, max(0.0, t_cut + limit - time.monotonic()), interval=0.1)
    else:
        wait_for(lambda: time.monotonic() - t_cut >= env.max_lag + FENCE_SLACK_S, limit, interval=0.1)


def check_fence(env, res, inside, g, t_cut, t_back):
    """The master g was cut off at t_cut and reconnected at t_back, the ContainerWriter `inside` it
    writing throughout. Lets it make 20 more writes, stops it, and checks the split-brain fence:
    with it, g acknowledged nothing later than min-replicas-max-lag + FENCE_SLACK_S after the cut,
    Redis refused writes with NOREPLICAS during the cut and after the reconnect, and g acknowledged
    none after it; without it, g acknowledged writes in the cut (so the check saw it)."""
    cut_acked = [t - t_cut for _, t in inside.acked if t_cut < t <= t_back]
    cut_refused = [t - t_cut for _, t in inside.refused if t_cut < t <= t_back]
    say(f"writes on {g} during the cut (from inside its container): acknowledged {len(cut_acked)}"
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
    say(f"writes on {g} after the reconnect: acknowledged {len(back_acked)}, refused with NOREPLICAS {len(back_refused)}; "
        f"{config_get(env, g, 'min-replicas-*')}")
    if env.min_replicas > 0:
        res.check(cut_refused, f"split-brain fence: Redis on the cut-off master {g} never refused a write with NOREPLICAS "
                  "during the cut (connection errors do not count)")
        res.check(not cut_acked or cut_acked[-1] <= env.max_lag + FENCE_SLACK_S,
                  f"the cut-off master {g} acknowledged writes {cut_acked[-1] if cut_acked else 0:.1f}s after the cut, "
                  f"past min-replicas-max-lag ({env.max_lag}s) + {FENCE_SLACK_S}s")
        res.check(not back_acked and back_refused, f"split brain: after the reconnect the old master {g} acknowledged "
                  f"{len(back_acked)} writes and refused {len(back_refused)} with NOREPLICAS")
    else:
        res.check(cut_acked, f"without the fence the cut-off master {g} should have acknowledged writes during the cut")
    return cut_acked, cut_refused


def cut_windows(env, host, t_before, t_cut, t_attached):
    """The loss windows of a master at `host` cut off between t_before and t_cut and re-attached at
    t_attached: its unreplicated tail; then, with the fence, what it acknowledged within
    min-replicas-max-lag (+ slack) of the cut; without it, everything until it was re-attached."""
    windows = [tail_window(host, t_before, t_cut, "network cut of the master")]
    if env.min_replicas > 0:
        windows.append(Window(host, t_cut, t_cut + env.max_lag + FENCE_SLACK_S,
                              f"cut off, fenced by min-replicas-to-write after min-replicas-max-lag={env.max_lag}s"))
    else:
        windows.append(Window(host, t_cut, t_attached, "cut off without the fence: every write until re-attached"))
    return windows
