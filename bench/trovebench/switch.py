"""Three-node topologies for each switchover method, the writer around a switch, and the monitor
that times it: until the new master accepts a write, and until every other node follows it with
the link up."""

import json
import os
import signal
import subprocess
import threading
import time
import uuid

import redis

from .agentlog import promote_phases, rpc_spans
from .common import (BenchError, Fleet, RedisNode, Sentinel, log, linked_to, now, rcon, replication,
                     stats, wait_until)

PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def follows(con, master_port):
    """ROLE says: a replica of master_port with the link up (state "connected")."""
    r = con.execute_command("ROLE")
    return r[0] == "slave" and int(r[2]) == master_port and r[3] == "connected"


# ---------------------------------------------------------------------------------------------
# the writer

class WriterProcess:
    """A writer running as its own process (`python -m trovebench.<module>`): it prints "ready",
    writes until SIGUSR1, then leaves its figures as JSON in `out`."""

    def __init__(self, ctx, tag, prefix, module, args, what="writer"):
        self.out = ctx.path("writer", "%s-%d.json" % (tag, int(time.time() * 1000)))
        # A fresh key prefix per round: a key left by an earlier round must not hide a lost write.
        self.prefix = "%s%s:" % (prefix, uuid.uuid4().hex[:8])
        self.what = what
        self.proc = subprocess.Popen(
            [ctx.python, "-m", "trovebench." + module, *args, "--out", self.out, "--prefix", self.prefix],
            stdout=subprocess.PIPE, stderr=open(self.out + ".err", "w"), text=True, cwd=PKG_PARENT)
        ctx.procs.append(self.proc)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise BenchError("%s did not start: %r %s" % (what, line, open(self.out + ".err").read()[-1000:]))

    def stop(self):
        self.proc.send_signal(signal.SIGUSR1)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise BenchError("%s did not stop" % self.what)
        with open(self.out) as f:
            data = json.load(f)
        os.unlink(self.out)
        return data


class Writer(WriterProcess):
    """The writer process: naive (finds the master by ROLE on `ports`), or, with `sentinels`
    ([(host, port)]) and `name`, redis-py's Sentinel client."""

    def __init__(self, ctx, ports, tag, sentinels=None, name="mymaster"):
        self.ctx = ctx
        how = (["--sentinels", ",".join("%s:%d" % a for a in sentinels), "--name", name] if sentinels
               else ["--ports", ",".join(map(str, ports))])
        super().__init__(ctx, tag, "w", "writer", how)


def longest_pause(times, t_from, t_to):
    """Longest gap between consecutive acknowledgements that ends after t_from and starts before
    t_to; returns (seconds, gap start)."""
    best, at = 0.0, None
    prev = None
    for t in times:
        if prev is not None and t >= t_from and prev <= t_to:
            g = t - prev
            if g > best:
                best, at = g, prev
        prev = t
        if t > t_to and prev > t_to:
            break
    return best, at


def count_lost(port, acked, prefix="w:"):
    c = rcon(port, timeout=60)
    lost = 0
    chunk = 5000
    for i in range(0, len(acked), chunk):
        keys = [prefix + str(n) for n in acked[i:i + chunk]]
        vals = c.mget(keys)
        lost += sum(1 for v in vals if v is None)
    return lost


def drop_keys(port, prefix, sent):
    """Removes a round's keys (so the data set does not grow from round to round)."""
    try:
        c = rcon(port, timeout=60)
        for i in range(1, sent + 1, 5000):
            c.unlink(*[prefix + str(n) for n in range(i, min(i + 5000, sent + 1))])
    except (redis.RedisError, OSError):
        pass


def sum_stats(ports):
    out = {"sync_full": 0, "sync_partial_ok": 0, "sync_partial_err": 0}
    for p in ports:
        s = stats(p)
        for k in out:
            out[k] += int(s.get(k, 0))
    return out


# ---------------------------------------------------------------------------------------------
# the monitor

