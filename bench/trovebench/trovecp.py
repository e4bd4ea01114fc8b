"""Trove's control plane as a benchmark: Trove 26's API, taskmanager and conductor (the trove stage's
set-up) create guests, promote and eject; trove-guestctl promotes and ejects on the same guests.

Runs inside `scripts/trove-stage.sh --exec` (MariaDB, the broker container, the stand-ins, the guest
image), started by suite.bench_trove:

    python -m trovebench.trovecp --out F --ctl trove-guestctl --reps N

One round: master; a replica with Trove's stock replica-source template (repl-diskless-sync-delay
10); a replica with delay 0; promote through Trove under a writer; promote twice through
trove-guestctl (there and back, so Trove's view stays true); kill the master, eject through Trove
once its heartbeat has expired; a third replica; kill the master, eject through trove-guestctl.
Times are from a troveclient/trove-guestctl call; Redis is watched directly (ROLE, probe SETs)."""

import argparse
import configparser
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import redis

from .common import log, now
from .switch import Writer, longest_pause

STOCK_TEMPLATE = "repl-diskless-sync yes\nrepl-diskless-sync-delay 10\n"
ZERO_TEMPLATE = "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n"
READY = {"ACTIVE", "HEALTHY"}
FAILED = {"ERROR", "FAILED", "SHUTDOWN"}
FLAVOR = "6"  # tests/trove/trove_standins.py FLAVORS
SERVICES = ("trove-conductor", "trove-taskmanager", "trove-api")


class Ctx:
    """What the writer (switch.Writer) needs of the suite's context."""

    def __init__(self, work):
        self.tmp = work
        self.procs = []
        self.python = sys.executable

    def path(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p


class Stage:
    def __init__(self):
        e = os.environ
        self.run, self.work, self.api = e["TROVE_STAGE_RUN"], e["TROVE_STAGE_WORK"], e["TROVE_STAGE_API"]
        self.conf, self.pids, self.venv = e["TROVE_STAGE_CONF"], e["TROVE_STAGE_PIDS"], e["TROVE_STAGE_VENV"]
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.read(self.conf)
        self.transport_url = cp["DEFAULT"]["transport_url"]
        self.expiry = int(cp["DEFAULT"].get("agent_heartbeat_expiry", "90"))
        self.db = cp["database"]["connection"]
        self.templates = os.path.join(self.work, "templates")
        os.makedirs(os.path.join(self.templates, "redis"), exist_ok=True)
        self.pass_conf = os.path.join(self.work, "etc", "bench.conf")
        with open(self.pass_conf, "w") as f:
            # template_path: Trove's taskmanager renders the replica-source template from here, so
            # the benchmark can switch between the stock one (delay 10) and delay 0
            f.write("[DEFAULT]\nenable_secure_rpc_messaging = False\ntemplate_path = %s/\n" % self.templates)
        self.procs = {}

    def set_delay_template(self, text):
        p = os.path.join(self.templates, "redis", "replica_source.config.template")
        with open(p, "w") as f:
            f.write(text)
        t = time.time() + len(text)  # a distinct mtime per content: Jinja reloads on a changed mtime
        os.utime(p, (t, t))

    def start(self):
        for name in SERVICES:
            out = open(os.path.join(self.work, "%s.bench.out" % name), "w")
            argv = [os.path.join(self.venv, "bin", name), "--config-file", self.conf, "--config-file", self.pass_conf]
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            out.close()
            self.procs[name] = p
            with open(os.path.join(self.pids, "%s.pid" % name), "w") as f:
                f.write(str(p.pid))
        deadline = now() + 90
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError("%s exited at start-up (%s/%s.bench.out)" % (name, self.work, name))
            try:
                with urllib.request.urlopen(self.api + "/", timeout=2) as r:
                    if r.status in (200, 300):
                        break
            except OSError as e:
                if getattr(e, "code", None) in (200, 300):
                    break
            if now() > deadline:
                raise RuntimeError("trove-api did not answer within 90 s")
            time.sleep(0.5)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            try:
                os.unlink(os.path.join(self.pids, "%s.pid" % name))
            except FileNotFoundError:
                pass

    def last_heartbeat(self, instance_id):
        """The conductor's last record of this guest's heartbeat (service_statuses.updated_at, UTC)."""
        import pymysql
        from sqlalchemy.engine import make_url
        u = make_url(self.db)
        c = pymysql.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)
        try:
            with c.cursor() as cur:
                cur.execute("SELECT updated_at FROM service_statuses WHERE instance_id=%s", (instance_id,))
                row = cur.fetchone()
                return row[0] if row else None
        finally:
            c.close()


