"""trove-guestctl watch (the compose service, plus a second watcher on the host) fails over a docker-killed master while redis-py's Sentinel client keeps writing; the old master returns as a replica; then the new master is cut off the network (partition), failed over, fenced and re-attached."""

import os
import time

from faultlib.base import PASSWORD, say
from faultlib.checks import (Window, caught_up, check_losses, config_get, create, linked_to, replica_state, tail_window,
                             wait_for)
from faultlib.env import set_net
from faultlib.watchers import NAME, add_watch_settings, free_port, guest_at, watch_compose, watch_container
from faultlib.writer import ContainerWriter
from faultlib.resp import ReplyError, rcall
from sentinel_writer import SentinelWriter  # tests/pylib, on the path through faultlib.resp

try:  # redis-py from the project's venv: scripts/docker-tests.sh runs this scenario with it
    import redis
    from redis.sentinel import Sentinel
except ImportError as e:  # pragma: no cover - docker-tests.sh checks first and says how to fix it
    raise SystemExit(f"this scenario needs redis-py (scripts/pyenv.sh makes .venv with it): {e}")

# scripts/docker-tests.sh runs this scenario with the project's venv python (redis-py).
REQUIRES_REDIS_PY = True

DOWN_AFTER_MS = 1000
MIN_WRITES = 300
MIN_WRITES_NEW_MASTER = 50
# A cut-off master stops acknowledging within min-replicas-max-lag + this (see master_cut_off).
FENCE_SLACK_S = 3.0


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    watch_ip = f"{env.prefix}.20"
    host_port = free_port()
    add_watch_settings(env, [f"{watch_ip}:26379", f"127.0.0.1:{host_port}"])
    watch_compose(env, "up", "-d", "--no-build", "--no-deps", "--force-recreate", "watch", down_after_ms=DOWN_AFTER_MS)
    wcid = watch_container(env)
    try:
        scenario(env, res, wcid, watch_ip, host_port)
    finally:
        logs = env.docker("logs", "--timestamps", wcid, check=False, timeout=30)
        with open(os.path.join(env.workdir, "watch.log"), "w") as f:
            f.write(logs.stdout + logs.stderr)
        env.docker("rm", "-f", wcid, check=False)