def monitor(ports, candidates, start, follow_expect, timeout, proc=None):
    """Starts the switch with `start()` (which may return a Popen, a thread or None) and polls.

    candidates: ports that may become master. follow_expect(new_master) -> ports that must end up
    following it. Returns timings relative to t0 (seconds) and the new master's port."""
    cons = {p: rcon(p, timeout=2.0) for p in ports}
    probe = {p: rcon(p, timeout=2.0) for p in candidates}
    t0 = now()
    handle = start()
    writable_at, new_master, linked = None, None, {}
    expect = None
    done_at = None
    errors = []
    while True:
        t = now()
        if writable_at is None:
            for p in candidates:
                try:
                    probe[p].set("bench:probe", "1")
                    writable_at, new_master = t - t0, p
                    expect = [q for q in follow_expect(p)]
                    break
                except redis.ResponseError:
                    pass
                except (redis.RedisError, OSError) as e:
                    errors.append(str(e))
        if writable_at is not None:
            for q in expect:
                if q in linked:
                    continue
                try:
                    if follows(cons[q], new_master):
                        linked[q] = now() - t0
                except (redis.RedisError, OSError):
                    pass
        finished = handle is None or (hasattr(handle, "poll") and handle.poll() is not None) or \
            (isinstance(handle, threading.Thread) and not handle.is_alive())
        if finished and done_at is None:
            done_at = now() - t0
        if writable_at is not None and len(linked) == len(expect) and finished:
            break
        if now() - t0 > timeout:
            break
        time.sleep(0.001)
    return {
        "t0": t0,
        "writable_s": writable_at,
        "new_master": new_master,
        "linked_s": linked,
        "all_linked_s": max(linked.values()) if expect is not None and len(linked) == len(expect) and linked else None,
        "expected_followers": expect or [],
        "command_done_s": done_at,
        "timed_out": not (writable_at is not None and expect is not None and len(linked) == len(expect)),
        "handle": handle,
    }


def final_master(ports, fallback, timeout=10.0):
    """The one node that says it is master at the end (lost writes are counted there); `fallback`
    when there is not exactly one within `timeout`."""
    box = {}

    def one():
        ms = []
        for p in ports:
            try:
                if replication(p).get("role") == "master":
                    ms.append(p)
            except (redis.RedisError, OSError):
                pass
        box["ms"] = ms
        return len(ms) == 1
    try:
        wait_until("exactly one master", one, timeout=timeout, interval=0.05)
        return box["ms"][0]
    except BenchError:
        log("no single master at the end (%s); counting against %s" % (box.get("ms"), fallback))
        return fallback


def run_switch(ctx, name, ports, candidates, start, follow_expect, timeout, extra=None, writer_kw=None):
    """One switchover under the writer; returns a result record. Lost writes are counted against
    the final master (the one node that says master at the end), not the first one that took a probe."""
    before = sum_stats(ports)
    w = Writer(ctx, ports, name, **(writer_kw or {}))
    time.sleep(0.5)
    m = monitor(ports, candidates, start, follow_expect, timeout)
    time.sleep(0.3)
    data = w.stop()
    after = sum_stats(ports)
    t0 = m["t0"]
    tend = t0 + (m["all_linked_s"] or m["writable_s"] or timeout) + 0.3
    pause, pause_at = longest_pause(data["t"], t0, tend)
    base_pause, _ = longest_pause(data["t"], t0 - 0.45, t0)
    final = final_master(ports, m["new_master"]) if m["new_master"] else None
    lost = count_lost(final, data["acked"], w.prefix) if final else None
    if final:
        drop_keys(final, w.prefix, data["sent"])
    rec = {
        "method": name,
        "writable_ms": None if m["writable_s"] is None else m["writable_s"] * 1000,
        "all_linked_ms": None if m["all_linked_s"] is None else m["all_linked_s"] * 1000,
        "linked_ms": {str(k): v * 1000 for k, v in m["linked_s"].items()},
        "command_done_ms": None if m["command_done_s"] is None else m["command_done_s"] * 1000,
        "timed_out": m["timed_out"],
        "longest_pause_ms": pause * 1000,
        "pause_starts_ms": None if pause_at is None else (pause_at - t0) * 1000,
        "baseline_pause_ms": base_pause * 1000,
        "acked": len(data["acked"]),
        "lost": lost,
        "sync_full_delta": after["sync_full"] - before["sync_full"],
        "sync_partial_ok_delta": after["sync_partial_ok"] - before["sync_partial_ok"],
        "new_master": m["new_master"],
        "final_master": final,
        "client": "redis-py Sentinel" if (writer_kw or {}).get("sentinels") else "naive (ROLE on every node)",
        "writer_events": [e for e in data["events"] if e[0] >= t0 - 0.1][:20],
    }
    for e in rec["writer_events"]:
        e[0] = round((e[0] - t0) * 1000, 2)
    if extra:
        rec.update(extra(m))
    return rec, m


# ---------------------------------------------------------------------------------------------
# the four methods

