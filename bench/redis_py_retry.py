"""How long redis-py, with its default retry, takes to write again after its server closes the connection.

A diagnostic for the Sentinel-client switchover (BENCHMARKS.md section 2b): there the old master
closes its clients (`CLIENT KILL TYPE normal`) and redis-py reconnects. This measures that step
alone, against one local redis-server: a writer SETs in a loop; another connection kills the
writer's connection; the figure is the time from the kill's reply to the writer's next
acknowledged SET. Once with redis-py's default `Retry` (its class defaults, as users get them) and
once with `Retry(NoBackoff(), 3)`, which shows what is left without the backoff.

Usage: .venv/bin/python bench/redis_py_retry.py [--rounds N] [--server PATH]
Prints one JSON object: redis-py's version, the default retry's backoff, and per variant the
median, p10 and p90 in ms.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(port, retry, rounds):
    kw = {} if retry is None else {"retry": retry}
    writer = redis.Redis(port=port, **kw)
    killer = redis.Redis(port=port)
    out = []
    for _ in range(rounds):
        writer.set("k", 0)
        stop = threading.Event()
        acked = []

        def loop():
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    writer.set("k", n)
                    acked.append(time.monotonic())
                except redis.RedisError:
                    pass

        t = threading.Thread(target=loop)
        t.start()
        time.sleep(0.05)
        killed = killer.client_kill_filter(_type="normal", skipme=True)
        t_kill = time.monotonic()
        time.sleep(0.15)
        stop.set()
        t.join()
        after = [a for a in acked if a > t_kill]
        if killed and after:
            out.append((after[0] - t_kill) * 1000)
    return out


def summary(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10) if len(xs) >= 10 else [xs[0]] * 9
    return {"rounds": len(xs), "median_ms": round(statistics.median(xs), 2), "p10_ms": round(q[0], 2),
            "p90_ms": round(q[-1], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--server", default=shutil.which("redis-server") or "redis-server")
    a = ap.parse_args()
    port = free_port()
    d = tempfile.mkdtemp(prefix="redis-py-retry.")
    proc = subprocess.Popen([a.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start on port %d" % port)
                time.sleep(0.02)
        default = redis.Redis(port=port).get_retry()
        result = {
            "redis_py": redis.__version__,
            "default_retry": {"retries": default.get_retries(), "backoff": type(default._backoff).__name__,
                              "base_s": getattr(default._backoff, "_base", None),
                              "cap_s": getattr(default._backoff, "_cap", None)},
            "default": summary(measure(port, None, a.rounds)),
            "no_backoff": summary(measure(port, Retry(NoBackoff(), 3), a.rounds)),
        }
        print(json.dumps(result, indent=1))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
