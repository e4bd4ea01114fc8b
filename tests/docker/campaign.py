#!/usr/bin/env python3
"""A randomized fault campaign on the compose topology: random faults and flows under one writer,
with the topology, the inventory and every acknowledged write checked after every step.

    campaign.py [--seed S] [--steps N]        (environment: as run_scenario.py; scripts/docker-tests.sh campaign)

The seed is printed first; the same seed replays the same choices. Faults: kill -9 of a
redis-server, of an agent, of a whole container (then started again); a node cut off the network
and reconnected; a broker restart; SIGSTOP of the master's redis-server for longer than
repl-timeout. Flows: eject when the master is dead (a killed or cut-off master), create
(re-attaching the old master, or a detached replica), promote and detach. One writer writes to
the master the inventory names (as a client told where the master is) throughout; a cut-off
master also has a writer inside its container (it still reaches its own Redis in the cut), so the
split-brain fence is exercised: what it acknowledges in the cut is bounded, and Redis must refuse
its writes with NOREPLICAS.

Every fault falls between acknowledged writes: the master takes writes in the PRE_S before it,
and the master after it (the new one, after a failover) within POST_S of its recovery.

After every step: every live node converges on the inventory's one master (replicas linked and
caught up), the master takes a write (no node stays fenced), the inventory agrees with the live
roles, and every acknowledged write is on the master unless it lies in a loss window stated by a
fault (printed with its measured figures). Ends with the summary line of a scenario,
`scenario=campaign result=... acked=... lost=... longest_pause_ms=... bound=...`.
"""

import argparse
import os
import random
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultlib.base import GUESTS, REDIS_CONF, say  # noqa: E402
from faultlib.checks import (Failed, Result, caught_up, check_fence, check_losses, check_writer, cut_windows,  # noqa: E402
                             replica_state, tail_window, wait_fenced, wait_for)
from faultlib.env import Env, kill_agent, set_net  # noqa: E402
from faultlib.resp import ReplyError, rcall, rinfo  # noqa: E402
from faultlib.writer import ContainerWriter, Writer, missing_on  # noqa: E402

REPL_TIMEOUT = 5
# repl-timeout lowered so that a SIGSTOP longer than it fits in a step.
CAMPAIGN_CONF = REDIS_CONF + f"repl-timeout {REPL_TIMEOUT}\n"
SETTLE_S = 60
# Writes around each fault: at least PRE_MIN acknowledged by the master in the PRE_S before it, and
# POST_MIN by the master after it within POST_S of the fault's recovery (its flows done).
PRE_S, PRE_MIN = 2.0, 20
POST_S, POST_MIN = 10.0, 50


