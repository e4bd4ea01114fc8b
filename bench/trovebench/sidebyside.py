"""`trove-guestctl watch` side by side with Redis Sentinel, through the same client: redis-py's
`Sentinel(...).master_for(name)` writer, pointed at 3 real Sentinels (quorum 2,
down-after-milliseconds 1000) or at two watchers' discovery endpoints (--down-after-ms 1000). The
watcher halves its wait when the evidence is strong (the master's agent gone and a majority of
replicas saw their link reset, as after a kill), so the kill case also runs 3 Sentinels at
down-after-milliseconds 500; every record says which threshold was in effect, ours read from the
watcher's own "decision" log line, and our failovers are its "eject done" log lines.

Cases (each on both sides unless noted): kill -9 of the master (Redis, and for ours its agent too,
as a whole-host death) with and without min-replicas-to-write 1; a planned switchover (SENTINEL
FAILOVER against promote-to-replica-source); false positives: SIGSTOP of the master's Redis for
0.5 x down_after, and (ours) the master's agent killed while its Redis serves; a partition of the
master from everyone (partition.py) with and without min-replicas-to-write 1, timing the cut →
`+odown` and `+switch-master` events on the sides' pub/sub. Lost writes are always counted
against the final master.

BENCH_SIDEBYSIDE_CASES (comma-separated: switchover, sigstop, agent-stop, partition, kill; default
all) runs only some cases."""

import os
import re
import signal
import threading
import time

import redis

from .common import BenchError, Fleet, free_port, linked_to, log, now, quiet, rcon, replication, tail, wait_until
from .partition import partition_round
from .switch import SentinelTrio, Writer, count_lost, drop_keys, final_master, longest_pause, run_switch

DOWN_AFTER_MS = 1000
# The watcher's log line when it holds an eject back for a cut-off master's write fence.
FENCE_WAIT = "waiting until its write fence must have stopped its writes"
NAME_OURS = "trove"
NAME_SENTINEL = "mymaster"


def client_round(ctx, side, tag, fault, settle_s, timeout_s=30.0):
    """Sentinel-client writer on; `fault()` (returns its time); wait for a write sent after the
    fault to be acknowledged (or settle_s for false-positive cases); stop; count against the
    final master. Returns the record and the writer's data."""
    w = Writer(ctx, side.ports, tag, sentinels=side.addrs(), name=side.NAME)
    time.sleep(0.7)
    m0 = side.master_port()
    t_fault = fault()
    deadline = now() + timeout_s
    data = None
    # The writer's acks live in its process: poll the topology, then stop it after settle_s or
    # once a survivor is master (kill cases).
    if settle_s is not None:
        time.sleep(settle_s)
    else:
        wait_until("a new master", lambda: side.single_master(exclude=m0) is not None, timeout=timeout_s, interval=0.02)
        time.sleep(max(0.0, min(2.5, deadline - now())))
    data = w.stop()
    survivors = [p for p in side.ports if p != m0] if settle_s is None else side.ports
    masters = [p for p in survivors if _role(p) == "master"]
    # One master among the survivors; if there are several (Sentinel can fail over twice and leave two
    # for a while), the one the side names (its sentinels or watchers) is the final master.
    final = final_master(survivors, None, timeout=5.0) or quiet(side.named_master) or None
    sent_t = data["sent_t"]
    firsts = [t for s, t in zip(sent_t, data["t"]) if s > t_fault]
    lost = count_lost(final, data["acked"], w.prefix) if final else None
    pause, _ = longest_pause(data["t"], t_fault, data["t"][-1] if data["t"] else t_fault)
    rec = {
        "side": side.side,
        "client_writable_ms": (firsts[0] - t_fault) * 1000 if firsts else None,
        "acked": len(data["acked"]),
        "lost": lost,
        "longest_pause_ms": pause * 1000,
        "old_master": m0,
        "final_master": final,
        "errors": len([e for e in data["events"] if e[1] == "error"]),
        "masters_at_stop": masters,
        "_acked": data["acked"], "_prefix": w.prefix, "_sent": data["sent"],
    }
    return rec


