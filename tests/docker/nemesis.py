#!/usr/bin/env python3
"""A seeded nemesis suite (Jepsen-style) on the compose topology: rounds of one fault each under
two `trove-guestctl watch` watchers, every write recorded in a history file, and a checker that
judges each history with the final state of every node.

    nemesis.py [--seed S] [--rounds N] [--faults a,b,...]    (environment: as run_scenario.py;
                                                               scripts/docker-tests.sh nemesis)
    nemesis.py --check HISTORY.jsonl                         (judge a kept history again)

Each round starts from fresh guests: guest1 the master, guest2 and guest3 its replicas (guest1 and
guest2 only for `two_node`), the compose `watch` service (it holds the lease) and a second watcher
on the host, the agents' split-brain fence on (min_replicas_to_write 1, min_replicas_max_lag 2 s as shipped).
Two writers record every operation (tests/docker/faultlib/history.py): one through redis-py's
Sentinel client pointed at both watchers, one inside the master's container (it reaches the master
while the master is cut off); each acknowledged SET is followed by `WAIT 1 100`. The seeded RNG
orders the faults (every kind once before any repeats) and draws their parameters:

  part_minority      the master cut off from everyone (iptables in its namespace, loopback kept)
  part_majority      the master and one replica cut from the other replica, the broker, the watch
                     container and the host (the host watcher and the redis-py writer)
  asymmetric         the master receives nothing (INPUT dropped) but can send
  sigstop            SIGSTOP of the master's redis-server for longer than down_after, then SIGCONT
  kill_watcher       docker kill of the master; the acting watcher is kill -9'd right after it logs
                     its decision; the other must finish; the old master is started again
  broker_restart     docker restart of RabbitMQ under the writers
  two_node           guest1 + guest2 only; the master cut off, killed or SIGSTOPped
  promote_in_fault   trove-guestctl promote-to-replica-source of a replica while the other replica
                     is cut off, or while the master is cut off (racing the watchers)

After healing, the set must settle: one master, every other node a linked replica of it. The
checker (per round): (1) every write acknowledged AND confirmed by WAIT 1 is on the final master;
(2) other acknowledged writes are lost only inside the stated windows (the last 1 s before a
master's fault: unshipped tail; then, for a master cut off or stopped, until its fence holds:
min_replicas_max_lag + 3 s); (3) no two nodes acknowledge writes at the same time outside those
windows; (4) exactly one writable master at the end, every other node its linked replica, and
both live watchers name it. Histories: target/nemesis/<seed>/round-NN-<fault>.jsonl (with the
round's logs in round-NN-<fault>/). Ends with the scenario summary line
`scenario=nemesis result=... acked=... lost=... longest_pause_ms=... bound=...`.
"""

import argparse
import os
import random
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultlib.base import GUESTS, REDIS_CONF, say  # noqa: E402
from faultlib.checks import REPL_TAIL_S, caught_up, config_get, replica_state, wait_for  # noqa: E402
from faultlib.env import Env, cut, uncut  # noqa: E402
from faultlib.history import History, SentinelWriter, check  # noqa: E402
from faultlib.resp import ReplyError, rcall  # noqa: E402
from faultlib.watchers import NAME, Watchers  # noqa: E402
from faultlib.writer import ContainerWriter, missing_on  # noqa: E402

try:
    import redis
    from redis.sentinel import Sentinel
except ImportError as e:  # pragma: no cover - docker-tests.sh checks first and says how to fix it
    raise SystemExit(f"nemesis.py needs redis-py (scripts/pyenv.sh makes .venv with it): {e}")

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FAULTS = ["part_minority", "part_majority", "asymmetric", "sigstop", "kill_watcher", "broker_restart",
          "two_node", "promote_in_fault"]
DOWN_AFTER_MS = 1000
# A master cut off from its replicas stops acknowledging within min_replicas_max_lag + this
# (replica ack period, Redis's once-a-second re-count, reporting delay; see master_cut_off).
FENCE_SLACK_S = 3.0
SETTLE_S = 60
WAIT_MS = 100
AFTER_SETTLE_S = 2.0