def tm_calls(work, marker):
    """The agent calls of the taskmanager's last request whose log has `marker`: [(ms since the
    request's first log line, "Executing ..." text)] from trove-taskmanager.log (debug on)."""
    import re
    path = os.path.join(work, "trove-taskmanager.log")
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    req = None
    for ln in reversed(lines):
        if marker in ln:
            m = re.search(r"\[None (req-[0-9a-f-]+)", ln)
            req = m and m.group(1)
            break
    if not req:
        return None
    out, t0 = [], None
    for ln in lines:
        if req not in ln:
            continue
        t = datetime.datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        t0 = t if t0 is None else t0
        m = re.search(r"\] (Executing \S+)", ln)
        if m:
            out.append([round((t - t0) * 1000, 1), m.group(1).rstrip(".")])
        elif "Finished to promote" in ln or "New master enabled" in ln:
            out.append([round((t - t0) * 1000, 1), "done"])
    return out


def docker(*args):
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("docker %s: %s" % (" ".join(args), p.stderr.strip()))
    return p.stdout


class Guest:
    def __init__(self, stage, iid, name):
        ids = docker("ps", "-aq", "--filter", "label=trovestage.run=%s" % stage.run,
                     "--filter", "label=trovestage.instance=%s" % iid).split()
        if len(ids) != 1:
            raise RuntimeError("expected one container for %s, found %d" % (iid, len(ids)))
        info = json.loads(docker("inspect", ids[0]))[0]
        self.id, self.name = iid, name
        self.container = info["Name"].lstrip("/")
        self.ip = info["NetworkSettings"]["Networks"][stage.run]["IPAddress"]
        self.addr = "%s:6379" % self.ip

    def con(self, timeout=2.0):
        return redis.Redis(host=self.ip, port=6379, socket_timeout=timeout, socket_connect_timeout=timeout,
                           decode_responses=True)


def ref(x):
    return x["id"] if isinstance(x, dict) else None


def listing(trove):
    return {i.id: i for i in trove.instances.list()}


def wait_trove(trove, what, pred, timeout=300, interval=0.2, watch=()):
    """Polls `instance list` (it does not call the guests) until pred(instances by id); seconds.
    Fails at once when an instance in `watch` goes ERROR (a killed master may show ERROR meanwhile)."""
    t0 = now()
    while True:
        x = listing(trove)
        for i in x.values():
            if i.id in watch and i.status in FAILED:
                raise RuntimeError("%s: instance %s went %s" % (what, i.name, i.status))
        if pred(x):
            return now() - t0
        if now() - t0 > timeout:
            raise RuntimeError("timed out after %d s waiting for %s: %s" % (
                timeout, what, {i.name: i.status for i in x.values()}))
        time.sleep(interval)


def follows(con, master_ip):
    r = con.execute_command("ROLE")
    return r[0] == "slave" and r[1] == master_ip and r[3] == "connected"


def watch_redis(start, candidates, followers_of, timeout, t_ref=None):
    """Calls start() in a thread, then polls Redis: a probe SET on each candidate (-> writable) and
    ROLE on the others (-> linked, link up). Times (s) from t_ref() if given (read when known),
    else from start."""
    cons = {g.id: g.con() for g in candidates}
    t0 = now()
    box = {}

    def run():
        try:
            box["ret"] = start()
        except BaseException as e:  # noqa: BLE001
            box["err"] = e
        box["done"] = now()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    writable_at, new, linked, fcons = None, None, {}, {}
    while now() - t0 < timeout:
        t = now()
        if new is None:
            for g in candidates:
                try:
                    cons[g.id].set("bench:probe", "1")
                    writable_at, new = t, g
                    fcons = {f.id: f.con() for f in followers_of(g)}
                    break
                except (redis.RedisError, OSError):
                    pass
        else:
            for f in followers_of(new):
                if f.id not in linked:
                    try:
                        if follows(fcons[f.id], new.ip):
                            linked[f.id] = now()
                    except (redis.RedisError, OSError):
                        pass
            if len(linked) == len(fcons) and not th.is_alive():
                break
        if "err" in box:
            raise box["err"]
        time.sleep(0.001)
    th.join(timeout=max(1.0, timeout - (now() - t0)))
    if "err" in box:
        raise box["err"]
    base = t_ref() if t_ref else t0
    rel = (lambda t: None if t is None else (t - base) * 1000)
    complete = new is not None and len(linked) == len(fcons)
    return {"new_master": new.name if new else None, "writable_ms": rel(writable_at),
            "all_linked_ms": rel(max(linked.values())) if complete and linked else None,
            "call_returned_ms": rel(box.get("done")), "t_base": base, "new": new, "ret": box.get("ret"),
            "linked_abs": linked, "writable_abs": writable_at}


