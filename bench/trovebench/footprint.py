"""RPC overhead and footprint: our agent vs a Python oslo.messaging server with the same endpoint.
Load comes from Python oslo.messaging clients (the same for both servers) and, to see past the
Python client's own cost, from the agent library's Rust RpcClient (trovebench-rpc-load)."""

import json
import os
import subprocess
import time

from .common import BenchError, Fleet, Guest, log, now, percentile, tail, wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_mem_kib(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


class Servers:
    """One agent (prepared, supervising its Redis) and one Python server on the same Redis."""

    def __init__(self, ctx, import_trove):
        self.ctx = ctx
        self.fleet = Fleet(ctx, "rpc", 1)
        self.agent = self.fleet.guests[0]
        self.py_id = "b%s-py" % ctx.run_id
        ctx.queues.update({"guestagent." + self.py_id, "guestagent.%s.%s" % (self.py_id, self.py_id)})
        self.import_trove = import_trove
        self.py = self.start_py(self.py_id)
        wait_until("the Python server to consume", lambda: "consuming" in tail(self.py_log), timeout=60)
        self.wait_answer(self.py_id)

    @property
    def py_log(self):
        return self.ctx.path("py-%s.log" % self.py_id)

    def start_py(self, gid, import_trove=None):
        it = self.import_trove if import_trove is None else import_trove
        argv = [self.ctx.python, "-m", "trovebench.py_guest", "--id", gid, "--url", self.ctx.amqp_url,
                "--redis-port", str(self.agent.port), "--report-interval", "3"]
        if it:
            argv.append("--import-trove")
        return self.ctx.spawn(argv, self.ctx.path("py-%s.log" % gid), env={"PYTHONWARNINGS": "ignore"}, cwd=PKG_PARENT)

    def wait_answer(self, gid):
        deadline = now() + 60
        while now() < deadline:
            r = load(self.ctx, "rust", gid, "rpc_ping", 1, 0.3, 0.0)
            if r and r["lat_ms"]:
                return
            time.sleep(0.2)
        raise BenchError("server %s never answered" % gid)

    def pids(self):
        return {"ours": self.agent.proc.pid, "python": self.py.pid}

    def ids(self):
        return {"ours": self.agent.id, "python": self.py_id}


def load(ctx, client, gid, method, callers, duration, warmup, args="{}"):
    if client == "rust":
        argv = [ctx.load_bin, "load", "--url", ctx.amqp_url, "--id", gid, "--method", method, "--args", args,
                "--callers", str(callers), "--duration", str(duration), "--warmup", str(warmup)]
        cwd = None
    else:
        argv = [ctx.python, "-m", "trovebench.rpcload", "--url", ctx.amqp_url, "--id", gid, "--method", method,
                "--args", args, "--callers", str(callers), "--duration", str(duration),
                "--warmup", str(max(warmup, 1.0 if ctx.smoke else 1.5))]  # the processes import oslo first
        cwd = PKG_PARENT
    p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=duration + warmup + 180,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise BenchError("load generator failed (%d): %s" % (p.returncode, p.stderr[-1500:]))
    return json.loads(lines[-1])


def load_stats(r):
    lat = r["lat_ms"]
    return {"calls": len(lat), "calls_per_s": len(lat) / r["window_s"], "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "errors": r["n_errors"]}


def rpc_matrix(ctx, servers, reps, callers_list, duration, warmup, clients):
    """Interleaved: for each rep, client and caller count, both servers back to back (order
    alternating). Also measures CPU and peak RSS of each server during the Python client's 4-caller
    load (the footprint benchmark's "under load")."""
    rows = []
    for rep in range(reps):
        for client in clients:
            for c in callers_list:
                order = ["ours", "python"] if (rep + c) % 2 == 0 else ["python", "ours"]
                for server in order:
                    pid = servers.pids()[server]
                    cpu0, t0 = proc_cpu_s(pid), now()
                    r = load(ctx, client, servers.ids()[server], "rpc_ping", c, duration, warmup)
                    cpu1, t1 = proc_cpu_s(pid), now()
                    st = load_stats(r)
                    st.update({"rep": rep, "client": client, "callers": c, "server": server,
                               "server_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
                               "server_mem_kib": proc_mem_kib(pid)})
                    rows.append(st)
                    log("rpc %s client, %2d callers, %-6s: %6.0f calls/s p50 %.2f ms p99 %.2f ms cpu %.0f%%" % (
                        client, c, server, st["calls_per_s"], st["p50_ms"], st["p99_ms"], st["server_cpu_pct"]))
    return rows


def method_times(ctx, servers, reps, duration, methods, client):
    rows = []
    for rep in range(reps):
        for m in methods:
            for server in (["ours", "python"] if rep % 2 == 0 else ["python", "ours"]):
                r = load(ctx, client, servers.ids()[server], m, 1, duration, 0.3)
                st = load_stats(r)
                st.update({"rep": rep, "client": client, "method": m, "server": server})
                rows.append(st)
    return rows


def idle(ctx, servers, seconds):
    """CPU and RSS of both servers while idle (heartbeats every 3 s), over the same window."""
    pids = servers.pids()
    cpu0 = {k: proc_cpu_s(p) for k, p in pids.items()}
    t0 = now()
    time.sleep(seconds)
    t1 = now()
    return {k: {"cpu_pct": 100 * (proc_cpu_s(p) - cpu0[k]) / (t1 - t0), "mem_kib": proc_mem_kib(p), "window_s": t1 - t0}
            for k, p in pids.items()}


def startup(ctx, kind, rep, redis_port, import_trove=False):
    """Spawn a fresh server and time until the first rpc_ping answers (probe: the Rust client,
    a call every 2 ms). Returns ms, and the server's RSS right then."""
    gid = "b%s-st%s%d%s" % (ctx.run_id, kind[0], rep, "t" if import_trove else "")
    ctx.queues.update({"guestagent." + gid, "guestagent.%s.%s" % (gid, gid)})
    probe = subprocess.Popen([ctx.load_bin, "startup", "--url", ctx.amqp_url, "--id", gid], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    ctx.procs.append(probe)
    if probe.stdout.readline().strip() != "ready":
        raise BenchError("startup probe did not start")
    probe.stdin.write("go\n")
    probe.stdin.flush()
    if kind == "ours":
        g = Guest(ctx, "st%d" % rep, start=False)
        g.id = gid
        t0 = now()
        g.start()
        proc = g.proc
    else:
        argv = [ctx.python, "-m", "trovebench.py_guest", "--id", gid, "--url", ctx.amqp_url, "--redis-port", str(redis_port)]
        if import_trove:
            argv.append("--import-trove")
        t0 = now()
        proc = ctx.spawn(argv, ctx.path("py-%s.log" % gid), env={"PYTHONWARNINGS": "ignore"}, cwd=PKG_PARENT)
    out, _ = probe.communicate(timeout=60)
    first = json.loads(out.strip().splitlines()[-1])["first_answer"]
    mem = proc_mem_kib(proc.pid) if proc.poll() is None else {}
    ctx.kill(proc)
    if first is None:
        raise BenchError("%s server never answered rpc_ping" % kind)
    return {"kind": kind, "import_trove": import_trove, "ms": (first - t0) * 1000, "mem_kib": mem}
