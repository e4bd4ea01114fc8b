"""RPC load from Python oslo.messaging clients: C concurrent callers (threads spread over up to
--procs processes, each process with its own transport and reply queue), each calling METHOD on
topic guestagent.<id> back to back for --duration seconds after a --warmup.

    python -m trovebench.rpcload --url rabbit://... --id ID --method rpc_ping --callers 16 --duration 5

Also: --startup-probe: call rpc_ping every 5 ms (each call in its own thread, 2 s timeout) and print
the monotonic time of the first answer (for start-up measurements).

Prints one JSON line: latencies (ms) of every call finished in the measured window, errors, and the
window's length.
"""

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
import uuid

import oslo_messaging
from oslo_config import cfg


def register_tracing_opts(conf):
    import importlib
    for module, attr in (("oslo_messaging._metrics.client", "oslo_messaging_metrics"),
                         ("oslo_messaging._tracing.client", "oslo_messaging_tracing")):
        try:
            opts = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        conf.register_opts(opts, group=attr)


def make_client(url, gid, timeout):
    conf = cfg.ConfigOpts()
    conf([], project="trovebench-client")
    register_tracing_opts(conf)
    oslo_messaging.set_transport_defaults("trove")
    transport = oslo_messaging.get_rpc_transport(conf, url=url)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="guestagent.%s" % gid, version="1.0"), timeout=timeout)
    return client


def ctxt():
    return {"user": "bench", "is_admin": True, "read_only": False, "show_deleted": False,
            "request_id": "req-" + str(uuid.uuid4())}


def worker_proc(args, threads, start_at, end_at, q):
    client = make_client(args.url, args.id, 10)
    kwargs = json.loads(args.args)
    client.call(ctxt(), args.method, **kwargs)  # opens the reply queue before the clock starts
    lat, errors = [], []
    lock = threading.Lock()

    def loop():
        mine = []
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while True:
            t = time.monotonic()
            if t >= end_at:
                break
            try:
                client.call(ctxt(), args.method, **kwargs)
                t2 = time.monotonic()
                if t2 <= end_at:
                    mine.append((t2 - t) * 1000)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(type(e).__name__ + ": " + str(e)[:100])
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put({"lat": lat, "errors": errors})


def run_load(args):
    procs = max(1, min(args.procs, args.callers))
    per = [args.callers // procs + (1 if i < args.callers % procs else 0) for i in range(procs)]
    # Give every process time to import and connect before the common start.
    start_at = time.monotonic() + args.warmup
    end_at = start_at + args.duration
    q = mp.Queue()
    ps = [mp.Process(target=worker_proc, args=(args, n, start_at, end_at, q)) for n in per]
    for p in ps:
        p.start()
    results = [q.get(timeout=args.warmup + args.duration + 120) for _ in ps]
    for p in ps:
        p.join(30)
    lat = [x for r in results for x in r["lat"]]
    errors = [x for r in results for x in r["errors"]]
    print(json.dumps({"lat_ms": lat, "errors": errors[:20], "n_errors": len(errors), "window_s": args.duration,
                      "procs": procs}))


def startup_probe(args):
    client = make_client(args.url, args.id, 2)
    found = threading.Event()
    first = []
    lock = threading.Lock()

    def one():
        try:
            if client.call(ctxt(), "rpc_ping") is True:
                with lock:
                    first.append(time.monotonic())
                found.set()
        except Exception:  # noqa: BLE001
            pass

    try:  # connect and open the reply queue before the clock starts
        client.prepare(topic="guestagent.trovebench-warmup", timeout=0.3).call(ctxt(), "rpc_ping")
    except Exception:  # noqa: BLE001
        pass
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the server is being started now
    deadline = time.monotonic() + args.duration
    threads = []
    while not found.is_set() and time.monotonic() < deadline:
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
        found.wait(0.005)
    print(json.dumps({"first_answer": min(first) if first else None}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--method", default="rpc_ping")
    ap.add_argument("--args", default="{}")
    ap.add_argument("--callers", type=int, default=1)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--startup-probe", action="store_true")
    args = ap.parse_args()
    if args.startup_probe:
        startup_probe(args)
    else:
        run_load(args)


if __name__ == "__main__":
    main()