def lost_on(g, acked, prefix):
    c = g.con(timeout=60)
    lost = 0
    for i in range(0, len(acked), 5000):
        vals = c.mget([prefix + str(n) for n in acked[i:i + 5000]])
        lost += sum(1 for v in vals if v is None)
    return lost


def sync_full(gs):
    return sum(int(g.con().info("stats").get("sync_full", 0)) for g in gs)


class Bench:
    def __init__(self, stage, trove, ctl_bin, ctx):
        self.stage, self.trove, self.ctl_bin, self.ctx = stage, trove, ctl_bin, ctx
        self.inventory = os.path.join(stage.work, "inventory.toml")

    # -- create
    def create_master(self, name):
        t0 = now()
        inst = self.trove.instances.create(name, FLAVOR, volume={"size": 1}, datastore="redis",
                                           datastore_version="7.0")  # the stage has volumes on
        up = [None]

        def pred(x):
            if up[0] is None:
                try:
                    if Guest(self.stage, inst.id, name).con(timeout=0.5).ping():
                        up[0] = now()
                except (RuntimeError, redis.RedisError, OSError, KeyError):
                    pass
            return x[inst.id].status in READY
        wait_trove(self.trove, "master ACTIVE", pred, watch=(inst.id,))
        took = now() - t0
        g = Guest(self.stage, inst.id, name)
        rec = {"what": "master", "active_ms": took * 1000,
               "redis_up_ms": None if up[0] is None else (up[0] - t0) * 1000}
        log("trove create master %s: Redis answers %.1f s, ACTIVE %.1f s" % (name, (rec["redis_up_ms"] or 0) / 1000, took))
        return g, rec

    def create_replica(self, master, name, delay_label, template):
        self.stage.set_delay_template(template)
        t0 = now()
        inst = self.trove.instances.create(name, replica_of=master.id, replica_count=1)
        g_holder = {}
        linked_at = [None]

        def pred(x):
            i = x.get(inst.id)
            if i is not None and linked_at[0] is None:
                try:
                    g = g_holder.get("g") or Guest(self.stage, inst.id, name)
                    g_holder["g"] = g
                    if follows(g.con(timeout=0.5), master.ip):
                        linked_at[0] = now()
                except (RuntimeError, redis.RedisError, OSError, KeyError):
                    pass
            return i is not None and i.status in READY and ref(i._info.get("replica_of")) == master.id
        wait_trove(self.trove, "replica ACTIVE", pred, watch=(inst.id, master.id))
        took = now() - t0
        g = g_holder.get("g") or Guest(self.stage, inst.id, name)
        if linked_at[0] is None and follows(g.con(), master.ip):
            linked_at[0] = now()
        rec = {"what": "replica", "delay": delay_label, "active_ms": took * 1000,
               "redis_linked_ms": None if linked_at[0] is None else (linked_at[0] - t0) * 1000}
        log("trove create replica %s (delay %s): Redis linked %.1f s, ACTIVE %.1f s" % (
            name, delay_label, (rec["redis_linked_ms"] or 0) / 1000, took))
        return g, rec

    # -- trove-guestctl on the same guests
    def write_inventory(self, master, replicas):
        with open(self.inventory, "w") as f:
            f.write('transport_url = "%s"\ncontrol_exchange = "trove"\n' % self.stage.transport_url)
            for g in [master, *replicas]:
                f.write('\n[[guest]]\nid = "%s"\n' % g.id)
                if g is not master:
                    f.write('replica_of = "%s"\n' % master.id)
        os.chmod(self.inventory, 0o600)

    def ctl(self, *args):
        p = subprocess.run([self.ctl_bin, *args], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory))
        if p.returncode != 0:
            raise RuntimeError("trove-guestctl %s failed: %s %s" % (" ".join(args), p.stdout[-500:], p.stderr[-1500:]))
        return p.stdout

    # -- promote under a writer
    def promote(self, via, master, candidate, others, trove_pred=None):
        nodes = [master, candidate, *others]
        before = sync_full(nodes)
        w = Writer(self.ctx, [g.addr for g in nodes], "tp")
        time.sleep(0.5)
        if via == "trove":
            def start():
                self.trove.instances.promote_to_replica_source(candidate.id)
                return wait_trove(self.trove, "promote done", trove_pred, timeout=180, interval=0.1,
                                  watch=[g.id for g in nodes])
        else:
            def start():
                return self.ctl("promote-to-replica-source", candidate.id)
        m = watch_redis(start, [candidate], lambda g: [n for n in nodes if n is not g], 180)
        time.sleep(0.3)
        data = w.stop()
        t0 = m["t_base"]
        tend = max([m["writable_abs"] or t0, *m["linked_abs"].values()]) + 0.3
        pause, pause_at = longest_pause(data["t"], t0, tend)
        rec = {"via": via, "writable_ms": m["writable_ms"], "all_linked_ms": m["all_linked_ms"],
               "longest_pause_ms": pause * 1000,
               "linked_from_pause_ms": None if pause_at is None or not m["linked_abs"] else
               (max(m["linked_abs"].values()) - pause_at) * 1000,
               "pause_starts_ms": None if pause_at is None else (pause_at - t0) * 1000,
               "acked": len(data["acked"]), "lost": lost_on(candidate, data["acked"], w.prefix),
               "sync_full_delta": sync_full(nodes) - before, "new_master": m["new_master"]}
        rec["done_ms"] = m["call_returned_ms"]  # trove: until `instance list` shows the new roles, all ACTIVE
        if via == "trove":
            rec["tm_calls"] = tm_calls(self.stage.work, "Promoting %s as replication master" % candidate.id)
        log("promote via %-5s: writable %s ms, all linked %s ms, pause %.1f ms, lost %d of %d, done %s ms" % (
            via, fmt(rec["writable_ms"]), fmt(rec["all_linked_ms"]), rec["longest_pause_ms"], rec["lost"],
            rec["acked"], fmt(rec["done_ms"])))
        return rec

    # -- eject after a kill
    def eject_trove(self, dead, survivors):
        docker("kill", dead.container)
        t_kill = now()
        hb = self.stage.last_heartbeat(dead.id)
        state = {"refused": 0}

        def start():
            while True:
                try:
                    self.trove.instances.eject_replica_source(dead.id)
                    state["accepted"], state["accepted_wall"] = now(), time.time()
                    break
                except Exception as e:  # noqa: BLE001 - troveclient BadRequest while the heartbeat is fresh
                    if "heartbeat" not in str(e):
                        raise
                    state["refused"] += 1
                if now() - t_kill > 120:
                    raise RuntimeError("Trove still refused the eject 120 s after the kill")
                time.sleep(0.1)

            def done(x):
                roles = [ref(x[g.id]._info.get("replica_of")) for g in survivors]
                return roles.count(None) == 1 and all(x[g.id].status in READY for g in survivors)
            return wait_trove(self.trove, "eject done", done, timeout=180, interval=0.1, watch=[g.id for g in survivors])
        m = watch_redis(start, survivors, lambda g: [s for s in survivors if s is not g], 300,
                        t_ref=lambda: state["accepted"])
        rec = {"via": "trove", "writable_ms": m["writable_ms"], "all_linked_ms": m["all_linked_ms"],
               "kill_to_accepted_ms": (state["accepted"] - t_kill) * 1000, "refused": state["refused"],
               "done_ms": m["call_returned_ms"], "new_master": m["new_master"], "expiry_s": self.stage.expiry,
               "tm_calls": tm_calls(self.stage.work, "New master selected"),
               "last_heartbeat_utc": str(hb) if hb else None,
               # updated_at has 1 s resolution: this is the acceptance after the recorded expiry, +0..1 s
               "accepted_after_expiry_ms": None if hb is None else
               (state["accepted_wall"] - hb.replace(tzinfo=datetime.timezone.utc).timestamp() - self.stage.expiry) * 1000}
        log("eject via trove: accepted %.1f s after the kill (%d refusals), then writable %s ms, all linked %s ms" % (
            rec["kill_to_accepted_ms"] / 1000, rec["refused"], fmt(rec["writable_ms"]), fmt(rec["all_linked_ms"])))
        return rec, m["new"]

    def eject_ctl(self, dead, survivors):
        self.write_inventory(dead, survivors)
        docker("kill", dead.container)
        m = watch_redis(lambda: self.ctl("eject-replica-source", dead.id), survivors,
                        lambda g: [s for s in survivors if s is not g], 120)
        rec = {"via": "guestctl", "writable_ms": m["writable_ms"], "all_linked_ms": m["all_linked_ms"],
               "done_ms": m["call_returned_ms"], "new_master": m["new_master"]}
        log("eject via guestctl: writable %s ms, all linked %s ms, returned %s ms" % (
            fmt(rec["writable_ms"]), fmt(rec["all_linked_ms"]), fmt(rec["done_ms"])))
        return rec

    def round(self, rep, out):
        tr = self.trove
        p = "b%d" % rep
        m, rec = self.create_master(p + "-m")
        out["create"].append(dict(rec, rep=rep))
        with m.con(timeout=30) as c:  # 10,000 keys of 100 bytes (DEBUG is disabled in the guests)
            for i in range(0, 10000, 1000):
                c.mset({"data:%d" % k: "x" * 100 for k in range(i, i + 1000)})
        r1, rec = self.create_replica(m, p + "-r1", "10 (Trove's template)", STOCK_TEMPLATE)
        out["create"].append(dict(rec, rep=rep))
        r2, rec = self.create_replica(m, p + "-r2", "0", ZERO_TEMPLATE)
        out["create"].append(dict(rec, rep=rep))
        self.stage.set_delay_template(STOCK_TEMPLATE)

        def promoted(x):
            return (ref(x[m.id]._info.get("replica_of")) == r1.id and ref(x[r2.id]._info.get("replica_of")) == r1.id
                    and all(x[g.id].status in READY for g in (m, r1, r2)))
        out["promote"].append(dict(self.promote("trove", m, r1, [r2], promoted), rep=rep))
        # trove-guestctl on the same three guests: r1 -> r2, then back to r1 (Trove's view again)
        self.write_inventory(r1, [m, r2])
        out["promote"].append(dict(self.promote("guestctl", r1, r2, [m]), rep=rep))
        out["promote"].append(dict(self.promote("guestctl", r2, r1, [m]), rep=rep))
        # trove-guestctl's promotes put the set under epochs: hand it back to Trove's taskmanager.
        self.ctl("release")
        # eject through Trove: kill r1's container (Redis and agent), retry until the heartbeat expired
        rec, new = self.eject_trove(r1, [m, r2])
        out["eject"].append(dict(rec, rep=rep))
        other = m if new is r2 else r2
        wait_trove(tr, "survivors ACTIVE", lambda x: all(x[g.id].status in READY for g in (new, other)),
                   watch=(new.id, other.id))
        self.stage.set_delay_template(ZERO_TEMPLATE)
        r3, rec = self.create_replica(new, p + "-r3", "0", ZERO_TEMPLATE)
        out["create"].append(dict(rec, rep=rep))
        self.stage.set_delay_template(STOCK_TEMPLATE)
        out["eject"].append(dict(self.eject_ctl(new, [other, r3]), rep=rep))
        # Replicas before their source (Trove refuses to delete a source with replicas).
        left = [other, r3, r1, new]
        for _ in range(10):
            for g in list(left):
                try:
                    tr.instances.delete(g.id)
                    left.remove(g)
                except Exception as e:  # noqa: BLE001
                    log("delete %s: %s (retrying)" % (g.name, e))
            if not left:
                break
            time.sleep(3)
        try:  # not measured; the stage removes whatever is left
            wait_trove(tr, "instances deleted", lambda x: not ({m.id, r1.id, r2.id, r3.id} & set(x)), timeout=180)
        except RuntimeError as e:
            log("delete: %s" % e)


def fmt(v):
    return "-" if v is None else "%.1f" % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    from keystoneauth1 import session, token_endpoint
    from troveclient.v1 import client
    stage = Stage()
    stage.set_delay_template(STOCK_TEMPLATE)
    out = {"create": [], "promote": [], "eject": [], "reps": a.reps, "heartbeat_expiry_s": stage.expiry,
           "report_interval_s": 2, "usage_sleep_time_s": 5}
    ctx = Ctx(stage.work)
    rc = 0
    try:
        t = now()
        stage.start()
        log("Trove's services up in %.1f s" % (now() - t))
        # the stage's tempauth token (its identity filter checks it with Swift)
        with open(os.environ["TROVE_STAGE_TOKEN_FILE"]) as f:
            token = f.read().strip()
        trove = client.Client(session=session.Session(auth=token_endpoint.Token(
            "%s/v1.0/trovestage" % stage.api, token)))
        b = Bench(stage, trove, a.ctl, ctx)
        for rep in range(a.reps):
            b.round(rep, out)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        rc = 1
    finally:
        for p in ctx.procs:
            if p.poll() is None:
                p.kill()
        stage.stop()
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    return rc


if __name__ == "__main__":
    sys.exit(main())
