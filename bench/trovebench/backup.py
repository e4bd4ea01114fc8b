"""Diagnostic "backup": create_backup and prepare-from-backup through the agent beside the
hand-made pipeline (redis-cli --rdb | gzip | openssl enc | swift upload) on the same data, key and
Swift, and the master's write latency at rest, during a backup on its replica and on itself.

    python -m trovebench.backup writer PORT   (the latency writer: SET in a loop until SIGUSR1)
"""

import array
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

from .common import (ROOT, SERVER_BIN, BenchError, Fleet, Guest, base_conf, free_port, log, now, percentile, rcon,
                     wait_until)

SWIFT_USER, SWIFT_KEY = "test:tester", "testing"
AES_KEY = "trovebench-backup-key"
OPENSSL = "openssl enc -aes-256-cbc -md sha512 -pbkdf2 -iter 10000 -salt"


def median(vals):
    return percentile(vals, 50)


def swift_login():
    """Starts scripts/swift.sh's Swift (idempotent); returns (auth URL, storage URL, token)."""
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "swift.sh"), "start"], capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        raise BenchError("scripts/swift.sh start failed: %s" % p.stderr[-1000:])
    auth = p.stdout.strip().splitlines()[-1]
    req = urllib.request.Request(auth, headers={"X-Storage-User": SWIFT_USER, "X-Storage-Pass": SWIFT_KEY})
    with urllib.request.urlopen(req, timeout=30) as r:
        return auth, r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


def swift_head(url, token):
    req = urllib.request.Request(url, method="HEAD", headers={"X-Auth-Token": token})
    with urllib.request.urlopen(req, timeout=60) as r:
        return dict(r.headers)


class Conductor:
    """An oslo.messaging server on the agents' conductor topic: records their update_backup casts
    and sends create_backup / prepare casts with a context holding the Swift token, as Trove does."""

    def __init__(self, ctx, topic, token):
        import oslo_messaging
        from oslo_config import cfg
        from oslo_messaging.rpc import dispatcher
        from .py_guest import register_tracing_opts
        conf = cfg.ConfigOpts()
        conf([], project="trovebench-backup")
        register_tracing_opts(conf)
        oslo_messaging.set_transport_defaults("trove")
        self.transport = oslo_messaging.get_rpc_transport(conf, url=ctx.amqp_url)
        self.token = token
        self.reports = []
        self.cond = threading.Condition()
        outer = self

        class Endpoint:
            target = oslo_messaging.Target(version="1.99")

            def update_backup(self, ctxt, **kw):
                with outer.cond:
                    outer.reports.append((now(), kw))
                    outer.cond.notify_all()

            def heartbeat(self, ctxt, **kw):
                pass

        self.server = oslo_messaging.get_rpc_server(
            self.transport, oslo_messaging.Target(topic=topic, server="bench"), [Endpoint()], executor="threading",
            access_policy=dispatcher.DefaultRPCAccessPolicy)
        self.server.start()
        ctx.queues.update({topic, "%s.bench" % topic})
        self.om = oslo_messaging

    def cast(self, guest, method, **kw):
        client = self.om.get_rpc_client(self.transport, self.om.Target(topic="guestagent.%s" % guest.id, version="1.0"))
        client.cast({"auth_token": self.token}, method, **kw)

    def wait_backup(self, backup_id, timeout):
        """The COMPLETED report of `backup_id`: (monotonic time it arrived, its fields)."""
        deadline = now() + timeout
        with self.cond:
            while True:
                for t, kw in self.reports:
                    if kw.get("backup_id") == backup_id and kw.get("state") in ("COMPLETED", "FAILED"):
                        if kw["state"] != "COMPLETED":
                            raise BenchError("backup %s FAILED: %s" % (backup_id, kw))
                        return t, kw
                left = deadline - now()
                if left <= 0:
                    raise BenchError("no COMPLETED report for backup %s within %.0fs" % (backup_id, timeout))
                self.cond.wait(left)

    def close(self):
        self.server.stop()
        self.server.wait()
        self.transport.cleanup()


def backup_info(backup_id, container, swift_url):
    """Trove's taskmanager's backup_info for create_backup."""
    return {"id": backup_id, "name": "bench", "description": None, "instance_id": "bench", "backup_type": "RedisBackup",
            "checksum": None, "parent": None, "datastore": "redis", "datastore_version": "7.0",
            "storage_driver": "swift", "swift_container": container, "swift_url": swift_url}


