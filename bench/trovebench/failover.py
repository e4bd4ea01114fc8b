"""Section 2: kill -9 the master (and its agent) under the writer, one replica made to lag first; then
a manual eject-replica-source issued the instant of the kill (no failure detection), beside
Sentinel's automatic failover (its detection included). The writer keeps writing after the failover."""

import json
import os
import signal
import time

import redis

from .common import BenchError, linked_to, log, now, rcon, replication, wait_until
from .switch import OursTrio, SentinelTrio, Writer, count_lost, drop_keys, final_master, longest_pause, monitor, sum_stats


def role_offset(port):
    """The applied offset. Not ROLE's: it says -1 once the master link is gone, while INFO's
    slave_repl_offset keeps the last applied offset (replication-pitfalls.md, 6)."""
    r = rcon(port, timeout=2).info("replication")
    return int(r["slave_repl_offset"]) if r.get("role") == "slave" else int(r["master_repl_offset"])


def _quiet_role(port):
    try:
        return replication(port).get("role")
    except (redis.RedisError, OSError):
        return None


def make_lag(master_port, lagger_port, other_port, lagger_pid):
    """Freeze the lagger's Redis and cut its link so nothing buffered reaches it later; wait until
    the other replica is back on the master (the frozen one cannot be) and has moved ahead."""
    os.kill(lagger_pid, signal.SIGSTOP)
    mc = rcon(master_port)
    mc.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def relinked():
        r = mc.info("replication")
        return int(r.get("connected_slaves", 0)) == 1 and r.get("slave0", {}).get("state") == "online" \
            and int(r["slave0"]["port"]) == other_port
    # The replica notices the cut and reconnects from its once-a-second replicationCron.
    wait_until("the current replica to re-link", relinked, timeout=15, interval=0.005)
    time.sleep(0.25)


def losses(port, rec):
    """Acknowledged writes missing on `port`: all of the round's, and those acknowledged after the
    new master took its first write (rec's "_acked", "_t", "_t_failover")."""
    after = [n for n, t in zip(rec["_acked"], rec["_t"]) if t > rec["_t_failover"]]
    return {"lost": count_lost(port, rec["_acked"], rec["_prefix"]),
            "lost_after_failover": count_lost(port, after, rec["_prefix"])}


def run_failover(ctx, name, ports, master_port, lagger_port, lagger_pid, kill, command, timeout, post_s,
                 writer_kw=None, named_master=None):
    """Writer on; lag one replica; kill the master; run `command()` (or nothing); monitor; the
    writer goes on for post_s after the failover so that writes acknowledged by the new master
    exist and the loss check covers them. When the survivors do not settle on one master within
    30 s, losses are counted on the master `named_master()` names (Sentinel's), and the round
    records the masters it saw."""
    survivors = [p for p in ports if p != master_port]
    before = sum_stats(survivors)
    w = Writer(ctx, ports, name, **(writer_kw or {}))
    time.sleep(0.5)
    other = [p for p in survivors if p != lagger_port][0]
    make_lag(master_port, lagger_port, other, lagger_pid)
    box = {}

    def start():
        kill()
        box["t_kill"] = now()
        os.kill(lagger_pid, signal.SIGCONT)
        box["offsets"] = {p: role_offset(p) for p in survivors}
        return command()

    m = monitor(survivors, survivors, start, lambda nm: [p for p in survivors if p != nm], timeout)
    time.sleep(post_s)
    data = w.stop()
    after = sum_stats(survivors)
    t0 = m["t0"]
    offsets = box.get("offsets", {})
    new = m["new_master"]
    if new is None:
        raise BenchError("%s: no survivor became writable within %s s of the kill" % (name, timeout))
    # Lost writes are counted on the master at the end, asked of the survivors themselves (one
    # may have failed over a second time by then).
    final = final_master(survivors, None, timeout=30.0)
    masters_at_end = None
    if final is None and named_master is not None:
        masters_at_end = [p for p in survivors if _quiet_role(p) == "master"]
        final = named_master()
        log("%s: masters at the end %s; counting against the one it names, %s" % (name, masters_at_end, final))
    if final is None:
        raise BenchError("%s: not exactly one master among the survivors at the end" % name)
    t_kill = box.get("t_kill", t0)
    t_failover = t0 + m["writable_s"]
    acked_after = sum(1 for t in data["t"] if t > t_failover)
    pause, _ = longest_pause(data["t"], t0, t0 + (m["all_linked_s"] or m["writable_s"] or timeout) + 0.3)
    # Through the client: the first write sent after the kill that was acknowledged.
    sent_t = data.get("sent_t")
    firsts = [t for s_, t in zip(sent_t, data["t"]) if s_ > t_kill] if sent_t else [t for t in data["t"] if t > t_kill]
    rec = {
        "method": name,
        "client": "redis-py Sentinel" if (writer_kw or {}).get("sentinels") else "naive (ROLE on every node)",
        "client_writable_ms": (firsts[0] - t_kill) * 1000 if firsts else None,
        "writable_ms": m["writable_s"] * 1000,
        "all_linked_ms": None if m["all_linked_s"] is None else m["all_linked_s"] * 1000,
        "command_done_ms": None if m["command_done_s"] is None else m["command_done_s"] * 1000,
        "timed_out": m["timed_out"],
        "longest_pause_ms": pause * 1000,
        "acked": len(data["acked"]),
        "acked_before_kill": sum(1 for t in data["t"] if t <= t_kill),
        "acked_after_failover": acked_after,
        "post_failover_s": post_s,
        "offsets_at_kill": {str(k): v for k, v in offsets.items()},
        "chosen": new,
        "final_master": final,
        "second_failover": final != new,
        "masters_at_end": masters_at_end,
        "lagger": lagger_port,
        "chosen_most_current": bool(offsets) and offsets.get(new) == max(offsets.values()),
        "offset_gap_bytes": (max(offsets.values()) - min(offsets.values())) if offsets else None,
        "sync_full_delta": after["sync_full"] - before["sync_full"],
        "handle": m["handle"],
        "_acked": data["acked"], "_t": data["t"], "_t_failover": t_failover,
        "_prefix": w.prefix,
        "_sent": data["sent"],
    }
    rec.update(losses(final, rec))
    if acked_after == 0:
        raise BenchError("%s: the writer acknowledged no write in the %.1f s after the failover, so the loss "
                         "check would cover none (events: %s)" % (name, post_s, data["events"][-5:]))
    return rec


