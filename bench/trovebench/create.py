"""Replica creation: N replicas of one master holding a given amount of data, through the agent
(trove-guestctl create-replicas) and by hand (REPLICAOF on plain redis-servers of the same master),
diskless sync on and off. Done = every replica linked and caught up with the master's offset."""

import json
import os
import subprocess
import time

from .common import BenchError, Fleet, RedisNode, log, now, populate, rcon, server_identity
from .agentlog import rpc_spans

REPLICA_CONFIG = "slave-read-only yes\n"


def source_config(diskless):
    # Trove's replica_source.config.template, with the diskless switch the run asks for.
    return "repl-diskless-sync %s\nrepl-diskless-sync-delay 10\n" % ("yes" if diskless else "no")


class CreateBench:
    def __init__(self, ctx, max_replicas, tag="cr", env=None):
        self.ctx = ctx
        self.fleet = Fleet(ctx, tag, 1 + max_replicas, env=env)
        self.master = self.fleet.guests[0]
        self.replicas = self.fleet.guests[1:]
        self.hand = [RedisNode(ctx, "%shm%d" % (tag, i + 1)) for i in range(max_replicas)]
        self.data = None

    def fill(self, mb):
        c = rcon(self.master.port, timeout=600)
        c.flushall()
        t = now()
        keys, mem = populate(self.master.port, mb, con=c)
        self.data = {"mb": mb, "keys": keys, "used_memory": mem, "fill_s": now() - t}
        log("master filled: %d keys, used_memory %.0f MiB in %.1fs" % (keys, mem / 2**20, now() - t))
        return self.data

    def master_offset(self):
        return int(rcon(self.master.port).execute_command("ROLE")[1])

    def _sync_full(self):
        return int(rcon(self.master.port).info("stats")["sync_full"])

    # -- through the agent ------------------------------------------------------------------

    def ours(self, n, diskless):
        reps = self.replicas[:n]
        full0 = self._sync_full()
        wall0 = time.time()
        if diskless:
            took, _, report, _ = self.fleet.ctl("create-replicas", "--replica-of", self.master.id, *[r.id for r in reps],
                                                timeout=3600)
            driver = "trove-guestctl create-replicas"
        else:
            took, report = self._ours_calls(reps, diskless)
            driver = "create.rs's RPC sequence via trove-guestctl call"
        wall1 = time.time()
        off = self.master_offset()
        for r in reps:
            role = rcon(r.port).execute_command("ROLE")
            if role[0] != "slave" or role[3] != "connected" or int(role[4]) < off - 1000:
                raise BenchError("%s not linked after create: %s" % (r.id, role))
        full = self._sync_full() - full0
        spans = rpc_spans([self.master, *reps], wall0, wall1)
        self._teardown_ours(reps)
        return {"method": "ours", "n": n, "diskless": diskless, "total_ms": took * 1000, "driver": driver,
                "sync_full_delta": full, "report": report if isinstance(report, dict) else None, "spans": spans}

    def _ours_calls(self, reps, diskless):
        """create.rs's calls, with the diskless setting the CLI cannot choose (it always sends
        Trove's template, which says diskless yes)."""
        t0 = now()
        m = self.master
        self.fleet.call(m, "backup_required_for_replication")
        info = {"name": "Replication snapshot", "instance_id": m.id, "replica_count": len(reps),
                "enable_persistence": False, "replica_number": 1, "state": "NEW"}
        snap = self.fleet.call(m, "get_replication_snapshot", {"snapshot_info": info,
                                                             "replica_source_config": source_config(diskless)},
                               timeout=1800)
        env = dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.fleet.inventory)
        procs = []
        for r in reps:
            args = {"replica_info": {"master": snap["master"]}, "slave_config": REPLICA_CONFIG, "restart": False}
            procs.append(subprocess.Popen([self.ctx.ctl_bin, "call", r.id, "attach_replica", json.dumps(args),
                                           "--timeout", "1800"], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p, r in zip(procs, reps):
            out, err = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise BenchError("attach_replica on %s failed: %s %s" % (r.id, out, err[-1000:]))
        took = now() - t0
        self.fleet.write_inventory({r.id: m.id for r in reps})
        return took, None

    def _teardown_ours(self, reps):
        env = dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.fleet.inventory)
        for r in reps:  # one at a time: each rewrites the inventory
            self.fleet.ctl("detach-replica", r.id)
        # The next round may attach by raw calls (_ours_calls), which carry no epoch: hand the
        # guests back to epoch-less callers.
        self.fleet.ctl("release")
        for r in reps:
            rcon(r.port, timeout=600).flushall()
        del env

    # -- by hand ------------------------------------------------------------------------------

    def hand_made(self, n, diskless):
        nodes = self.hand[:n]
        mc = rcon(self.master.port)
        # The same master settings the agent applies: diskless switch, no delay for one replica,
        # otherwise start as soon as all n wait.
        mc.config_set("repl-diskless-sync", "yes" if diskless else "no")
        mc.config_set("repl-diskless-sync-delay", 0 if n == 1 else 10)
        name, version = server_identity()
        if name == "valkey" or version >= (7, 0, 0):  # the setting exists from Redis 7.0 on, as the agent does
            mc.config_set("repl-diskless-sync-max-replicas", n)
        full0 = self._sync_full()
        cons = [rcon(x.port) for x in nodes]
        for c in cons:
            c.ping()
        t0 = now()
        for c in cons:
            c.execute_command("REPLICAOF", "127.0.0.1", self.master.port)
        done = set()
        target = None
        deadline = t0 + 3600
        while len(done) < n:
            for i, c in enumerate(cons):
                if i in done:
                    continue
                role = c.execute_command("ROLE")
                if role[0] == "slave" and role[3] == "connected":
                    if target is None:
                        target = self.master_offset()
                    if int(role[4]) >= target:
                        done.add(i)
            if now() > deadline:
                raise BenchError("hand-made replicas did not sync")
            time.sleep(0.005)
        took = now() - t0
        full = self._sync_full() - full0
        for c in cons:
            c.execute_command("REPLICAOF", "NO", "ONE")
            c.flushall()
        return {"method": "hand", "n": n, "diskless": diskless, "total_ms": took * 1000, "sync_full_delta": full}