def settle(rec, final):
    """Recount against `final` (the master once everything converged) if it differs; drop the keys."""
    if final and final != rec["final_master"]:
        rec["final_master_at_stop"] = rec["final_master"]
        rec["final_master"] = final
        rec["lost"] = count_lost(final, rec["_acked"], rec["_prefix"])
        rec["master_changed_after_stop"] = True
    if rec["final_master"]:
        drop_keys(rec["final_master"], rec["_prefix"], rec["_sent"])
    for k in ("_acked", "_prefix", "_sent"):
        rec.pop(k, None)
    return rec


class OursSide:
    """Three agents (each supervising its Redis) and two watchers serving discovery."""
    side = "ours"
    NAME = NAME_OURS

    def __init__(self, ctx, tag, min_replicas=0):
        self.ctx = ctx
        env = {"TROVE_GUESTAGENT__REPLICATION__MIN_REPLICAS_TO_WRITE": str(min_replicas)}
        self.fleet = Fleet(ctx, tag, 3, env=env)
        g = self.fleet.guests
        self.fleet.ctl("create-replicas", "--replica-of", g[0].id, *[x.id for x in g[1:]])
        self.ports = [x.port for x in g]
        self.watch_ports = [free_port(), free_port()]
        with open(self.fleet.inventory) as f:
            lines = f.read().splitlines()
        first = next((i for i, l in enumerate(lines) if l.startswith("[")), len(lines))
        head = [l for l in lines[:first] if not l.startswith(("name =", "watchers ="))]
        top = ['name = "%s"' % NAME_OURS, "watchers = [%s]" % ", ".join('"127.0.0.1:%d"' % p for p in self.watch_ports)]
        with open(self.fleet.inventory, "w") as f:
            f.write("\n".join(top + head + lines[first:]) + "\n")
        self.logs = [ctx.path("watch", "%s-%d.log" % (tag, i)) for i in range(2)]
        self.watchers = []
        for i, p in enumerate(self.watch_ports):
            self.watchers.append(ctx.spawn([ctx.ctl_bin, "watch", "--listen", "127.0.0.1:%d" % p, "--down-after-ms",
                                            str(DOWN_AFTER_MS)], self.logs[i],
                                           env={"TROVE_GUESTCTL_INVENTORY": self.fleet.inventory}))
            if i == 0:
                wait_until("the first watcher holds the lease", lambda: "holds the lease" in tail(self.logs[0], 400),
                           timeout=30, interval=0.05)
        self.wait_ready()

    def addrs(self):
        return [("127.0.0.1", p) for p in self.watch_ports]

    def named_master(self):
        return self.discovered(0)

    def discovered(self, i=0):
        host, port = rcon(self.watch_ports[i], 1).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME_OURS)
        return int(port)

    def single_master(self, exclude=None):
        ms = [p for p in self.ports if p != exclude and _role(p) == "master"]
        return ms[0] if len(ms) == 1 else None

    def master_port(self):
        m = self.single_master()
        if m is None:
            raise BenchError("ours: not exactly one master")
        return m

    def guest(self, port):
        return next(g for g in self.fleet.guests if g.port == port)

    def _per_log(self, needle):
        """Lines with `needle` in each watcher's log, whole files."""
        out = []
        for p in self.logs:
            with open(p, errors="replace") as f:
                out.append(sum(1 for line in f if needle in line))
        return out

    def _lines(self, needle):
        """The lines with `needle` in both watchers' logs, in log order."""
        out = []
        for p in self.logs:
            with open(p, errors="replace") as f:
                out += [line for line in f if needle in line]
        return out

    def _count(self, needle):
        """Lines with `needle` in both watchers' logs (only the lease holder acts)."""
        return sum(self._per_log(needle))

    def decisions(self):
        return self._count("decision: master is down")

    def failovers(self):
        """Failovers the watchers completed: their "eject done" log lines."""
        return self._count("eject done")

    def mark(self):
        return {"decisions": self.decisions(), "strong": self._count("strong=true"), "failovers": self.failovers()}

    def since(self, rec, mark):
        """Our own events since `mark` into `rec`: failovers, decisions, and the threshold in effect
        (down_after, halved when a decision line says strong=true)."""
        now_ = self.mark()
        rec["failovers"] = now_["failovers"] - mark["failovers"]
        rec["decisions"] = now_["decisions"] - mark["decisions"]
        rec["strong_evidence"] = now_["strong"] > mark["strong"]
        rec["down_after_in_effect_ms"] = DOWN_AFTER_MS // 2 if rec["strong_evidence"] else DOWN_AFTER_MS
        return rec

    def partition(self, rep, cut_s):
        mark = self.mark()
        per_log = self._per_log("decision: master is down")
        fence_lines = self._lines(FENCE_WAIT)

        def acting():
            """The watcher that decided this round (its log's decision count rose); None if not one."""
            rose = [i for i, (a, b) in enumerate(zip(per_log, self._per_log("decision: master is down"))) if b > a]
            if not rose:
                raise BenchError("ours: no watcher logged a decision in the partition round")
            return rose[0] if len(rose) == 1 else None
        rec = partition_round(self.ctx, self, "op%d" % rep, cut_s, source=acting)
        # The eject waited for the cut-off master's write fence: the watchers' log line, with its wait.
        waits = [int(m.group(1)) for m in (re.search(r"wait_ms\W*(\d+)", line) for line in self._lines(FENCE_WAIT)[len(fence_lines):]) if m]
        rec["fence_wait_ms"] = max(waits) if waits else None
        return self.since(rec, mark)

    def wait_ready(self, timeout=90):
        """Every node linked to the one master, and both watchers name it."""
        def ok():
            m = self.single_master()
            if m is None:
                return False
            if not all(linked_to(p, m) for p in self.ports if p != m):
                return False
            return all(self.discovered(i) == m for i in range(2))
        wait_until("ours: all linked and discovery agrees", lambda: quiet(ok), timeout=timeout, interval=0.1)

    def kill(self, rep):
        g = self.guest(self.master_port())

        def fault():
            g.kill9()
            return now()
        mark = self.mark()
        rec = client_round(self.ctx, self, "ok%d" % rep, fault, None)
        # The watcher logs "eject done" once the survivors follow, after the client's first write.
        wait_until("the watcher's \"eject done\"", lambda: self.failovers() > mark["failovers"], timeout=15, interval=0.05)
        self.since(rec, mark)
        if rec["failovers"] != 1:
            raise BenchError("ours: %d failovers (eject done) for one kill" % rec["failovers"])
        if getattr(self, "recover", True):
            # The old host comes back: its agent restarts Redis as a master; the watcher re-attaches it.
            t = now()
            g.start()
            wait_until("the old master re-attached by the watcher",
                       lambda: quiet(lambda: linked_to(g.port, rec["final_master"])), timeout=90, interval=0.1)
            rec["reattach_s"] = now() - t
            self.wait_ready()
            return settle(rec, self.master_port())
        return settle(rec, None)

    def switch(self, rep, timeout):
        self.wait_ready()
        m = self.master_port()
        reps = sorted(p for p in self.ports if p != m)
        cand = self.guest(reps[rep % 2])
        box = {}

        def start():
            box["p"] = self.fleet.ctl_popen("promote-to-replica-source", cand.id)
            return box["p"]

        seen = DiscoveryWatch(self.watch_ports, cand.port)
        try:
            rec, m = run_switch(self.ctx, "ours", self.ports, [cand.port], start, lambda nm: [p for p in self.ports if p != nm],
                                timeout, writer_kw={"sentinels": self.addrs(), "name": NAME_OURS})
        finally:
            seen.stop()
        # When each watcher's discovery first named the new master, from the command's start: the
        # client cannot find the new master before that (the split of the client's pause).
        rec["announced_ms"] = [None if t is None else round((t - m["t0"]) * 1000, 2) for t in seen.first]
        out, err = box["p"].communicate(timeout=120)
        if box["p"].returncode != 0:
            raise BenchError("promote failed: %s %s" % (out, err[-1000:]))
        self.wait_ready()
        return rec

    def sigstop(self, rep):
        mark = self.mark()
        pid = self.guest(self.master_port()).redis_pid()
        rec = client_round(self.ctx, self, "os%d" % rep, lambda: _stop_for(pid, DOWN_AFTER_MS / 2000), 3 * DOWN_AFTER_MS / 1000)
        self.since(rec, mark)
        self.wait_ready()
        return settle(rec, self.master_port())

    def agent_stopped(self, rep):
        """The master's agent dies; its Redis serves and the replicas stay linked (a watcher cut off
        from one guest looks the same to the watcher)."""
        mark = self.mark()
        g = self.guest(self.master_port())

        def fault():
            self.ctx.kill(g.proc, signal.SIGKILL)
            return now()
        rec = client_round(self.ctx, self, "oa%d" % rep, fault, 3 * DOWN_AFTER_MS / 1000)
        self.since(rec, mark)
        g.start()
        self.fleet.wait_ping(g)
        self.wait_ready()
        return settle(rec, self.master_port())

    def close(self):
        for p in self.watchers:
            self.ctx.kill(p, signal.SIGTERM)
        self.fleet.close()