class OursTrio:
    name = "ours"
    label = "trove-guestctl promote"

    def __init__(self, ctx, count=3, tag="sw", env=None):
        self.ctx = ctx
        self.fleet = Fleet(ctx, tag, count, env=env)
        g = self.fleet.guests
        self.fleet.ctl("create-replicas", "--replica-of", g[0].id, *[x.id for x in g[1:]])
        self.ports = [x.port for x in g]

    def master(self):
        roles = self.fleet.live_roles()
        return next(self.fleet.by_id(i) for i, (r, _) in roles.items() if r == "master")

    def replicas(self):
        m = self.master()
        return sorted((g for g in self.fleet.guests if g is not m), key=lambda g: g.id)

    def check(self):
        m = self.master()
        for g in self.replicas():
            wait_until("%s linked to %s" % (g.id, m.id), lambda g=g: linked_to(g.port, m.port), timeout=30)

    def switch(self, rep, timeout):
        self.check()
        m = self.master()
        reps = self.replicas()
        cand = reps[rep % len(reps)]
        box = {}

        def start():
            box["wall0"] = time.time()
            box["p"] = self.fleet.ctl_popen("promote-to-replica-source", cand.id)
            return box["p"]

        def extra(mon):
            p = box["p"]
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                raise BenchError("promote did not finish")
            if p.returncode != 0:
                raise BenchError("promote failed (%d): %s %s" % (p.returncode, out, err[-2000:]))
            report = json.loads(out)
            done_ms = (mon["command_done_s"] or 0) * 1000
            spans = rpc_spans(self.fleet.guests, box["wall0"], box["wall0"] + done_ms / 1000 + 0.05)
            return {"writes_blocked_ms_reported": report.get("writes_blocked_ms"),
                    "total_ms_reported": report.get("total_ms"), "candidate": cand.port,
                    "old_master": m.port, "replicas": len(self.fleet.guests) - 1,
                    "phases": promote_phases(spans, m.name, cand.name, done_ms), "spans": spans}

        rec, _ = run_switch(self.ctx, self.name, self.ports, [cand.port], start,
                            lambda nm: [p for p in self.ports if p != nm], timeout, extra)
        if rec["new_master"] != cand.port:
            raise BenchError("ours: %s became master, expected %s" % (rec["new_master"], cand.port))
        return rec


class PlainTrio:
    """Three plain redis-servers, the first the master."""

    def __init__(self, ctx, tag, count=3, extra_conf=""):
        self.ctx = ctx
        self.nodes = [RedisNode(ctx, "%s%d" % (tag, i + 1), extra_conf) for i in range(count)]
        self.ports = [n.port for n in self.nodes]
        # Initial sync without the stock 5 s diskless delay (set back afterwards: the benchmarks run
        # with Redis's defaults).
        mc = self.nodes[0].con()
        delay = mc.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
        mc.config_set("repl-diskless-sync-delay", 0)
        for n in self.nodes[1:]:
            n.con().execute_command("REPLICAOF", "127.0.0.1", self.nodes[0].port)
        for n in self.nodes[1:]:
            wait_until("replica linked", lambda n=n: linked_to(n.port, self.nodes[0].port), timeout=60)
        mc.config_set("repl-diskless-sync-delay", delay)

    def master_port(self):
        ms = [p for p in self.ports if replication(p).get("role") == "master"]
        if len(ms) != 1:
            raise BenchError("expected one master, found %s" % ms)
        return ms[0]

    def check(self):
        m = self.master_port()
        for p in self.ports:
            if p != m:
                wait_until("%d linked to %d" % (p, m), lambda p=p: linked_to(p, m), timeout=30)
        return m


class FailoverTrio(PlainTrio):
    name = "failover"
    label = "Redis FAILOVER TO"

    def __init__(self, ctx):
        super().__init__(ctx, "fo")

    def switch(self, rep, timeout):
        m = self.check()
        reps = sorted(p for p in self.ports if p != m)
        cand = reps[rep % len(reps)]
        third = [p for p in reps if p != cand][0]

        def start():
            rcon(m).execute_command("FAILOVER", "TO", "127.0.0.1", cand)
            return None

        def extra(mon):
            r = replication(third)
            return {"candidate": cand, "old_master": m,
                    "third_node_follows": int(r.get("master_port", 0)) == cand,
                    "third_node_master_port": int(r.get("master_port", 0)),
                    "old_master_linked_ms": mon["linked_s"].get(m, None) and mon["linked_s"][m] * 1000}

        # FAILOVER re-points only the old master; the third node stays chained under it.
        rec, _ = run_switch(self.ctx, self.name, self.ports, [cand], start, lambda nm: [m], timeout, extra)
        rec["all_linked_ms"] = None  # not everyone follows the new master
        # Put the third node under the new master for the next round (not timed).
        rcon(third).execute_command("REPLICAOF", "127.0.0.1", cand)
        wait_until("third node re-pointed", lambda: linked_to(third, cand), timeout=30)
        return rec