class Campaign:
    def __init__(self, env, res, rng):
        self.env, self.res, self.rng = env, res, rng
        self.master = "guest1"
        self.replicas = ["guest2", "guest3"]
        self.windows = []
        self.faults = Counter()
        self.flows = Counter()
        self.writer = Writer(lambda: [self.env.ip(self.master)], "camp")
        self.inside = []  # the writers that ran inside a cut-off master

    # --- helpers
    def ip(self, g):
        return self.env.ip(g)

    def ctl_ok(self, what, *args, timeout=120):
        c = self.env.ctl(*args, timeout=timeout)
        say(f"  {what}: rc={c.rc} in {c.ms} ms")
        self.res.require(c.rc == 0, f"{what} failed: " + c.describe())
        return c

    def create(self, g):
        self.ctl_ok(f"create-replicas {self.master} <- {g}", "create-replicas", "--replica-of", self.env.gid(self.master), self.env.gid(g))
        self.replicas.append(g)
        self.flows["create"] += 1

    def eject(self, dead):
        c = self.env.ctl("eject-replica-source", self.env.gid(dead), timeout=120)
        if c.rc == 3 and "alive" in c.err:
            say("  eject refused (the old master still answered); retrying with --force")
            c = self.env.ctl("eject-replica-source", self.env.gid(dead), "--force", timeout=120)
        rep = c.json() or {}
        say(f"  eject-replica-source {dead}: rc={c.rc} in {c.ms} ms, new_master={rep.get('new_master')}")
        self.res.require(c.rc == 0, "eject failed: " + c.describe())
        new = next((g for g in GUESTS if self.env.gid(g) == rep.get("new_master")), None)
        self.res.require(new in self.replicas, f"eject chose {rep.get('new_master')}, not one of the replicas {self.replicas}")
        self.master = new
        self.replicas = [g for g in self.replicas if g != new]
        self.flows["eject"] += 1

    def redis_pid(self, g):
        pid = (rinfo(self.ip(g), "server") or {}).get("process_id")
        self.res.require(pid, f"cannot read {g}'s redis-server pid")
        return pid

    def wait_agent(self, g, secs=60):
        self.res.require(self.env.wait_ping(g, secs), f"{g}'s agent does not answer rpc_ping within {secs}s")

    # --- faults (each leaves one master and two replicas, possibly through a flow)
    def f_kill9_redis(self, g):
        """kill -9 of g's redis-server. A replica's agent starts it again at once. A master's agent
        holds the restart back (its snapshot lacks what the replicas have): it is ejected, then
        re-attached, and its server starts again as a replica."""
        if g == self.master:
            pid = self.redis_pid(g)
            t_before = time.monotonic()
            self.env.exec(g, "sh", "-c", f"kill -9 {pid}")
            t_kill = time.monotonic()
            self.windows.append(tail_window(self.ip(g), t_before, t_kill, "kill -9 of the master's redis-server"))
            self.eject(g)
            self.create(g)
        else:
            self.env.exec(g, "sh", "-c", f"kill -9 {self.redis_pid(g)}")

    def f_kill_agent(self, g):
        """kill -9 of g's agent; the container's loop starts a new one."""
        kill_agent(self.env, g)
        time.sleep(0.5)
        self.wait_agent(g)

    def f_kill_container(self, g):
        """docker kill of g's container, then docker start; a dead master is ejected first, then re-attached."""
        t_before = time.monotonic()
        self.env.docker("kill", self.env.cid(g))
        t_kill = time.monotonic()
        if g == self.master:
            self.windows.append(tail_window(self.ip(g), t_before, t_kill, "docker kill of the master"))
            self.eject(g)
        self.env.docker("start", self.env.cid(g))
        self.wait_agent(g)
        if g not in self.replicas:
            self.create(g)

    def f_cut(self, g):
        """g is cut off the network and reconnected; a cut-off master, written to from inside its
        container all along, is ejected, fenced (NOREPLICAS), then re-attached."""
        inside = None
        if g == self.master:
            inside = ContainerWriter(self.env, g, f"campin{len(self.inside) + 1}")
            self.inside.append(inside)
            inside.start()
            self.res.require(wait_for(lambda: len(inside.acked) >= 5, 15),
                             f"the writer inside {g} made no writes before the cut: {inside.summary()}")
        t_before = time.monotonic()
        set_net(self.env, g, False)
        t_cut = time.monotonic()
        if inside:
            self.eject(g)
            wait_fenced(self.env, inside, t_cut)
        else:
            time.sleep(self.rng.uniform(2.0, 6.0))
        set_net(self.env, g, True)
        t_back = time.monotonic()
        say(f"  reconnected {g} {t_back - t_cut:.1f}s after the cut")
        if inside:
            check_fence(self.env, self.res, inside, g, t_cut, t_back)
        self.wait_agent(g)
        if g not in self.replicas:
            self.create(g)
        if inside:
            self.windows += cut_windows(self.env, self.ip(g), t_before, t_cut, time.monotonic())

    def f_broker_restart(self, g=None):
        """docker restart of RabbitMQ; every agent answers again."""
        self.env.docker("restart", "-t", "10", self.env.cid("rabbitmq"), timeout=120)
        self.res.require(self.env.wait_broker(90), "the broker did not come back")
        for h in GUESTS:
            self.wait_agent(h)

    def f_sigstop_master(self, g=None):
        """SIGSTOP of the master's redis-server for longer than repl-timeout, then SIGCONT."""
        g = self.master
        pid = self.redis_pid(g)
        self.env.exec(g, "sh", "-c", f"kill -STOP {pid}")
        try:
            time.sleep(REPL_TIMEOUT + 2)
        finally:
            self.env.exec(g, "sh", "-c", f"kill -CONT {pid}")

    FAULTS = {
        "kill9_redis": (f_kill9_redis, 3),
        "kill_agent": (f_kill_agent, 2),
        "kill_container": (f_kill_container, 3),
        "cut": (f_cut, 3),
        "broker_restart": (f_broker_restart, 1),
        "sigstop_master": (f_sigstop_master, 1),
    }

    # --- flows on a healthy topology
    def flow_promote(self):
        g = self.rng.choice(self.replicas)
        c = self.env.ctl("promote-to-replica-source", self.env.gid(g))
        say(f"  promote-to-replica-source {g}: rc={c.rc} in {c.ms} ms")
        self.res.require(c.rc == 0, "promote failed: " + c.describe())
        self.replicas = [h for h in self.replicas if h != g] + [self.master]
        self.master = g
        self.flows["promote"] += 1

    def flow_detach(self):
        g = self.rng.choice(self.replicas)
        self.ctl_ok(f"detach-replica {g}", "detach-replica", self.env.gid(g))
        self.replicas.remove(g)
        self.flows["detach"] += 1
        self.create(g)

    # --- the checks after every step
    def settle(self, step):
        env, res, m = self.env, self.res, self.master

        def converged():
            st = replica_state(env, m)
            return st and st["role"] == "master" and all(caught_up(env, r, m) for r in self.replicas)

        t = time.monotonic()
        ok = wait_for(converged, SETTLE_S, interval=0.2)
        res.require(ok, f"step {step}: the nodes did not converge on {m} within {SETTLE_S}s: "
                    f"{ {g: replica_state(env, g) for g in GUESTS} }")
        roles = {g: (replica_state(env, g) or {}).get("role") for g in GUESTS}
        res.require([g for g, r in roles.items() if r == "master"] == [m], f"step {step}: more than one master: {roles}")

        def takes_writes():
            try:
                return rcall(self.ip(m), "SET", f"campprobe:{step}", step, timeout=2.0) == "OK"
            except (OSError, ReplyError):
                return False

        res.require(wait_for(takes_writes, 30, interval=0.5), f"step {step}: the master {m} still refuses writes (fenced) 30 s after the step")
        inv = env.inventory_replica_of()
        want = {env.gid(m): None, **{env.gid(r): env.gid(m) for r in self.replicas}}
        res.require(inv == want, f"step {step}: the inventory {inv} does not match the live topology {want}")
        records = self.records()
        missing = missing_on(self.ip(m), [(k, v) for k, v, _, _ in records])
        res.require(missing is not None, f"step {step}: cannot read the master {m}")
        gone = {k for k, _ in missing}
        lost = [r for r in records if r[0] in gone]
        outside = [r for r in lost if not any(w.holds(r[2], r[3]) for w in self.windows)]
        say(f"  converged on {m} (replicas {','.join(self.replicas)}) {time.monotonic() - t:.1f}s after the step; "
            f"writes so far {len(records)}, missing on the master {len(lost)}, outside the stated windows {len(outside)}")
        res.require(not outside, f"step {step}: {len(outside)} acknowledged writes lost outside the stated windows "
                    f"(first: {[(k, h) for k, _, h, _ in outside[:5]]})")

    def records(self):
        """Every acknowledged write, of the writer and of the writers inside cut-off masters."""
        return self.writer.records() + [r for w in self.inside for r in w.records()]

    def acked_by(self, g, start, end):
        return len(self.writer.acked_by(self.ip(g), start, end))

    def run(self, steps):
        self.ctl_ok("create-replicas guest1 <- guest2,guest3", "create-replicas", "--replica-of", self.env.gid("guest1"),
                    self.env.gid("guest2"), self.env.gid("guest3"))
        self.replicas = ["guest2", "guest3"]
        self.writer.start()
        self.settle(0)
        names = list(self.FAULTS)
        weights = [self.FAULTS[n][1] for n in names]
        try:
            for step in range(1, steps + 1):
                name = self.rng.choices(names, weights)[0]
                g = self.rng.choice(GUESTS)
                role = "master" if g == self.master else "replica"
                # The fault comes once the master has been acknowledging for PRE_S (or 10 s later, and fails).
                m = self.master
                wait_for(lambda: self.acked_by(m, time.monotonic() - PRE_S, time.monotonic()) >= PRE_MIN, PRE_S + 10,
                         interval=0.05)
                n0 = len(self.writer.acked)
                t = time.monotonic()
                before = self.acked_by(self.master, t - PRE_S, t)
                say(f"step {step}/{steps}: {before} writes acknowledged by the master {self.master} in the {PRE_S:.0f} s before the fault")
                self.res.check(before >= PRE_MIN, f"step {step}: the master {self.master} acknowledged only {before} writes "
                               f"in the {PRE_S:.0f} s before the fault (at least {PRE_MIN})")
                say(f"step {step}/{steps}: {name}" + ("" if name in ("broker_restart", "sigstop_master") else f" {g} ({role})")
                    + f" [{self.FAULTS[name][0].__doc__}]")
                self.faults[name + ("" if name in ("broker_restart", "sigstop_master") else f":{role}")] += 1
                self.FAULTS[name][0](self, g)
                t_rec = time.monotonic()
                m = self.master
                wait_for(lambda: self.acked_by(m, t_rec, t_rec + POST_S) >= POST_MIN, POST_S, interval=0.05)
                after = self.acked_by(m, t_rec, t_rec + POST_S)
                first = next((t1 for _, h, t1 in self.writer.acked if h == self.ip(m) and t1 > t), None)
                say(f"step {step}/{steps}: the master {m} acknowledged {after} writes within {POST_S:.0f} s of the fault's "
                    f"recovery ({t_rec - t:.1f} s after the fault); its first after the fault {(first - t) if first else -1:.2f} s "
                    "after it")
                self.res.check(after >= POST_MIN, f"step {step}: the master {m} acknowledged only {after} writes within "
                               f"{POST_S:.0f} s of the fault's recovery (at least {POST_MIN})")
                self.settle(f"{step}a")
                if self.rng.random() < 0.4:
                    flow = self.rng.choice([self.flow_promote, self.flow_detach])
                    say(f"step {step}/{steps}: flow {flow.__name__[5:]}")
                    flow()
                    self.settle(f"{step}b")
                made = len(self.writer.acked) - n0
                say(f"step {step}/{steps} done in {time.monotonic() - t:.1f}s; {made} writes acknowledged during it")
        finally:
            self.writer.stop()
        say(self.writer.summary())
        self.res.pause_ms = int(self.writer.longest * 1000)
        check_writer(self.res, self.writer, POST_MIN * (steps + 1))
        check_losses(self.env, self.res, self.records(), self.master, self.replicas, self.windows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    ap.add_argument("--steps", type=int, default=4, help="number of fault steps (default 4)")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    print(f"campaign seed={seed} steps={a.steps}", flush=True)
    rng = random.Random(seed)
    res = Result("campaign")
    env = Env("campaign")
    camp = None
    try:
        t = time.monotonic()
        env.fresh_guests()
        env.write_inventory()
        env.prepare_all(CAMPAIGN_CONF)
        say(f"fresh guests {env.tag}-guest1..3 prepared in {time.monotonic() - t:.1f}s")
        camp = Campaign(env, res, rng)
        camp.run(a.steps)
    except Failed:
        pass
    except Exception as e:  # noqa: BLE001 - any error fails the campaign, loudly
        res.failures.append(f"{type(e).__name__}: {e}")
        say(f"FAIL: {type(e).__name__}: {e}")
    if camp is not None:
        for w in [camp.writer] + camp.inside:
            if w.is_alive():
                try:
                    w.stop()
                except RuntimeError as e:
                    res.failures.append(str(e))
        say(f"campaign seed={seed}: steps={a.steps} faults={dict(camp.faults)} flows={dict(camp.flows)} "
            f"writes={len(camp.writer.acked)} inside_cut_masters={sum(len(w.acked) for w in camp.inside)} "
            f"refused_noreplicas={sum(len(w.refused) for w in camp.inside)} lost={res.lost} bound={res.bound} windows={len(camp.windows)}")
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