class SentinelSide(SentinelTrio):
    """Three plain redis-servers and three Sentinels (quorum 2, down-after `down_after` ms); side
    "sentinel" at 1000 ms, "sentinel-500" at 500 ms."""
    NAME = NAME_SENTINEL

    def named_master(self):
        return self.sentinel_master()

    def __init__(self, ctx, tag, min_replicas=0, down_after=DOWN_AFTER_MS):
        super().__init__(ctx, down_after=down_after, failover_timeout=10000, tag=tag)
        self.side = "sentinel" if down_after == DOWN_AFTER_MS else "sentinel-%d" % down_after
        self.min_replicas = min_replicas
        for p in self.ports:
            self.fence(p)

    def fence(self, port):
        """min-replicas-to-write on every node (whichever is master then has it); max-lag 10 s (Redis's default)."""
        rcon(port).config_set("min-replicas-to-write", self.min_replicas)

    def single_master(self, exclude=None):
        ms = [p for p in self.ports if p != exclude and _role(p) == "master"]
        return ms[0] if len(ms) == 1 else None

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def failovers(self):
        return self.switches()

    def partition(self, rep, cut_s):
        return dict(partition_round(self.ctx, self, "sp%d" % rep, cut_s), down_after_in_effect_ms=self.down_after)

    def wait_ready(self, timeout=90):
        self.wait_sentinels(timeout=timeout)

    def kill(self, rep):
        self.wait_ready()
        n = self.node(self.master_port())

        def fault():
            n.kill9()
            return now()
        before = self.switches()
        rec = client_round(self.ctx, self, "sk%d" % rep, fault, None)
        rec["_switches_before"] = before
        rec["down_after_in_effect_ms"] = self.down_after
        if getattr(self, "recover", True):
            t = now()
            n.start()
            self.fence(n.port)

            def follows():
                m = self.sentinel_master()
                if m == n.port:
                    return False
                return linked_to(n.port, m)
            # Sentinel converts a returning old master into a replica itself.
            wait_until("old master re-pointed by Sentinel", lambda: quiet(follows), timeout=90, interval=0.1)
            rec["reattach_s"] = now() - t
            self.wait_ready()
            rec["second_failover"] = _failovers_between(self, rec) > 1
            return settle(rec, self.sentinel_master())
        _failovers_between(self, rec)
        return settle(rec, None)

    def switch(self, rep, timeout):
        rec = super().switch(rep, timeout)
        self.wait_ready()
        return rec

    def sigstop(self, rep):
        self.wait_ready()
        before = self.switches()
        m = self.master_port()
        pid = int(rcon(m).info("server")["process_id"])
        rec = client_round(self.ctx, self, "ss%d" % rep, lambda: _stop_for(pid, DOWN_AFTER_MS / 2000), 3 * DOWN_AFTER_MS / 1000)
        rec["failovers"] = self.switches() - before
        rec["down_after_in_effect_ms"] = self.down_after
        self.wait_ready()
        return settle(rec, self.sentinel_master())

    def close(self):
        for n in self.nodes:
            n.kill9()
        for s in self.sentinels:
            self.ctx.kill(s.proc)