class FloorTrio(PlainTrio):
    name = "floor"
    label = "hand-made floor (CLIENT PAUSE + REPLICAOF)"

    def __init__(self, ctx):
        super().__init__(ctx, "fl")

    def switch(self, rep, timeout):
        m = self.check()
        reps = sorted(p for p in self.ports if p != m)
        cand = reps[rep % len(reps)]
        others = [p for p in reps if p != cand]
        p = subprocess.Popen([self.ctx.python, "-m", "trovebench.floor", "--master", str(m), "--candidate", str(cand),
                              "--others", ",".join(map(str, others))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=PKG_PARENT)
        self.ctx.procs.append(p)
        if p.stdout.readline().strip() != "ready":
            raise BenchError("floor script did not start")

        def start():
            p.stdin.write("go\n")
            p.stdin.flush()
            return p

        def extra(mon):
            out, _ = p.communicate(timeout=60)
            if p.returncode != 0:
                raise BenchError("floor script failed")
            return {"candidate": cand, "old_master": m, "script_steps_ms": json.loads(out.strip().splitlines()[-1])}

        rec, _ = run_switch(self.ctx, self.name, self.ports, [cand], start,
                            lambda nm: [p for p in self.ports if p != nm], timeout, extra)
        return rec


class SentinelTrio(PlainTrio):
    name = "sentinel"
    label = "Sentinel SENTINEL FAILOVER (redis-py Sentinel client)"

    def __init__(self, ctx, down_after=1000, failover_timeout=10000, tag="se"):
        super().__init__(ctx, tag)
        self.down_after = down_after
        self.sentinels = [Sentinel(ctx, "%s-s%d" % (tag, i + 1), self.ports[0], 2, down_after, failover_timeout)
                          for i in range(3)]
        self.wait_sentinels(timeout=60)

    def sentinel_view(self, s):
        c = s.con()
        m = c.execute_command("SENTINEL", "MASTER", "mymaster")
        m = dict(zip(m[::2], m[1::2])) if isinstance(m, list) else m
        reps = c.execute_command("SENTINEL", "REPLICAS", "mymaster")
        reps = [dict(zip(r[::2], r[1::2])) if isinstance(r, list) else r for r in reps]
        return m, reps

    def wait_sentinels(self, timeout=60.0, expect_replicas=2):
        """Until every sentinel agrees on the live master, sees the other two sentinels and
        `expect_replicas` healthy replicas, and no failover is in progress."""
        def ok():
            try:
                actual = self.master_port()
            except BenchError:  # two masters for a moment (Sentinel is still converging)
                return False
            for s in self.sentinels:
                m, reps = self.sentinel_view(s)
                if int(m["port"]) != actual or m["flags"] != "master":
                    return False
                if int(m["num-other-sentinels"]) < 2:
                    return False
                good = [r for r in reps if r["flags"] == "slave" and r.get("master-link-status") == "ok"]
                if len(good) < expect_replicas:
                    return False
            return True
        wait_until("sentinels to agree", ok, timeout=timeout, interval=0.2)

    def addrs(self):
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def switches(self):
        """+switch-master events in the first sentinel's log (each failover logs one)."""
        with open(os.path.join(self.sentinels[0].dir, "sentinel.log"), errors="replace") as f:
            return f.read().count("+switch-master")

    def sentinel_master(self):
        host, port = self.sentinels[0].con().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return int(port)

    def switch(self, rep, timeout):
        self.wait_sentinels()
        m = self.check()
        reps = sorted(p for p in self.ports if p != m)
        box = {}

        def start():
            for attempt in range(50):
                try:
                    box["reply"] = self.sentinels[rep % 3].con().execute_command("SENTINEL", "FAILOVER", "mymaster")
                    return None
                except redis.ResponseError as e:
                    box.setdefault("retries", []).append(str(e))
                    time.sleep(0.2)
            raise BenchError("SENTINEL FAILOVER kept failing: %s" % box["retries"][-1])

        def extra(mon):
            return {"old_master": m, "sentinel_retries": box.get("retries", [])}

        rec, _ = run_switch(self.ctx, self.name, self.ports, reps, start,
                            lambda nm: [p for p in self.ports if p != nm], timeout, extra,
                            writer_kw={"sentinels": self.addrs()})
        if rec.get("sentinel_retries"):
            log("sentinel: SENTINEL FAILOVER retried:", rec["sentinel_retries"][:3])
        if rec["timed_out"] and rec["new_master"]:
            # Not converged within the timeout (smoke runs): do what Sentinel would do later.
            for p in self.ports:
                if p != rec["new_master"] and replication(p).get("role") == "master":
                    rcon(p).execute_command("REPLICAOF", "127.0.0.1", rec["new_master"])
        return rec
