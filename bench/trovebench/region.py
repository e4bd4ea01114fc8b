"""What one watcher process costs per replica set today: N sets of three (real agents and
redis-servers) under one `trove-guestctl watch --sets DIR`; the watcher's CPU and memory, the
agents' CPU and the probe RPCs they serve over an idle window, then one master killed under
redis-py's Sentinel client (detection and the client's pause).

    python -m trovebench.region --sets 1,10 [--amqp-url URL] [--bin-dir DIR] [--out FILE]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from .common import ROOT, Ctx, log, now, wait_until
from .footprint import proc_cpu_s, proc_mem_kib
from .switch import OursTrio

import redis
from redis.sentinel import Sentinel

WINDOW_S = 20.0
DOWN_AFTER_MS = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc_lines(guests):
    """RPC requests the agents have served so far (their log's `request done` lines)."""
    n = 0
    for g in guests:
        with open(g.log_path, "rb") as f:
            n += f.read().count(b"request done")
    return n


def broker_pid(amqp_url):
    """The RabbitMQ node (beam.smp) listening on the AMQP URL's port, if it runs here."""
    port = (amqp_url.rsplit(":", 1)[-1].split("/")[0]) if amqp_url.count(":") >= 2 else "5672"
    out = subprocess.run(["ss", "-Hltnp", "sport = :%s" % port], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        pid = int(part.split(",")[0])
        with open("/proc/%d/comm" % pid) as f:
            if f.read().strip().startswith("beam"):
                return pid
    return None


def discover(sentinel, name):
    try:
        return sentinel.discover_master(name)
    except (redis.RedisError, OSError):
        return None


def measure(ctx, n):
    trios = []
    t0 = now()
    for k in range(n):
        trios.append(OursTrio(ctx, count=3, tag="rg%d_%d" % (n, k)))
    log("region x%d: %d sets of three created in %.1f s" % (n, n, now() - t0))
    sets_dir = ctx.path("sets-%d" % n, "x")[:-2]
    os.makedirs(sets_dir, exist_ok=True)
    for k, t in enumerate(trios):
        with open(t.fleet.inventory) as f:
            body = f.read()
        path = os.path.join(sets_dir, "set%d.toml" % k)
        lines = [line for line in body.splitlines() if not line.startswith("name = ")]
        with open(path, "w") as f:
            f.write('name = "set%d"\n%s\n' % (k, "\n".join(lines)))
        os.chmod(path, 0o600)
    port = free_port()
    watcher = ctx.spawn([ctx.ctl_bin, "watch", "--sets", sets_dir, "--listen", "127.0.0.1:%d" % port,
                         "--down-after-ms", str(DOWN_AFTER_MS)], ctx.path("watch-%d.log" % n))
    sc = redis.Redis(port=port, socket_timeout=2)
    wait_until("the watcher serves %d sets" % n, lambda: len(sc.sentinel_masters()) == n, timeout=60)
    time.sleep(3 * DOWN_AFTER_MS / 1000)  # every set's first epoch claimed
    guests = [g for t in trios for g in t.fleet.guests]
    broker = broker_pid(ctx.amqp_url)
    broker_cpu = lambda: proc_cpu_s(broker) if broker else 0.0  # noqa: E731
    cpu0, agents0, b0, rpc0, t_a = proc_cpu_s(watcher.pid), sum(proc_cpu_s(g.proc.pid) for g in guests), broker_cpu(), rpc_lines(guests), now()
    time.sleep(WINDOW_S)
    cpu1, agents1, b1, rpc1, t_b = proc_cpu_s(watcher.pid), sum(proc_cpu_s(g.proc.pid) for g in guests), broker_cpu(), rpc_lines(guests), now()
    span = t_b - t_a
    mem = proc_mem_kib(watcher.pid)
    row = {
        "sets": n,
        "agents": len(guests),
        "window_s": round(span, 1),
        "watcher_cpu_pct": round(100 * (cpu1 - cpu0) / span, 1),
        "watcher_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
        "agents_cpu_pct": round(100 * (agents1 - agents0) / span, 1),
        "agent_cpu_pct_each": round(100 * (agents1 - agents0) / span / len(guests), 2),
        "broker_cpu_pct": round(100 * (b1 - b0) / span, 1) if broker else None,
        "probe_rpcs_per_s": round((rpc1 - rpc0) / span),
        "probe_rpcs_due_per_s": round(len(guests) * 1000 / max(20, DOWN_AFTER_MS / 20)),
        "broker_messages_per_s": round(2 * (rpc1 - rpc0) / span),
    }
    log("region x%d idle: %s" % (n, row))
    # One master killed under redis-py's Sentinel client.
    sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=0.5, socket_connect_timeout=0.5)
    master = sentinel.master_for("set0", socket_timeout=0.5, socket_connect_timeout=0.5)
    acked = []
    stop = threading.Event()

    def write():
        i = 0
        while not stop.is_set():
            i += 1
            sent = now()
            try:
                master.set("rg:%d" % i, i)
                acked.append((sent, now()))
            except (redis.RedisError, OSError):
                time.sleep(0.005)
    w = threading.Thread(target=write, daemon=True)
    w.start()
    wait_until("writes through the Sentinel client", lambda: len(acked) > 200, timeout=30)
    old = discover(sentinel, "set0")
    m = next(g for g in trios[0].fleet.guests if g.port == old[1])
    m.kill9()
    t_kill = now()
    wait_until("a new master of set0", lambda: discover(sentinel, "set0") not in (None, old), timeout=30, interval=0.01)
    t_new = now()
    wait_until("a write after the kill", lambda: any(s > t_kill for s, _ in acked), timeout=30)
    first = next(a for s, a in acked if s > t_kill)
    stop.set()
    w.join(5)
    others = [discover(sentinel, "set%d" % k) for k in range(1, n)]
    row.update({"detect_ms": round((t_new - t_kill) * 1000), "client_pause_ms": round((first - t_kill) * 1000),
                "other_sets_unchanged": all(o is not None for o in others)})
    log("region x%d kill: discovery named a new master %d ms after the kill; the client's first write %d ms after it" % (
        n, row["detect_ms"], row["client_pause_ms"]))
    ctx.kill(watcher, signal.SIGTERM, wait=20)
    for t in trios:
        t.fleet.close()
    return row


def main():
    ap = argparse.ArgumentParser(prog="trovebench.region")
    ap.add_argument("--sets", default="1,10")
    ap.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "rabbit://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "region.json"))
    a = ap.parse_args()
    ctx = Ctx(a.amqp_url, a.bin_dir)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = []
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        for n in [int(x) for x in a.sets.split(",")]:
            rows.append(measure(ctx, n))
    finally:
        ctx.close()
    out = {"commit": commit, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "down_after_ms": DOWN_AFTER_MS,
           "window_s": WINDOW_S, "cores": os.cpu_count(), "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print("| sets | agents | watcher CPU % | watcher RSS MiB | agents CPU % (each) | broker CPU % | probe RPCs/s (due) | broker msgs/s | detect ms | client pause ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %.1f | %.1f | %.1f (%.2f) | %s | %d (%d) | %d | %d | %d |" % (
            r["sets"], r["agents"], r["watcher_cpu_pct"], r["watcher_rss_mib"], r["agents_cpu_pct"], r["agent_cpu_pct_each"],
            r["broker_cpu_pct"], r["probe_rpcs_per_s"], r["probe_rpcs_due_per_s"], r["broker_messages_per_s"], r["detect_ms"],
            r["client_pause_ms"]))


if __name__ == "__main__":
    main()