def scenario(env, res, wcid, watch_ip, host_port):
    def wlog():
        p = env.docker("logs", wcid, check=False, timeout=30)
        return p.stdout + p.stderr

    res.require(wait_for(lambda: "holds the lease" in wlog(), 30),
                "the watch container did not take the lease within 30 s:\n" + wlog()[-2000:])
    say(f"watch service up at {watch_ip}:26379 (down_after {DOWN_AFTER_MS} ms) and holds the lease")
    # The second watcher, on the host: serves discovery, takes the lease only if the first goes.
    _, _, _, err2 = env.ctl_background("watch", "--listen", f"127.0.0.1:{host_port}", "--down-after-ms", str(DOWN_AFTER_MS))

    sentinel = Sentinel([(watch_ip, 26379), ("127.0.0.1", host_port)], socket_timeout=0.5, socket_connect_timeout=0.5)
    m_addr = (env.ip("guest1"), 6379)
    got = wait_for(lambda: _discover(sentinel) == m_addr, 20, interval=0.2)
    res.require(got, f"discovery does not name guest1 as master: {_discover(sentinel)}")
    reps = sorted(sentinel.discover_slaves(NAME))
    res.check(reps == sorted([(env.ip("guest2"), 6379), (env.ip("guest3"), 6379)]), f"discovery's replicas: {reps}")
    other = Sentinel([("127.0.0.1", host_port)], socket_timeout=0.5)
    res.require(wait_for(lambda: _discover(other) == m_addr, 20, interval=0.2),
                f"the host watcher does not name guest1: {_discover(other)}")
    say("both watchers name guest1 as master and guest2, guest3 as replicas")

    master = sentinel.master_for(NAME, password=PASSWORD, socket_timeout=0.5, socket_connect_timeout=0.5)
    w = SentinelWriter(master, f"ws{env.tag[-4:]}")
    w.start()
    res.require(wait_for(lambda: len(w.acked) > MIN_WRITES, 20), f"the redis-py writer made only {len(w.acked)} writes")
    # The replicas must be linked and current before the kill.
    res.require(wait_for(lambda: all(caught_up(env, g, "guest1") for g in ("guest2", "guest3")), 10),
                "the replicas are not linked and current before the kill")
    n_before = len(w.acked)
    t_before = time.monotonic()
    env.docker("kill", env.cid("guest1"))
    t_kill = time.monotonic()
    say(f"docker kill of guest1 (agent and Redis) after {n_before} writes acknowledged through redis-py Sentinel")

    new_addr = wait_for(lambda: (lambda a: a if a and a != m_addr else None)(_discover(sentinel)), 30, interval=0.05)
    t_disc = time.monotonic()
    res.require(new_addr, "discovery still names the dead master 30 s after the kill:\n" + wlog()[-3000:])
    new = guest_at(env, new_addr)
    res.require(new in ("guest2", "guest3"), f"discovery names {new_addr}, not a replica")
    third = "guest3" if new == "guest2" else "guest2"
    res.require(wait_for(lambda: any(s > t_kill for _, s, _ in w.acked), 30), "no write acknowledged within 30 s of the kill")
    first = next(t for _, s, t in w.acked if s > t_kill)
    say(f"discovery named {new} {int((t_disc - t_kill) * 1000)} ms after the kill; "
        f"kill -> first write acknowledged through redis-py Sentinel: {int((first - t_kill) * 1000)} ms")
    res.pause_ms = int((first - t_kill) * 1000)
    res.check(wait_for(lambda: linked_to(env, third, new), 20), f"{third} does not follow {new}: {replica_state(env, third)}")
    time.sleep(1.0)

    # The old master's container comes back (its redis.conf still says master): it must become a
    # replica of the new master, never a second writable master. Probe writes straight at it.
    env.docker("start", env.cid("guest1"))
    t_start = time.monotonic()
    probes = {"ok": 0, "refused": {}, "unreachable": 0}
    linked = became = None
    deadline = t_start + 60
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            rcall(env.ip("guest1"), "SET", f"probe:{env.tag}:{i}", i, timeout=0.5)
            probes["ok"] += 1
            say(f"FAIL: the returned old master acknowledged a direct write ({replica_state(env, 'guest1')})")
        except ReplyError as e:
            k = str(e).split(" ")[0]
            probes["refused"][k] = probes["refused"].get(k, 0) + 1
        except OSError:
            probes["unreachable"] += 1
        st = replica_state(env, "guest1")
        if st and became is None and st["role"] == "slave" and st["master_host"] == env.ip(new):
            became = time.monotonic()
        if linked_to(env, "guest1", new):
            linked = time.monotonic()
            break
        time.sleep(0.05)
    say(f"old master restarted: a replica of {new} after {'%d ms' % ((became - t_start) * 1000) if became else '-'}, "
        f"linked {'after %d ms' % ((linked - t_start) * 1000) if linked else 'NOT within 60 s'}; "
        f"direct write probes: {probes}")
    res.check(linked is not None, f"the old master does not follow {new} 60 s after its restart: {replica_state(env, 'guest1')}")
    res.check(probes["ok"] == 0, f"the old master acknowledged {probes['ok']} direct writes after its restart")
    time.sleep(0.5)
    w.stop()
    after_first = [t for _, _, t in w.acked if t >= first]
    say(f"redis-py writer: {len(w.acked)} acknowledged, {len(after_first)} after the failover, errors {w.errors}")
    res.check(len(after_first) >= MIN_WRITES_NEW_MASTER, f"too few writes after the failover ({len(after_first)})")
    # Final master: the one discovery names now, and the only master among the three.
    final = guest_at(env, _discover(sentinel))
    roles = {g: (replica_state(env, g) or {}).get("role") for g in ("guest1", "guest2", "guest3")}
    res.check(final == new and [g for g, r in roles.items() if r == "master"] == [new],
              f"expected {new} as the one master, discovery says {final}, roles {roles}")
    # Asynchronous replication: only what guest1 acknowledged in its last second may be missing.
    check_losses(env, res, w.records(), new, [third, "guest1"],
                 [tail_window(None, t_before, t_kill, "docker kill of the master")], secs=20)
    log = wlog()
    res.check("decision: master is down" in log, "the watch container logged no failover decision")
    res.check("re-attached" in log, "the watch container did not log re-attaching the old master")
    with open(err2) as f:
        host_log = f.read()
    res.check("decision:" not in host_log, "the second watcher acted without the lease:\n" + host_log[-2000:])
    partition(env, res, sentinel, new, wlog)


