"""The writer: SET w:<n> <n> in a tight loop against whichever node is master, recording every
acknowledged write and when it was acknowledged. It follows the master: on READONLY, connection
errors or timeouts it re-resolves who is master (ROLE on every node) and carries on there.

    python -m trovebench.writer --ports 7001,7002,7003 --out result.json
    python -m trovebench.writer --sentinels 127.0.0.1:26379,... --name mymaster --out result.json

With --sentinels it is a Sentinel-aware client instead: redis-py's `Sentinel(...).master_for(name)`
(it asks the sentinels for the master when a connection fails or a node answers READONLY), with
no role probing of its own; the "master" events then carry the address the sentinels named.

    python -m trovebench.writer --ports 172.28.90.3:6379,172.28.90.4:6379 --out result.json

Runs until SIGUSR1 (or SIGTERM), then writes {acked: [...], t: [...], events: [...]} as JSON.
Times are time.monotonic() (CLOCK_MONOTONIC, comparable across processes on this machine).
A line "ready" is printed on stdout once the first write is acknowledged.
"""

import argparse
import array
import json
import signal
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

STOP = False


def _stop(signum, frame):
    global STOP
    STOP = True


def connect(port, timeout):
    """port: a port on 127.0.0.1, or "host:port" (the trove benchmark's guest containers). No retries:
    redis-py's default (3, with backoff from 1 s) makes one ROLE on a dead node take ~4 s, so after a
    kill the writer would find no master for seconds; it re-resolves the master itself instead."""
    host, port = port.rsplit(":", 1) if isinstance(port, str) else ("127.0.0.1", port)
    return redis.Redis(host=host, port=int(port), socket_timeout=timeout, socket_connect_timeout=timeout,
                       single_connection_client=True, retry=Retry(NoBackoff(), 0))


ROLE_CONS = {}
DATA_CONS = {}


def con_for(port, timeout, cache):
    """One cached connection per node and purpose (a new TCP connection costs more than the answer)."""
    c = cache.get(port)
    if c is None:
        c = cache[port] = connect(port, timeout)
    return c


def drop(port, cache):
    c = cache.pop(port, None)
    if c is not None:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


def find_master(ports, avoid, events):
    """The port that reports role master; one other than `avoid` if there are several."""
    masters = []
    for p in ports:
        try:
            role = con_for(p, 0.3, ROLE_CONS).execute_command("ROLE")
            if role and role[0] in (b"master", "master"):
                masters.append(p)
        except (redis.RedisError, OSError):
            drop(p, ROLE_CONS)
            continue
    if len(masters) > 1:
        events.append([time.monotonic(), "several-masters", masters])
        others = [p for p in masters if p != avoid]
        if others:
            return others[0]
    return masters[0] if masters else None


def sentinel_main(a):
    """The Sentinel-aware writer: every SET goes through redis-py's SentinelConnectionPool."""
    from redis.sentinel import Sentinel
    addrs = [(h, int(p)) for h, p in (x.rsplit(":", 1) for x in a.sentinels.split(","))]
    sentinel = Sentinel(addrs, socket_timeout=a.op_timeout, socket_connect_timeout=a.op_timeout)
    master = sentinel.master_for(a.name, socket_timeout=a.op_timeout, socket_connect_timeout=a.op_timeout)
    acked = array.array("q")
    times = array.array("d")
    sent_t = array.array("d")
    events = []
    n = 0
    ready = False
    prefix = a.prefix
    mono = time.monotonic
    last_addr = None
    while not STOP:
        n += 1
        t_send = mono()
        try:
            master.execute_command("SET", prefix + str(n), n)
        except (redis.RedisError, OSError) as e:
            events.append([mono(), "error", None, type(e).__name__, str(e)[:80]])
            time.sleep(0.001)
            continue
        acked.append(n)
        times.append(mono())
        sent_t.append(t_send)
        addr = master.connection_pool.master_address
        if addr != last_addr:
            events.append([mono(), "master", "%s:%s" % addr if addr else None])
            last_addr = addr
        if not ready:
            ready = True
            print("ready", flush=True)
    with open(a.out, "w") as f:
        json.dump({"acked": acked.tolist(), "t": times.tolist(), "sent_t": sent_t.tolist(), "events": events,
                   "sent": n}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--prefix", default="w:")
    ap.add_argument("--sentinels", default=None, help="host:port,... : write through redis-py's Sentinel client")
    ap.add_argument("--name", default="mymaster")
    ap.add_argument("--op-timeout", type=float, default=0.5, help="socket timeout of the Sentinel client")
    a = ap.parse_args()
    signal.signal(signal.SIGUSR1, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if a.sentinels:
        return sentinel_main(a)
    ports = [p if ":" in p else int(p) for p in a.ports.split(",")]

    acked = array.array("q")
    times = array.array("d")
    events = []
    n = 0
    cur_port = None
    con = None
    failed_port = None
    ready = False
    prefix = a.prefix
    mono = time.monotonic
    for p in ports:  # warm both connections to every node
        try:
            con_for(p, 0.3, ROLE_CONS).ping()
            con_for(p, a.timeout, DATA_CONS).ping()
        except (redis.RedisError, OSError):
            drop(p, ROLE_CONS)
            drop(p, DATA_CONS)
    while not STOP:
        if con is None:
            cur_port = find_master(ports, failed_port, events)
            if cur_port is None:
                time.sleep(0.001)
                continue
            con = con_for(cur_port, a.timeout, DATA_CONS)
            events.append([mono(), "master", cur_port])
        n += 1
        try:
            con.execute_command("SET", prefix + str(n), n)
        except (redis.RedisError, OSError) as e:
            events.append([mono(), "error", cur_port, type(e).__name__, str(e)[:80]])
            if not isinstance(e, redis.ResponseError):
                drop(cur_port, DATA_CONS)
            con = None
            failed_port = cur_port
            continue
        acked.append(n)
        times.append(mono())
        if not ready:
            ready = True
            print("ready", flush=True)
    with open(a.out, "w") as f:
        json.dump({"acked": acked.tolist(), "t": times.tolist(), "events": events, "sent": n}, f)


if __name__ == "__main__":
    sys.exit(main())