class DiscoveryWatch:
    """Asks each watcher's discovery for the master every millisecond, in a thread each, and keeps
    the first time (time.monotonic) it names `port`."""

    def __init__(self, watch_ports, port):
        self.first = [None] * len(watch_ports)
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._poll, args=(i, wp, port), daemon=True)
                        for i, wp in enumerate(watch_ports)]
        for t in self.threads:
            t.start()

    def _poll(self, i, watch_port, port):
        c = rcon(watch_port, 1)
        while not self.done.is_set() and self.first[i] is None:
            try:
                _, named = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME_OURS)
                if int(named) == port:
                    self.first[i] = now()
            except (redis.RedisError, OSError, TypeError, ValueError):
                pass
            time.sleep(0.001)

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(timeout=5)


def _failovers_between(side, rec):
    """+switch-master events Sentinel logged since the kill (1 is one failover)."""
    n = side.switches() - rec.pop("_switches_before", 0)
    rec["failovers"] = n
    return n


def _stop_for(pid, secs):
    os.kill(pid, signal.SIGSTOP)
    t = now()
    time.sleep(secs)
    os.kill(pid, signal.SIGCONT)
    return t


def _role(port):
    try:
        return replication(port).get("role")
    except (redis.RedisError, OSError):
        return None



def bench(ctx, cfg, results):
    """Runs every case, both sides interleaved per repetition; results["sidebyside"]."""
    runs = []
    cases = [c for c in os.environ.get("BENCH_SIDEBYSIDE_CASES", ",".join(CASES)).split(",") if c]
    if set(cases) - set(CASES):
        raise BenchError("BENCH_SIDEBYSIDE_CASES: unknown case(s) %s (known: %s)" % (
            ", ".join(sorted(set(cases) - set(CASES))), ", ".join(CASES)))

    def record(case, variant, rec, rep):
        rec.update({"case": case, "variant": variant, "rep": rep})
        runs.append(rec)
        log("sidebyside %-10s %-9s %-12s rep %d: writable %s ms, lost %s of %s, pause %.0f ms, failovers %s, "
            "threshold in effect %s ms" % (
                case, variant, rec.get("side") or rec.get("method"), rep,
                "-" if rec.get("client_writable_ms", rec.get("writable_ms")) is None
                else "%.0f" % rec.get("client_writable_ms", rec.get("writable_ms")),
                rec.get("lost"), rec.get("acked"), rec.get("longest_pause_ms") or 0, rec.get("failovers", "-"),
                rec.get("down_after_in_effect_ms", "-")))

    for mr in cfg["min_replicas"]:
        variant = "min-replicas %d" % mr
        t = now()
        sides = [OursSide(ctx, "wo%d" % mr, mr), SentinelSide(ctx, "ws%d" % mr, mr)]
        # The kill is where our watcher has strong evidence and waits down_after / 2: Sentinel also
        # at that threshold, beside the 1000 ms pair.
        kill_sides = sides + ([SentinelSide(ctx, "wh%d" % mr, mr, down_after=DOWN_AFTER_MS // 2)] if "kill" in cases else [])
        log("sidebyside: %s topologies up in %.1fs" % (variant, now() - t))
        try:
            if mr == cfg["min_replicas"][0]:
                for rep in range(cfg["switch_reps"] if "switchover" in cases else 0):
                    for s in sides if rep % 2 == 0 else sides[::-1]:
                        if s.side not in cfg.get("switch_sides", ["ours", "sentinel"]):
                            continue
                        rec = s.switch(rep, cfg["switch_timeout_s"])
                        rec["side"] = s.side
                        record("switchover", variant, rec, rep)
                        if ctx.smoke and s.side == "ours" and rec["lost"]:
                            raise BenchError("ours lost %d acknowledged writes in a planned switchover through "
                                             "the Sentinel client" % rec["lost"])
                for rep in range(cfg["sigstop_reps"] if "sigstop" in cases else 0):
                    for s in sides if rep % 2 == 0 else sides[::-1]:
                        record("sigstop", variant, s.sigstop(rep), rep)
                for rep in range(cfg["agent_stop_reps"] if "agent-stop" in cases else 0):
                    record("agent-stop", variant, sides[0].agent_stopped(rep), rep)
            # Before the kills: the smoke's last kill leaves a side without its old master.
            for rep in range(cfg.get("partition_reps", 0) if "partition" in cases else 0):
                for s in sides if rep % 2 == 0 else sides[::-1]:
                    rec = s.partition(rep, cfg["partition_cut_s"])
                    record("partition", variant, rec, rep)
                    log("sidebyside partition %s %s: +odown %.0f ms and +switch-master %.0f ms after the cut (%s); "
                        "old master acknowledged %.0f ms after the cut (%d writes, lost %d), "
                        "NOREPLICAS %d, after the heal %d; a linked replica %.1f s after the heal" % (
                            variant, s.side, rec["noticed_ms"], rec["switch_master_ms"], rec["event_source"],
                            rec["inside_acked_after_cut_ms"], rec["inside_acked_during_cut"],
                            rec["inside_lost"], rec["inside_noreplicas"], rec["inside_acked_after_heal"], rec["reattach_s"]))
            for rep in range(cfg["kill_reps"] if "kill" in cases else 0):
                for s in kill_sides[rep % 3:] + kill_sides[:rep % 3]:
                    if cfg.get("no_recovery") and rep == cfg["kill_reps"] - 1:
                        s.recover = False
                    record("kill", variant, s.kill(rep), rep)
        finally:
            for s in kill_sides if "kill" in cases else sides:
                s.close()
    results["sidebyside"] = {"config": cfg, "down_after_ms": DOWN_AFTER_MS, "runs": runs, "cases": cases,
                             "not_measured": NOT_MEASURED}


CASES = ["switchover", "sigstop", "agent-stop", "partition", "kill"]

# What the benchmark does not measure (said in the report).
NOT_MEASURED = ["broker restart (the benchmark shares the machine's RabbitMQ with other work; the docker "
                "broker_restart scenario covers agents only)"]


# ---------------------------------------------------------------------------------------------
# the report section (report.py calls report_section; no chart)

def fence_note(rs):
    """Ours: in how many rounds the eject waited for the write fence, and how long (the watcher's log)."""
    if not rs or rs[0]["side"] != "ours":
        return ""
    w = [r["fence_wait_ms"] for r in rs if r.get("fence_wait_ms")]
    return "; the eject waited for the fence in %d of %d rounds%s" % (
        len(w), len(rs), " (%s ms after the master was last heard)" % _fig(w) if w else "")


def _med(vals):
    v = sorted(x for x in vals if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _fig(vals, digits=0):
    v = [x for x in vals if x is not None]
    if not v:
        return "—"
    fmt = "%%.%df" % digits
    return "%s (%s–%s, n=%d)" % (fmt % _med(v), fmt % min(v), fmt % max(v), len(v))


def report_section(res):
    runs = res["runs"]
    cfg = res["config"]
    L = ["## `trove-guestctl watch` side by side with Redis Sentinel (same client)", ""]
    L.append(
        "One writer, redis-py 8.1 `Sentinel(...).master_for(name)` with 0.5 s socket timeouts, in a tight `SET` "
        "loop; pointed at **3 real Sentinels** (quorum 2, `down-after-milliseconds %d`) over 3 plain redis-servers, "
        "or at **two `trove-guestctl watch` discovery endpoints** (`--down-after-ms %d`) over 3 agents, each "
        "supervising its redis-server. All on loopback, one shared RabbitMQ. Acknowledged writes lost are counted "
        "against the final master. Figures: median (min–max, n rounds); sides interleaved within each round."
        % (res["down_after_ms"], res["down_after_ms"]))
    L.append("")
    L.append(
        "Thresholds: our watcher waits `down_after` / 2 when the evidence is strong (the master's agent gone and a "
        "majority of replicas saw their link reset): after a kill it acts at 500 ms, not 1000. So the kill case "
        "also runs 3 Sentinels at `down-after-milliseconds 500`, and each timing cell names the threshold in effect "
        "(ours from the watcher's own decision log line, `strong=true`). Our failovers are the watchers' "
        "`eject done` log lines; Sentinel's its `+switch-master` events.")
    L.append("")
    L.append(
        "How the client finds the master matters: redis-py's `Sentinel` client asks the sentinels only when a "
        "connection fails or a node answers `READONLY` (it does not subscribe to `+switch-master`). After "
        "`SENTINEL FAILOVER` the old master stays a writable master until Sentinel converts it, so the client keeps "
        "writing there and those writes are lost; our promote fences and demotes the old master at once, so the "
        "client's next write gets `READONLY` and it asks discovery again. After a kill the client retries, asking "
        "the sentinels or watchers each time, until they name a master that takes the write.")
    L.append("")
    rows = []
    sides = ["ours", "sentinel", "sentinel-%d" % (res["down_after_ms"] // 2)]

    def sel(case, side, variant=None):
        return [r for r in runs if r["case"] == case and r["side"] == side and (variant is None or r["variant"] == variant)]

    def thr(rs, side):
        """The threshold in effect over the rounds `rs`, as the cell's label."""
        if not rs:
            return ""
        if side != "ours":
            return "down-after-milliseconds %s" % rs[0].get("down_after_in_effect_ms", res["down_after_ms"])
        known = [r["strong_evidence"] for r in rs if "strong_evidence" in r]
        return "down_after %d (%d ms with strong evidence: %s)" % (
            res["down_after_ms"], res["down_after_ms"] // 2,
            "%d of %d rounds" % (sum(known), len(known)) if known else "not recorded")

    def row(case, variant, what, cell, timing=False):
        """One row over the three sides: cell(rounds) for each; "not run" where a side has none."""
        out = [what]
        for side in sides:
            rs = sel(case, side, variant)
            if not rs:
                out.append("not run")
                continue
            c = cell(rs)
            out.append("%s; at %s" % (c, thr(rs, side)) if timing else c)
        rows.append(out)

    def count(k):
        return lambda rs: "%d in %d rounds" % (sum(r.get(k) or 0 for r in rs), len(rs))

    def rounds(pred):
        return lambda rs: "%d of %d" % (sum(1 for r in rs if pred(r)), len(rs))

    def col(k, digits=0):
        return lambda rs: _fig([r.get(k) for r in rs], digits)

    for variant in sorted({r["variant"] for r in runs if r["case"] == "kill"}):
        row("kill", variant, "kill -9 of the master, %s: kill → first write acknowledged through the client (ms)" % variant,
            col("client_writable_ms"), timing=True)
        row("kill", variant, "kill -9, %s: acknowledged writes lost (final master)" % variant, col("lost"))
        row("kill", variant, "kill -9, %s: failovers per round (ours: `eject done` log lines; Sentinel: +switch-master "
            "events)" % variant, col("failovers"))
        row("kill", variant, "kill -9, %s: rounds with more than one failover" % variant,
            rounds(lambda r: (r.get("failovers") or 0) > 1))
        row("kill", variant, "kill -9, %s: old master back → replica of the new one, linked (s)" % variant,
            col("reattach_s", 1))
    if any(r["case"] == "switchover" for r in runs):
        v = None
        row("switchover", v, "planned switchover (promote-to-replica-source vs SENTINEL FAILOVER): acknowledged writes "
            "lost", col("lost"))
        row("switchover", v, "planned switchover: longest pause seen by the client (ms)", col("longest_pause_ms"))
        row("switchover", v, "planned switchover: until every node is linked to the new master (ms)", col("all_linked_ms"))
        row("switchover", v, "planned switchover: from the command until the new master takes writes (ms)", col("writable_ms"))
        row("switchover", v, "planned switchover: from the command until discovery names the new master (ms; ours: the "
            "first of the two watchers, asked every millisecond)",
            lambda rs: _fig([min((t for t in r.get("announced_ms") or [] if t is not None), default=None) for r in rs]))
    if any(r["case"] == "sigstop" for r in runs):
        row("sigstop", None, "false positive: SIGSTOP of the master's Redis for 0.5 × down_after: failovers (expected 0)",
            count("failovers"))
        row("sigstop", None, "SIGSTOP 0.5 × down_after: acknowledged writes lost", col("lost"))
    if any(r["case"] == "agent-stop" for r in runs):
        row("agent-stop", None, "false positive: the master's agent killed, its Redis serving: failovers (expected 0; "
            "Sentinel: n/a, no agent)", count("failovers"))
    for variant in sorted({r["variant"] for r in runs if r["case"] == "partition"}):
        row("partition", variant, "partition of the master, %s: cut → first write acknowledged through the client (ms)"
            % variant, col("client_writable_ms"), timing=True)
        row("partition", variant, "partition, %s: cut → noticed, `+odown` on the pub/sub (ms; ours: the acting "
            "watcher's; Sentinel: the first of its 3 sentinels')" % variant, col("noticed_ms"), timing=True)
        row("partition", variant, "partition, %s: cut → failover announced, `+switch-master` (ms); ours holds the "
            "eject back, by design, until the cut-off master's write fence must have stopped its writes "
            "(`min_replicas_max_lag` + 2.5 s after it was last heard) when the master reported one" % variant,
            lambda rs: col("switch_master_ms")(rs) + fence_note(rs), timing=True)
        row("partition", variant, "partition, %s: the cut-off master kept acknowledging the inside writer for (ms after "
            "the cut)" % variant, col("inside_acked_after_cut_ms"))
        row("partition", variant, "partition, %s: writes the cut-off master acknowledged during the cut" % variant,
            col("inside_acked_during_cut"))
        row("partition", variant, "partition, %s: inside writer's acknowledged writes lost (final master)" % variant,
            col("inside_lost"))
        row("partition", variant, "partition, %s: rounds with `NOREPLICAS` replies to the inside writer; cut → first one "
            "(ms)" % variant, lambda rs: "%s; %s" % (rounds(lambda r: r["inside_noreplicas"] > 0)(rs),
                                                    col("inside_first_noreplicas_ms")(rs)))
        row("partition", variant, "partition, %s: client's acknowledged writes lost (final master)" % variant, col("lost"))
        row("partition", variant, "partition, %s: writes the old master acknowledged after the heal (second writable "
            "master)" % variant, col("inside_acked_after_heal"))
        row("partition", variant, "partition, %s: heal → old master a linked replica of the new one (s)" % variant,
            col("reattach_s", 1))
        row("partition", variant, "partition, %s: rounds with more than one failover" % variant,
            rounds(lambda r: (r.get("failovers") or 0) > 1))
    L.append("| Case | trove-guestctl watch (`--down-after-ms %d`) | Redis Sentinel, `down-after-milliseconds %d` "
             "(same run) | Redis Sentinel, `down-after-milliseconds %d` (same run; kill only) |"
             % (res["down_after_ms"], res["down_after_ms"], res["down_after_ms"] // 2))
    L.append("|---|---|---|---|")
    for r in rows:
        L.append("| " + " | ".join(r) + " |")
    L.append("")
    if any(r["case"] == "partition" for r in runs):
        L.append(
            "Partition: the master's Redis port is cut with iptables on loopback (our own chain, jumped to from "
            "INPUT: TCP packets to and from that port whose other end is 127.0.0.1 are dropped), so clients, "
            "replicas, sentinels and watchers lose it while a second writer **inside the partition** (its socket "
            "bound to 127.0.0.2, `SET`s 1 ms apart straight to the old master; `protected-mode no` on every node "
            "for it, all still bind 127.0.0.1) keeps writing through the cut and after the heal; without the fence "
            "the old master acknowledges it until the heal and after. On our side the master's agent is also frozen (SIGSTOP) for the cut and resumed "
            "(SIGCONT) at the heal: on one host its RabbitMQ link cannot be cut alone. Each round checks that a "
            "`PING` from 127.0.0.1 times out and one from 127.0.0.2 answers. Heal rule: %s s after the cut, but "
            "never before a survivor is master. `NOREPLICAS` counts only those replies from Redis, not connection "
            "errors; `min-replicas-max-lag` is Redis's default 10 s on Sentinel's side; on ours it is the agents' "
            "`min_replicas_max_lag` (default 2 s), and with `fence_majority` (on by default) a master of 2 replicas "
            "needs 1 of them whatever `min_replicas_to_write` says, so our master is fenced in both variants. Both writers run through the whole round; lost "
            "writes are counted against the final master once the old master follows it. `+odown` and "
            "`+switch-master` are timed by a `PSUBSCRIBE *` subscriber in the benchmark's process on every sentinel's "
            "or watcher's port, each event stamped on arrival on the clock of the cut: ours from the watcher that "
            "decided (the one whose log has the round's decision line), Sentinel's from the first sentinel to publish "
            "it; a round in which either never arrives fails."
            % cfg.get("partition_cut_s"))
        L.append("")
    if NOT_MEASURED:
        L.append("Not measured here: " + "; ".join(NOT_MEASURED) + ".")
        L.append("")
    cases = "" if set(res.get("cases", CASES)) == set(CASES) else "; only the case(s) %s" % ", ".join(res["cases"])
    L.append("Configuration: %s%s." % (", ".join("%s %s" % (k, v) for k, v in sorted(cfg.items())), cases))
    L.append("")
    return L