def partition(env, res, sentinel, m, wlog):
    """The master m is cut off from everyone (network disconnect: clients, replicas, broker).
    A writer inside its container measures how long it keeps acknowledging; redis-py's Sentinel
    client on the host follows the failover; after healing, m must follow the new master."""
    others = [g for g in ("guest1", "guest2", "guest3") if g != m]
    fence = env.min_replicas
    if fence > 0:
        armed = wait_for(lambda: config_get(env, m, "min-replicas-to-write") == {"min-replicas-to-write": str(fence)}, 15)
        res.check(armed, f"the split-brain fence is not armed on {m}: {config_get(env, m, 'min-replicas-*')}")
    for g in others:
        res.require(wait_for(lambda: caught_up(env, g, m), 30), f"{g} is not linked to {m} before the cut: {replica_state(env, g)}")
    master = sentinel.master_for(NAME, password=PASSWORD, socket_timeout=0.5, socket_connect_timeout=0.5)
    w = SentinelWriter(master, f"wp{env.tag[-4:]}")
    w.start()
    inside = ContainerWriter(env, m, f"wpin{env.tag[-4:]}")
    inside.start()
    res.require(wait_for(lambda: len(inside.acked) >= 5 and len(w.acked) >= 100, 15),
                f"writers not going before the cut: {inside.summary()}, redis-py {len(w.acked)}")
    decisions0 = wlog().count("decision: master is down")
    t_before = time.monotonic()
    set_net(env, m, False)
    t_cut = time.monotonic()
    say(f"partition: {m} cut off the network (clients, replicas and its agent's broker link)")
    m_addr = (env.ip(m), 6379)
    new_addr = wait_for(lambda: (lambda a: a if a and a != m_addr else None)(_discover(sentinel)), 45, interval=0.1)
    t_disc = time.monotonic()
    res.require(new_addr, f"discovery still names {m} 45 s after the cut:\n" + wlog()[-3000:])
    new = guest_at(env, new_addr)
    res.require(new in others, f"discovery names {new_addr}")
    res.require(wait_for(lambda: any(s > t_disc for _, s, _ in w.acked), 30), "no write through redis-py after the failover")
    # The host cannot reach m after the cut: a write sent after it and acknowledged went to the new master.
    first = next((t for _, s, t in w.acked if s > t_cut), None)
    if first:
        res.pause_ms = max(res.pause_ms, int((first - t_cut) * 1000))
    if fence > 0:
        wait_for(lambda: [t for _, t in inside.refused if t > t_cut], 10, interval=0.1)
    set_net(env, m, True)
    t_back = time.monotonic()
    cut_acked = [t - t_cut for _, t in inside.acked if t_cut < t <= t_back]
    say(f"partition: discovery named {new} {int((t_disc - t_cut) * 1000)} ms after the cut; first write through redis-py "
        f"after it {int((first - t_cut) * 1000) if first else '-'} ms after the cut; {m} kept acknowledging (inside writer) "
        f"{'%.2f s' % cut_acked[-1] if cut_acked else 'nothing'} after the cut ({len(cut_acked)} writes), "
        f"refused {len([1 for _, t in inside.refused if t_cut < t <= t_back])} with NOREPLICAS; healed after {t_back - t_cut:.1f} s")
    # Healed: m must follow the new master; it must never acknowledge a write again meanwhile.
    became = wait_for(lambda: (lambda st: st and st["role"] == "slave" and st["master_host"] == env.ip(new))(replica_state(env, m)), 60)
    t_became = time.monotonic()
    linked = wait_for(lambda: linked_to(env, m, new), 60)
    say(f"partition healed: {m} a replica of {new} {'%.1f s' % (t_became - t_back) if became else 'NOT within 60 s'} after "
        f"the reconnect, linked {'yes' if linked else 'NO'}")
    res.check(became and linked, f"{m} does not follow {new} after healing: {replica_state(env, m)}")
    time.sleep(0.5)
    inside.stop()
    w.stop()
    say(inside.summary())
    back_acked = [n for n, t in inside.acked if t > t_back]
    if fence > 0:
        res.check(not cut_acked or cut_acked[-1] <= env.max_lag + FENCE_SLACK_S,
                  f"{m} acknowledged writes {cut_acked[-1] if cut_acked else 0:.1f} s after the cut (fence: "
                  f"min-replicas-max-lag {env.max_lag} s + {FENCE_SLACK_S} s)")
        res.check(not back_acked, f"second writable master: {m} acknowledged {len(back_acked)} writes after healing")
    res.check(wlog().count("decision: master is down") > decisions0, "the watch container logged no decision for the partition")
    roles = {g: (replica_state(env, g) or {}).get("role") for g in ("guest1", "guest2", "guest3")}
    res.check([g for g, r in roles.items() if r == "master"] == [new], f"expected {new} as the one master: {roles}")
    windows = [tail_window(None, t_before, t_cut, "partition of the master")]
    if fence > 0:
        windows.append(Window(env.ip(m), t_cut, t_cut + env.max_lag + FENCE_SLACK_S,
                              f"cut off, fenced after min-replicas-max-lag={env.max_lag}s"))
    else:
        windows.append(Window(env.ip(m), t_cut, time.monotonic(), "cut off without the fence: every write until re-attached"))
    lost0 = res.lost
    check_losses(env, res, w.records() + inside.records(), new, [g for g in ("guest1", "guest2", "guest3") if g != new],
                 windows, secs=30)
    say(f"partition: {res.lost - lost0} acknowledged writes lost (all of them acknowledged by the cut-off master)")


def _discover(sentinel):
    try:
        return sentinel.discover_master(NAME)
    except (redis.RedisError, OSError):
        return None