def fill(port, mb, value_bytes=1024):
    """About `mb` MiB of values that compress like text (hex of random bytes, ~2:1)."""
    c = rcon(port, timeout=600)
    keys = max(1, int(mb * 1024 * 1024 / value_bytes))
    pipe = c.pipeline(transaction=False)
    for i in range(keys):
        pipe.set("k:%d" % i, os.urandom(value_bytes // 2).hex())
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return keys


class Hand:
    """What an operator would script, with the same key (through a file, never an argument)."""

    def __init__(self, ctx, auth, container):
        self.ctx = ctx
        self.keyfile = ctx.path("backup", "aes.key")
        with open(self.keyfile, "w") as f:
            f.write(AES_KEY)
        os.chmod(self.keyfile, 0o600)
        self.container = container
        self.swift = [os.path.join(os.path.dirname(sys.executable), "swift"), "-A", auth, "-U", SWIFT_USER,
                      "-K", SWIFT_KEY]

    def sh(self, script, timeout=3600):
        p = subprocess.run(["bash", "-c", "set -euo pipefail; " + script], capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode != 0:
            raise BenchError("hand-made pipeline failed (%d): %s" % (p.returncode, p.stderr[-1500:]))

    def backup(self, port, name):
        q = subprocess.list2cmdline
        self.sh("redis-cli -p %d --rdb - 2>/dev/null | gzip | %s -pass file:%s | %s upload --object-name %s %s -" % (
            port, OPENSSL, self.keyfile, q(self.swift), name, self.container))

    def restore(self, name, tag, keys, timeout):
        """download | openssl -d | gunzip > dump.rdb, then redis-server; seconds until it serves all keys."""
        d = self.ctx.path("backup", "hand-" + tag)
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        port = free_port()
        conf = os.path.join(d, "redis.conf")
        with open(conf, "w") as f:
            f.write(base_conf(d, port, logfile=os.path.join(d, "redis.log")))
        q = subprocess.list2cmdline
        t0 = now()
        self.sh("%s download %s %s -o - | %s -d -pass file:%s | gzip -d > %s" % (
            q(self.swift), self.container, name, OPENSSL, self.keyfile, os.path.join(d, "data", "dump.rdb")))
        p = self.ctx.spawn([SERVER_BIN, conf], os.path.join(d, "stdout.log"))
        self.ctx.pidfiles.append(os.path.join(d, "redis.pid"))
        wait_until("the hand-made restore to serve %d keys" % keys, lambda: rcon(port, 1).dbsize() == keys,
                   timeout=timeout, interval=0.02)
        took = now() - t0
        self.ctx.kill(p)
        subprocess.run(["rm", "-rf", d])
        return took


def agent_backup(cond, guest, container, swift_url, timeout):
    # The agent's BGSAVE SCHEDULE is refused while a save is running (a save rule's, e.g. under the
    # latency writer), and that backup fails: wait for the node's own save first.
    wait_until("no background save on %s" % guest.id,
               lambda: rcon(guest.port).info("persistence")["rdb_bgsave_in_progress"] in (0, "0"), timeout=600)
    bid = str(uuid.uuid4())
    t0 = now()
    cond.cast(guest, "create_backup", backup_info=backup_info(bid, container, swift_url))
    t1, done = cond.wait_backup(bid, timeout)
    return bid, t1 - t0, done


def agent_restore(ctx, cond, env, done, swift_url, tag, keys, timeout):
    """A fresh agent prepared from the backup: seconds from the prepare cast until Redis serves all keys."""
    fl = Fleet(ctx, "rs" + tag, 0, env=env)
    g = Guest(ctx, "rs" + tag, env=env)
    fl.guests.append(g)
    fl.write_inventory()
    fl.wait_ping(g)
    info = {"id": done["backup_id"], "instance_id": "bench", "location": done["location"], "type": "RedisBackup",
            "checksum": done["checksum"], "storage_driver": "swift", "swift_url": swift_url}
    args = fl.prepare_args(g)
    args.update(backup_info=info, memory_mb=4096)
    t0 = now()
    cond.cast(g, "prepare", **args)
    wait_until("the agent's restore to serve %d keys" % keys,
               lambda: g.proc.poll() is None and rcon(g.port, 1).dbsize() == keys, timeout=timeout, interval=0.02)
    took = now() - t0
    g.kill9()
    subprocess.run(["rm", "-rf", g.dir])
    return took


def latency_phase(ctx, port, seconds=None, during=None):
    """The writer on `port` for `seconds`, or while `during()` runs; its latency figures."""
    out = ctx.path("backup", "writer-%s.json" % uuid.uuid4().hex[:6])
    p = subprocess.Popen([sys.executable, "-m", "trovebench.backup", "writer", str(port), out], stdout=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bench")), text=True)
    ctx.procs.append(p)
    if p.stdout.readline().strip() != "ready":
        raise BenchError("the latency writer did not start")
    t0 = now()
    extra = during() if during else time.sleep(seconds)
    took = now() - t0
    p.send_signal(signal.SIGUSR1)
    p.wait(timeout=60)
    with open(out) as f:
        r = json.load(f)
    r["window_s"] = took
    return r, extra


def writer_main(port, out):
    import redis
    c = redis.Redis(host="127.0.0.1", port=int(port), socket_timeout=30, single_connection_client=True)
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
    lat = array.array("d")
    c.set("lat:0", "x")
    print("ready", flush=True)
    i = 0
    clock = time.perf_counter
    while not stop:
        t = clock()
        c.set("lat:%d" % (i % 10000), i)
        lat.append(clock() - t)
        i += 1
    vals = sorted(lat)
    with open(out, "w") as f:
        json.dump({"n": len(vals), "p50_ms": percentile(vals, 50) * 1e3, "p99_ms": percentile(vals, 99) * 1e3,
                   "max_ms": vals[-1] * 1e3}, f)


def bench(ctx, cfg, results):
    c = dict(cfg["backup"])
    if os.environ.get("BENCH_BACKUP_MB"):  # the data size, overriding the configuration's
        c["mb"] = int(os.environ["BENCH_BACKUP_MB"])
    auth, swift_url, token = swift_login()
    topic = "bench-conductor-%s" % ctx.run_id
    container = "bench-backup-%s" % ctx.run_id
    cond = Conductor(ctx, topic, token)
    env = {"TROVE_GUESTAGENT__CONDUCTOR__TOPIC": topic, "TROVE_GUESTAGENT__BACKUP__AES_CBC_KEY": AES_KEY}
    hand = Hand(ctx, auth, container)
    fl = None
    try:
        fl = Fleet(ctx, "bk", 2, env=env)
        m, r = fl.guests
        t = now()
        keys = fill(m.port, c["mb"])
        con = rcon(m.port, timeout=600)
        con.save()
        rdb = os.path.getsize(os.path.join(m.dir, "data", con.config_get("dbfilename")["dbfilename"]))
        used = int(con.info("memory")["used_memory"])
        log("backup: %d keys, used_memory %.0f MB, RDB %.0f MB (%.1fs)" % (keys, used / 1e6, rdb / 1e6, now() - t))
        timeout = c["timeout_s"]
        runs = []
        for rep in range(c["reps"]):
            for side in (["agent", "hand"] if rep % 2 == 0 else ["hand", "agent"]):
                os.sync()
                if side == "agent":
                    bid, b_s, done = agent_backup(cond, m, container, swift_url, timeout)
                    name = done["location"].rsplit("/", 1)[1]
                    size = int(swift_head(done["location"], token)["Content-Length"])
                    os.sync()
                    r_s = agent_restore(ctx, cond, env, done, swift_url, "%d" % rep, keys, timeout)
                else:
                    name = "hand-%d.gz.enc" % rep
                    t0 = now()
                    hand.backup(m.port, name)
                    b_s = now() - t0
                    size = int(swift_head("%s/%s/%s" % (swift_url, container, name), token)["Content-Length"])
                    os.sync()
                    r_s = hand.restore(name, "%d" % rep, keys, timeout)
                runs.append({"side": side, "rep": rep, "backup_s": b_s, "restore_s": r_s, "object_bytes": size})
                log("backup %-5s rep %d: backup %.1f s, restore %.1f s, object %.1f MB" % (side, rep, b_s, r_s, size / 1e6))
                hand.sh("%s delete %s %s >/dev/null" % (subprocess.list2cmdline(hand.swift), container, name))
        summary = {}
        for side in ("agent", "hand"):
            rs = [x for x in runs if x["side"] == side]
            b, rr = median([x["backup_s"] for x in rs]), median([x["restore_s"] for x in rs])
            summary[side] = {"backup_s": b, "restore_s": rr, "backup_mb_s": rdb / 1e6 / b, "restore_mb_s": rdb / 1e6 / rr,
                             "object_bytes": median([x["object_bytes"] for x in rs])}
        log("backup medians: agent %.1f s / restore %.1f s; hand-made %.1f s / restore %.1f s" % (
            summary["agent"]["backup_s"], summary["agent"]["restore_s"], summary["hand"]["backup_s"],
            summary["hand"]["restore_s"]))

        # The master's write latency: at rest, during a backup on its replica, during one on itself.
        fl.ctl("create-replicas", "--replica-of", m.id, r.id, timeout=3600)
        latency = []
        for rep in range(c["latency_reps"]):
            for phase, on in (("at rest", None), ("backup on the replica", r), ("backup on the master", m)):
                fork0 = int(rcon(m.port).info("stats")["total_forks"])
                if on is None:
                    lat, _ = latency_phase(ctx, m.port, seconds=c["rest_s"])
                    b_s = None
                else:
                    lat, (bid, b_s, done) = latency_phase(
                        ctx, m.port, during=lambda on=on: agent_backup(cond, on, container, swift_url, timeout))
                    hand.sh("%s delete %s %s >/dev/null" % (subprocess.list2cmdline(hand.swift), container,
                                                           done["location"].rsplit("/", 1)[1]))
                st = rcon(m.port).info("stats")
                lat.update({"phase": phase, "rep": rep, "backup_s": b_s,
                            "master_forks": int(st["total_forks"]) - fork0,
                            "latest_fork_ms": int(st["latest_fork_usec"]) / 1e3})
                latency.append(lat)
                log("backup latency %-22s: %d writes, p50 %.2f ms, p99 %.2f ms, max %.1f ms (%.1f s, master forks %d)" % (
                    phase, lat["n"], lat["p50_ms"], lat["p99_ms"], lat["max_ms"], lat["window_s"], lat["master_forks"]))
        results["backup"] = {"config": c, "keys": keys, "used_memory": used, "rdb_bytes": rdb, "runs": runs,
                             "summary": summary, "latency": latency,
                             "pipeline": "redis-cli --rdb - | gzip | %s -pass file:KEYFILE | swift upload "
                                         "--object-name NAME CONTAINER -" % OPENSSL}
    finally:
        if fl:
            fl.close()
        cond.close()
        subprocess.run(hand.swift + ["delete", container], capture_output=True, timeout=600)


def report_section(res):
    from .report import table
    c = res["config"]
    mb = res["rdb_bytes"] / 1e6
    L = ["## Diagnostic: backup and restore, the agent beside the hand-made pipeline", ""]
    L.append("%d keys (%.0f MB used_memory, RDB %.1f MB; 1 KiB values of hex text), AES key and Swift (scripts/swift.sh, "
             "Debian's Swift on loopback) the same for both, %d round(s), interleaved, medians. Agent: `create_backup` "
             "cast until the conductor's COMPLETED `update_backup`; restore: `prepare` with `backup_info` on a fresh "
             "agent until Redis serves every key. Hand-made: `%s`; restore: `swift download | openssl -d | gzip -d > "
             "dump.rdb`, then redis-server until it serves every key. MB/s = RDB MB / seconds." % (
                 res["keys"], res["used_memory"] / 1e6, mb, c["reps"], res["pipeline"]))
    L.append("")
    s = res["summary"]
    a, h = s["agent"], s["hand"]

    def f(v, d=1):
        return "-" if v is None else "%.*f" % (d, v)
    rows = [["backup (s)", f(a["backup_s"]), f(h["backup_s"]), f(a["backup_s"] / h["backup_s"], 2)],
            ["backup (MB/s)", f(a["backup_mb_s"]), f(h["backup_mb_s"]), ""],
            ["restore (s)", f(a["restore_s"]), f(h["restore_s"]), f(a["restore_s"] / h["restore_s"], 2)],
            ["restore (MB/s)", f(a["restore_mb_s"]), f(h["restore_mb_s"]), ""],
            ["object in Swift (MB)", f(a["object_bytes"] / 1e6), f(h["object_bytes"] / 1e6),
             f(a["object_bytes"] / h["object_bytes"], 2)]]
    L.append(table(["Figure", "agent", "hand-made", "agent/hand-made"], rows))
    L.append("")
    L.append("The master's write latency (redis-py, one connection, `SET` in a loop) at rest for %s s, then while the "
             "agent backs up its replica, then while it backs up the master itself; %d round(s), medians over rounds." % (
                 c["rest_s"], c["latency_reps"]))
    L.append("")
    rows = []
    for phase in ("at rest", "backup on the replica", "backup on the master"):
        ls = [x for x in res["latency"] if x["phase"] == phase]
        rows.append([phase, f(median([x["window_s"] for x in ls])), "%d" % median([x["n"] for x in ls]),
                     f(median([x["p50_ms"] for x in ls]), 2), f(median([x["p99_ms"] for x in ls]), 2),
                     f(median([x["max_ms"] for x in ls])), "%d" % median([x["master_forks"] for x in ls]),
                     f(median([x["latest_fork_ms"] for x in ls if x["master_forks"]]), 1)])
    L.append(table(["Master's writes", "window (s)", "writes", "p50 (ms)", "p99 (ms)", "max (ms)", "forks on the master",
                    "master's fork (ms)"], rows))
    L.append("")
    return L


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "writer":
        writer_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