def settle(rec, final=None):
    """Recount against `final` if the master changed after the round; drop the round's keys."""
    if final is not None and final != rec["final_master"]:
        rec["final_master"] = final
        rec["second_failover"] = True
        rec.update(losses(final, rec))
    drop_keys(rec["final_master"], rec["_prefix"], rec["_sent"])
    for k in ("_acked", "_t", "_t_failover", "_prefix", "_sent", "handle"):
        rec.pop(k, None)
    return rec


class OursFailover(OursTrio):
    name = "ours"
    label = "manual trove-guestctl eject-replica-source, issued at the kill (no failure detection)"

    def __init__(self, ctx):
        super().__init__(ctx, tag="uf")

    def fail(self, rep, timeout, post_s):
        self.check()
        m = self.master()
        reps = self.replicas()
        lagger = reps[rep % 2]
        box = {}

        def kill():
            m.kill9()

        def command():
            box["p"] = self.fleet.ctl_popen("eject-replica-source", m.id)
            return box["p"]

        rec = run_failover(self.ctx, self.name, self.ports, m.port, lagger.port, lagger.redis_pid(), kill, command,
                           timeout, post_s)
        p = box["p"]
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise BenchError("eject failed (%d): %s %s" % (p.returncode, out, err[-2000:]))
        rec["total_ms_reported"] = json.loads(out).get("total_ms")
        settle(rec)
        if not getattr(self, "recover", True):
            return rec
        # Bring the dead guest back as a replica of the new master (not timed).
        m.start()
        self.fleet.wait_ping(m)
        new = next(g for g in self.fleet.guests if g.port == rec["final_master"])
        self.fleet.ctl("create-replicas", "--replica-of", new.id, m.id)
        return rec


class SentinelFailover(SentinelTrio):
    name = "sentinel"
    label = "Sentinel automatic failover: detection (down-after 1000 ms) and failover, redis-py Sentinel client"

    def __init__(self, ctx):
        super().__init__(ctx, down_after=1000, failover_timeout=10000, tag="sf")

    def fail(self, rep, timeout, post_s):
        mp = self.check()
        self.wait_sentinels()
        node = next(n for n in self.nodes if n.port == mp)
        reps = sorted(p for p in self.ports if p != mp)
        lagger = reps[rep % 2]
        lagger_pid = int(rcon(lagger).info("server")["process_id"])
        switches = self.switches()

        rec = run_failover(self.ctx, self.name, self.ports, mp, lagger, lagger_pid, node.kill9, lambda: None, timeout,
                           post_s, writer_kw={"sentinels": self.addrs()}, named_master=self.sentinel_master)
        rec["sentinel_named_master"] = self.sentinel_master()
        if not getattr(self, "recover", True):
            rec["failovers"] = self.switches() - switches
            rec["second_failover"] = rec["second_failover"] or rec["failovers"] > 1
            return settle(rec)
        # Bring the dead node back under whatever master there is now and let the sentinels see it
        # (not timed).
        node.start()
        survivors = [p for p in self.ports if p != mp]

        def follows_the_master():
            ms = [p for p in survivors if replication(p).get("role") == "master"]
            if len(ms) != 1:
                return False
            m = ms[0]
            if not linked_to(node.port, m):
                r = replication(node.port)
                if r.get("role") != "slave" or int(r.get("master_port", 0)) != m:
                    rcon(node.port).execute_command("REPLICAOF", "127.0.0.1", m)
                return False
            return True
        wait_until("old master re-linked under the new master", follows_the_master, timeout=90, interval=0.2)
        self.wait_sentinels(timeout=90)
        # +switch-master events since the kill (one sentinel's log): 1 is one failover.
        rec["failovers"] = self.switches() - switches
        rec["second_failover"] = rec["second_failover"] or rec["failovers"] > 1
        return settle(rec, self.master_port())  # Sentinel may have failed over once more