class Round:
    def __init__(self, seed, i, fault, rng, outdir):
        self.seed, self.i, self.fault, self.rng = seed, i, fault, rng
        self.name = f"round-{i:02d}-{fault}"
        self.dir = os.path.join(outdir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(outdir, self.name + ".jsonl")
        self.tag = f"nm{i:02d}{os.urandom(2).hex()}"
        self.env = Env(f"nemesis-{self.name}", tag=self.tag, workdir=self.dir)
        self.nodes = ["guest1", "guest2"] if fault == "two_node" else list(GUESTS)
        self.master = "guest1"
        self.replicas = [g for g in self.nodes if g != "guest1"]
        self.history = None
        self.watchers = None
        self.writers = []
        self.sw = None
        self.params = {}
        self.harness_errors = []

    # --- helpers
    def ip(self, g):
        return self.env.ip(g)

    def name_of(self, ip):
        return next((g for g in GUESTS if self.ip(g) == ip), ip)

    def event(self, what, **kw):
        say(f"  {what} {' '.join(f'{k}={v}' for k, v in kw.items())}")
        return self.history.event(what, **kw)

    def tail_window(self, g, t_before, t_fault, what):
        self.history.window(self.ip(g), t_before - REPL_TAIL_S, t_fault,
                            f"{what}: the last {REPL_TAIL_S:.0f} s before it (unshipped tail)")

    def fence_window(self, g, t_from, t_until, what):
        lag = self.env.max_lag
        self.history.window(self.ip(g), t_from, t_until + lag + FENCE_SLACK_S,
                            f"{what}: until the fence holds (min_replicas_max_lag {lag} s + {FENCE_SLACK_S:.0f} s)")

    def discover(self, addrs):
        try:
            return Sentinel(addrs, socket_timeout=0.5, socket_connect_timeout=0.5).discover_master(NAME)
        except (redis.RedisError, OSError):
            return None

    # --- set-up: a healthy set under two watchers and two writers
    def setup(self):
        env = self.env
        t = time.monotonic()
        env.fresh_guests()
        env.write_inventory()
        env.prepare_all(REDIS_CONF)
        c = env.ctl("create-replicas", "--replica-of", env.gid("guest1"), *[env.gid(g) for g in self.replicas], timeout=120)
        if c.rc != 0:
            raise RuntimeError("create-replicas failed: " + c.describe())
        if self.fault == "two_node":
            self._drop_from_inventory("guest3")
            env.docker("kill", env.cid("guest3"))
        self.watchers = Watchers(env, DOWN_AFTER_MS)
        # kill_watcher: the host watcher acts (started first), so that it can be killed within a
        # millisecond of logging its decision, in the middle of the eject.
        self.watchers.start(host_first=self.fault == "kill_watcher")
        if env.min_replicas > 0 and not wait_for(
                lambda: config_get(env, "guest1", "min-replicas-to-write") == {"min-replicas-to-write": str(env.min_replicas)}, 20):
            raise RuntimeError(f"the split-brain fence is not armed on guest1: {config_get(env, 'guest1', 'min-replicas-*')}")
        for addr in self.watchers.addrs():
            if not wait_for(lambda: self.discover([addr]) == (self.ip("guest1"), 6379), 20, interval=0.2):
                raise RuntimeError(f"the watcher at {addr[0]}:{addr[1]} does not name guest1 as master: {self.discover([addr])}")
        self.history = History(self.path)
        self.event("setup", seed=self.seed, round=self.i, fault=self.fault, tag=self.tag, nodes=",".join(self.nodes),
                   secs=round(time.monotonic() - t, 1))
        sentinel = Sentinel(self.watchers.addrs(), socket_timeout=0.5, socket_connect_timeout=0.5)
        self.sw = SentinelWriter(sentinel, NAME, f"{self.tag}s", self.history, wait_ms=WAIT_MS)
        self.sw.start()
        self.writers.append(self.sw)
        inside = ContainerWriter(env, "guest1", f"{self.tag}i", interval=0.02, history=self.history, wait_ms=WAIT_MS)
        inside.start()
        self.writers.append(inside)
        if not wait_for(lambda: self.sw.ok >= 200 and len(inside.acked) >= 5, 30):
            raise RuntimeError(f"writers not going: redis-py {self.sw.ok} acknowledged, {inside.summary()}")
        for g in self.replicas:
            if not wait_for(lambda: caught_up(env, g, "guest1"), 20):
                raise RuntimeError(f"{g} is not a linked replica of guest1 before the fault: {replica_state(env, g)}")
        self.t_healthy = self.event("healthy", writes_ok=self.sw.ok)

    def _drop_from_inventory(self, g):
        with open(self.env.inventory) as f:
            text = f.read()
        blocks = text.split("[[guest]]")
        keep = [blocks[0]] + [b for b in blocks[1:] if f'"{self.env.gid(g)}"' not in b]
        with open(self.env.inventory, "w") as f:
            f.write("[[guest]]".join(keep))

    # --- nemeses
    def part_minority(self, g=None):
        self.cut_master(g or self.master, "all (loopback kept)", "master cut off")

    def cut_master(self, m, peers, what, **how):
        """Cuts the master m off (`how`: cut()'s options) for the round's cut_s, then heals."""
        dur = self.params.setdefault("cut_s", round(self.rng.uniform(9, 14), 1))
        t0 = time.monotonic()
        cut(self.env, m, **how)
        t = self.event("cut", node=m, peers=peers, secs=dur)
        self.tail_window(m, t0, t, what)
        self.fence_window(m, t, t, what)
        time.sleep(dur)
        uncut(self.env, m)
        self.event("heal", node=m)

    def part_majority(self):
        m = self.master
        a = self.params.setdefault("with_replica", self.rng.choice(self.replicas))
        b = next(g for g in self.replicas if g != a)
        dur = self.params.setdefault("cut_s", round(self.rng.uniform(9, 14), 1))
        others = [self.ip(b), self.env.broker_ip, f"{self.env.prefix}.20", f"{self.env.prefix}.1"]
        t0 = time.monotonic()
        cut(self.env, m, peers=others)
        cut(self.env, a, peers=others)
        cut(self.env, b, peers=[self.ip(m), self.ip(a)])
        t = self.event("cut", side1=f"{m}+{a}", side2=f"{b}+broker+watchers+host", secs=dur)
        self.tail_window(m, t0, t, "master cut off with a replica")
        self.fence_window(m, t, t, "master cut off with a replica")
        time.sleep(dur)
        for g in (m, a, b):
            uncut(self.env, g)
        self.event("heal")

    def asymmetric(self):
        self.cut_master(self.master, "all inbound (it can still send)", "master receives nothing", inbound_only=True)

    def sigstop(self, g=None):
        m = g or self.master
        dur = self.params.setdefault("stop_s", round(self.rng.uniform(3.5, 8), 1))
        pid = self.env.redis_pid(m)
        if not pid:
            raise RuntimeError(f"no redis-server process in {m}")
        t0 = time.monotonic()
        self.env.exec(m, "sh", "-c", f"kill -STOP {pid}")
        t = self.event("sigstop", node=m, pid=pid, secs=dur)
        try:
            time.sleep(dur)
        finally:
            self.env.exec(m, "sh", "-c", f"kill -CONT {pid}")
        t_cont = self.event("sigcont", node=m)
        self.tail_window(m, t0, t, "master's redis-server stopped")
        # Writes queued while it was stopped are served at SIGCONT, before Redis re-counts its
        # replicas' lag: the fence holds max_lag after its replicas' last ack (at the stop).
        self.fence_window(m, t, max(t_cont - self.env.max_lag, t), "master's redis-server stopped, then continued")

    def kill_master(self, g=None):
        m = g or self.master
        dur = self.params.setdefault("down_s", round(self.rng.uniform(4, 8), 1))
        t0 = time.monotonic()
        self.env.docker("kill", self.env.cid(m))
        t = self.event("docker-kill", node=m)
        self.tail_window(m, t0, t, "master killed")
        time.sleep(dur)
        self.env.docker("start", self.env.cid(m))
        self.event("docker-start", node=m)

    def kill_watcher(self):
        """docker kill of the master; the acting watcher (the host one) is kill -9'd as soon as it
        logs its decision (plus a seeded delay of 0-20 ms: in the middle of the eject, which takes
        ~20 ms); the other watcher must take the lease and finish; the old master is started again."""
        m = self.master
        w = self.watchers
        delay = self.params.setdefault("kill_delay_ms", self.rng.choice([0, 0, 5, 10, 20]))
        if w.holder() != "host":
            raise RuntimeError(f"the host watcher does not hold the lease (holder: {w.holder()})")
        done = w.kill_on("decision: master is down", delay / 1000)
        t0 = time.monotonic()
        self.env.docker("kill", self.env.cid(m))
        t = self.event("docker-kill", node=m, acting_watcher="host")
        self.tail_window(m, t0, t, "master killed")
        if not done.wait(30):
            raise RuntimeError("the acting watcher logged no decision within 30 s of the kill:\n" + w.log("host")[-2000:])
        log = w.log("host")
        self.history.event("watcher-kill", t=w.killed_at, watcher="host", after_decision_ms=delay,
                           logged_after_decision=log[log.rfind("decision: master is down"):][:600].count("\n"))
        say(f"  watcher-kill watcher=host delay_ms={delay}; its last lines: "
            + " | ".join(l[-160:] for l in log[log.rfind("decision: master is down"):].splitlines()[1:4]))
        named = wait_for(lambda: (lambda a: a if a and a[0] != self.ip(m) else None)(self.discover([w.compose_addr])), 30, interval=0.2)
        self.event("failover-seen", watcher="compose", names=named and self.name_of(named[0]))
        time.sleep(2)
        self.env.docker("start", self.env.cid(m))
        self.event("docker-start", node=m)

    def broker_restart(self):
        self.env.docker("restart", "-t", "10", self.env.cid("rabbitmq"), timeout=120)
        self.event("broker-restarted")
        if not self.env.wait_broker(90):
            raise RuntimeError("the broker did not come back within 90 s of its restart")
        self.event("broker-healthy")
        for g in self.nodes:
            if not self.env.wait_ping(g, 60):
                raise RuntimeError(f"{g}'s agent does not answer within 60 s of the broker's restart")
        self.event("agents-answer")

    def two_node(self):
        sub = self.params.setdefault("sub", self.rng.choice(["part_minority", "kill_master", "sigstop"]))
        getattr(self, sub)()

    def promote_in_fault(self):
        sub = self.params.setdefault("sub", self.rng.choice(["replica_cut", "master_cut"]))
        cand = self.params.setdefault("candidate", self.rng.choice(self.replicas))
        dur = self.params.setdefault("cut_s", round(self.rng.uniform(9, 14), 1))
        delay = self.params.setdefault("promote_after_s", round(self.rng.uniform(0.5, 2.5), 1))
        m = self.master
        victim = m if sub == "master_cut" else next(g for g in self.replicas if g != cand)
        t0 = time.monotonic()
        cut(self.env, victim)
        t = self.event("cut", node=victim, peers="all (loopback kept)", secs=dur)
        if victim == m:
            self.tail_window(m, t0, t, "master cut off")
            self.fence_window(m, t, t, "master cut off")
        time.sleep(delay)
        self.event("promote-start", node=cand)
        c = self.env.ctl("promote-to-replica-source", self.env.gid(cand), timeout=120)
        rep = c.json() or {}
        self.event("promote-done", node=cand, rc=c.rc, ms=c.ms, writes_blocked_ms=rep.get("writes_blocked_ms"),
                   error=(c.err.strip().splitlines() or [""])[-1][:200] if c.rc else None)
        time.sleep(max(0.0, t + dur - time.monotonic()))
        uncut(self.env, victim)
        self.event("heal", node=victim)

    # --- after the fault
    def linked(self, g, m):
        return caught_up(self.env, g, m, slack=1 << 22)

    def settled(self):
        states = {g: replica_state(self.env, g) for g in self.nodes}
        masters = [g for g, s in states.items() if s and s["role"] == "master"]
        if len(masters) == 1 and all(self.linked(g, masters[0]) for g in self.nodes if g != masters[0]):
            return masters[0]
        return None

    def finish(self):
        """Settles, stops the writers, records the final state of every node."""
        t = time.monotonic()
        m = wait_for(self.settled, SETTLE_S, interval=0.3)
        self.event("settled" if m else "not-settled", master=m, secs=round(time.monotonic() - t, 1))
        time.sleep(AFTER_SETTLE_S)
        self.stop_writers()
        self.t_stopped = time.monotonic()
        states = {g: replica_state(self.env, g) for g in self.nodes}
        errors = []
        masters = [g for g, s in states.items() if s and s["role"] == "master"]
        final = m or (masters[0] if len(masters) == 1 else None)
        if not m:
            errors.append(f"the set did not settle within {SETTLE_S} s of healing (one master, the others its linked "
                          f"replicas): {self._roles(states)}")
        missing, writable, discovery = None, None, {}
        if final:
            def probe():
                try:
                    return rcall(self.ip(final), "SET", f"{self.tag}:final-probe", 1, timeout=1.0) == "OK"
                except (OSError, ReplyError):
                    return False
            writable = bool(wait_for(probe, 10, interval=0.5))
            if not writable:
                errors.append(f"the final master {final} does not take a write (fenced or unreachable) 10 s after settling")
            ok_pairs = self._ok_pairs()
            mm = missing_on(self.ip(final), ok_pairs)
            if mm is None:
                errors.append(f"cannot read the final master {final}")
            else:
                missing = [k for k, _ in mm]
            for which, addr in (("compose", self.watchers.compose_addr), ("host", self.watchers.host_addr)):
                if which in self.watchers.killed:
                    continue
                a = self.discover([addr])
                discovery[which] = self.name_of(a[0]) if a else None
                if a != (self.ip(final), 6379):
                    errors.append(f"the {which} watcher names {a} as master, not {final}")
        # The longest time the redis-py client went without an acknowledgement, to its stop.
        times = ([self.t_healthy] + self.sw.ok_times + [self.t_stopped]) if self.sw else []
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.history.final(master=self.ip(final) if final else None, nodes=states, missing=missing, writable=writable,
                           discovery=discovery, topology_errors=errors, harness_errors=self.harness_errors,
                           why_no_master=None if final else self._roles(states), params=self.params,
                           longest_pause_ms=int(max(gaps, default=0) * 1000))
        self.history.close()

    def _ok_pairs(self):
        import json
        pairs = []
        with open(self.path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("type") == "op" and r["outcome"] == "ok":
                    pairs.append((r["key"], r["value"]))
        return pairs

    def _roles(self, states):
        return {g: (f"{s['role']}" + (f" of {self.name_of(s['master_host'])} link {s['link']}" if s["role"] == "slave" else ""))
                if s else "unreachable" for g, s in states.items()}

    def stop_writers(self):
        for w in self.writers:
            try:
                w.stop()
            except RuntimeError as e:
                self.harness_errors.append(str(e))
        self.writers = []

    def cleanup(self):
        if self.writers:
            self.stop_writers()
        if self.watchers:
            try:
                self.watchers.stop(self.dir)
            except Exception as e:  # noqa: BLE001
                say(f"  could not stop the watchers: {e}")
        self.env.stop_background()
        for g in self.nodes:
            try:
                uncut(self.env, g)
            except Exception:  # noqa: BLE001 - a stopped container has no namespace to clean
                pass


def run_round(r):
    """Runs one round; returns (stats, failures)."""
    try:
        r.setup()
        getattr(r, r.fault)()
        r.finish()
    except Exception as e:  # noqa: BLE001 - any harness error fails the round, loudly
        say(f"FAIL: {type(e).__name__}: {e}")
        if r.history is not None and not r.history.f.closed:
            r.history.close()
        r.cleanup()
        return {}, [("harness", f"{type(e).__name__}: {e}")]
    r.cleanup()
    return check(r.path, r.name_of)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    ap.add_argument("--rounds", type=int, default=len(FAULTS), help=f"rounds (default {len(FAULTS)}: every fault once)")
    ap.add_argument("--faults", default=None, help="comma-separated fault kinds to draw from (default: all)")
    ap.add_argument("--check", default=None, metavar="HISTORY", help="only judge a kept history file")
    a = ap.parse_args()
    if a.check:
        st, failures = check(a.check)
        print(st)
        for k, msg in failures:
            print(f"check {k} FAILED: {msg}")
        return 1 if failures else 0
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    kinds = a.faults.split(",") if a.faults else list(FAULTS)
    bad = [k for k in kinds if k not in FAULTS]
    if bad:
        print(f"unknown fault kinds {bad} (known: {', '.join(FAULTS)})", file=sys.stderr)
        return 2
    outdir = os.path.join(ROOT, "target", "nemesis", str(seed))
    os.makedirs(outdir, exist_ok=True)
    rng = random.Random(seed)
    order = []
    while len(order) < a.rounds:
        batch = list(kinds)
        rng.shuffle(batch)
        order += batch
    order = order[:a.rounds]
    print(f"nemesis seed={seed} rounds={a.rounds} order={','.join(order)} histories in {os.path.relpath(outdir, ROOT)}/", flush=True)
    agg = defaultdict(lambda: defaultdict(int))
    failed_rounds = []
    totals = defaultdict(int)
    t_all = time.monotonic()
    for i, fault in enumerate(order, 1):
        r = Round(seed, i, fault, random.Random(rng.randrange(1 << 62)), outdir)
        t = time.monotonic()
        say(f"round {i}/{a.rounds}: {fault} (tag {r.tag})")
        st, failures = run_round(r)
        secs = time.monotonic() - t
        hist = os.path.relpath(r.path, ROOT)
        g = agg[fault]
        g["runs"] += 1
        for k in ("ops", "ok", "confirmed", "lost", "lost_confirmed", "bound", "lost_outside", "overlap"):
            g[k] += st.get(k, 0)
            totals[k] += st.get(k, 0)
        g["pause"] = max(g["pause"], st.get("longest_pause_ms", 0))
        totals["pause"] = max(totals["pause"], st.get("longest_pause_ms", 0))
        checks = sorted({str(k) for k, _ in failures})
        if failures:
            g["failed"] += 1
            g["checks"] = ",".join(sorted(set(filter(None, str(g["checks"] or "").split(","))) | set(checks)))
            failed_rounds.append((i, fault, hist, failures))
            try:
                r.env.save_logs()
            except Exception as e:  # noqa: BLE001
                say(f"  could not save logs: {e}")
        for k, msg in failures:
            say(f"FAIL round {i} ({fault}, seed {seed}) check {k}: {msg}  [history {hist}]")
        say(f"round {i} {fault} params={r.params}: {'FAIL (checks ' + ','.join(checks) + ')' if failures else 'pass'} "
            f"in {secs:.0f}s ops={st.get('ops', 0)} ok={st.get('ok', 0)} confirmed={st.get('confirmed', 0)} "
            f"unknown={st.get('unknown', 0)} lost={st.get('lost', 0)} (confirmed {st.get('lost_confirmed', 0)}, "
            f"outside windows {st.get('lost_outside', 0)}, in-window bound {st.get('bound', 0)}) "
            f"longest_pause_ms={st.get('longest_pause_ms', 0)} history={hist}")
    print()
    print(f"== nemesis seed={seed}: per fault kind (windows: tail {REPL_TAIL_S:.0f} s before a master's fault; "
          f"fence min_replicas_max_lag + {FENCE_SLACK_S:.0f} s after a cut or stop)")
    print(f"  {'fault':<18} {'runs':>4} {'failed':>6} {'writes':>7} {'acked':>7} {'confirmed':>9} {'lost':>5} "
          f"{'conf.lost':>9} {'outside':>7} {'bound':>6} {'overlap':>7} {'pause_ms':>8}  checks failed")
    for fault in FAULTS:
        if fault not in agg:
            continue
        g = agg[fault]
        print(f"  {fault:<18} {g['runs']:>4} {g['failed']:>6} {g['ops']:>7} {g['ok']:>7} {g['confirmed']:>9} {g['lost']:>5} "
              f"{g['lost_confirmed']:>9} {g['lost_outside']:>7} {g['bound']:>6} {g['overlap']:>7} {g['pause']:>8}  {g['checks'] or '-'}")
    for i, fault, hist, failures in failed_rounds:
        print(f"  FAILED round {i} ({fault}, seed {seed}): checks {','.join(sorted({str(k) for k, _ in failures}))}; history {hist}")
    ok = not failed_rounds
    print(f"nemesis seed={seed} rounds={a.rounds}: {a.rounds - len(failed_rounds)} passed, {len(failed_rounds)} failed; "
          f"writes={totals['ops']} acked={totals['ok']} lost={totals['lost']} (confirmed {totals['lost_confirmed']}, "
          f"outside windows {totals['lost_outside']}) overlapping_acks={totals['overlap']} longest_pause_ms={totals['pause']} "
          f"in {time.monotonic() - t_all:.0f}s; histories in {os.path.relpath(outdir, ROOT)}/")
    print(f"scenario=nemesis result={'pass' if ok else 'fail'} acked={totals['ok']} lost={totals['lost']} "
          f"longest_pause_ms={totals['pause']} bound={totals['bound']}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
