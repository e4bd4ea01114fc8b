"""The guests' Redis through the shared RESP client (tests/pylib/resp.py), and a writer that follows the master and records acknowledged writes."""
import os
import sys
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from resp import ReplyError, Resp  # noqa: E402


class Redis(Resp):
    """A connection to a guest's Redis (no password: the trove stage's guests have none)."""

    def __init__(self, host, port=6379, timeout=2.0):
        super().__init__(host, port, None, timeout)


def info(host, section="all", timeout=2.0):
    """INFO of host, or None when it cannot be reached."""
    try:
        with Redis(host, timeout=timeout) as r:
            return r.info(section)
    except (OSError, ReplyError):
        return None


def missing(host, pairs):
    """The (key, value) pairs whose value host does not hold (all of them if it cannot be read)."""
    try:
        with Redis(host, timeout=5.0) as r:
            out = []
            for i in range(0, len(pairs), 1000):
                batch = pairs[i:i + 1000]
                vals = r.call("MGET", *[k for k, _ in batch])
                out.extend(kv for kv, v in zip(batch, vals) if v != str(kv[1]).encode())
            return out
    except (OSError, ReplyError):
        return list(pairs)


class Writer(threading.Thread):
    """SETs <prefix>:1, <prefix>:2, ... on whichever host says role:master, following it when it changes.

    A write is acknowledged only when Redis answered +OK; an error reply or a timeout abandons the
    connection and looks for the master again (trying the host that failed last)."""

    def __init__(self, hosts, prefix, op_timeout=0.5):
        super().__init__(daemon=True)
        self.hosts = list(hosts)
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.acked = []  # (n, host)
        self.errors = Counter()
        self.longest_gap = 0.0
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()
        self.join(timeout=10)
        return self

    def pairs(self):
        return [(f"{self.prefix}:{n}", n) for n, _ in self.acked]

    def _find_master(self, avoid):
        for h in [h for h in self.hosts if h != avoid] + [h for h in self.hosts if h == avoid]:
            try:
                r = Redis(h, timeout=0.3)
            except OSError:
                continue
            try:
                if r.info("replication").get("role") == "master":
                    r.sock.settimeout(self.op_timeout)
                    return r, h
            except (OSError, ReplyError):
                pass
            r.close()
        return None, None

    def run(self):
        con, host, n, last = None, None, 0, None
        while not self._halt.is_set():
            if con is None:
                con, host = self._find_master(host)
                if con is None:
                    time.sleep(0.02)
                    continue
            n += 1
            try:
                con.call("SET", f"{self.prefix}:{n}", n)
            except (ReplyError, OSError, ValueError) as e:
                self.errors[str(e).split(" ")[0] if isinstance(e, ReplyError) else type(e).__name__] += 1
                con.close()
                con = None
                continue
            t = time.monotonic()
            if last is not None:
                self.longest_gap = max(self.longest_gap, t - last)
            last = t
            self.acked.append((n, host))
            time.sleep(0.002)
        if con is not None:
            con.close()

    def summary(self):
        by = Counter(h for _, h in self.acked)
        return (f"acked={len(self.acked)} by_host={dict(by)} errors={dict(self.errors)} "
                f"longest_gap_ms={int(self.longest_gap * 1000)}")
