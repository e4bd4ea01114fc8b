"""Jepsen-style histories: every write operation as one JSON line, the nemesis' events and stated
loss windows, the final state of every node; a writer through redis-py's Sentinel client; and
the checker that judges a history file on its own (tests/docker/nemesis.py).

A history file holds, one JSON object a line:
  {"type": "op", "writer", "n", "key", "value", "node", "start", "end", "start_wall", "end_wall",
   "outcome": "ok"|"fail"|"unknown", "error", "wait", "via"}
      start/end: monotonic seconds (the host's; end null when no reply was ever seen), *_wall the
      same in Unix time; node: the address the write went to (null when no node was reached);
      wait: true when `WAIT 1 <ms>` after an acknowledged SET counted at least one replica, false
      when it counted none, null when not asked or not answered.
  {"type": "event", "what", "t", "wall", ...}          what the nemesis did, when
  {"type": "window", "node", "start", "end", "why"}     a stated window: writes `node` acknowledged
      in it (by the time of the reply) may be lost, and it may acknowledge in it while another
      node does (a cut-off master until its fence holds)
  {"type": "final", "nodes": {name: {...}}, "master", "missing": [keys], "discovery": {...}, ...}
"""

import json
import threading
import time

from .base import PASSWORD


class History:
    """Appends JSON lines to a file, one at a time, from any thread (flushed on every line)."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "w")
        self.lock = threading.Lock()
        self.ops = 0

    def _write(self, rec):
        with self.lock:
            self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self.f.flush()

    def op(self, **fields):
        self.ops += 1
        self._write({"type": "op", **fields})

    def event(self, what, **fields):
        t = time.monotonic()
        self._write({"type": "event", "what": what, "t": t, "wall": time.time(), **fields})
        return t

    def window(self, node, start, end, why):
        self._write({"type": "window", "node": node, "start": start, "end": end, "why": why})

    def final(self, **fields):
        self._write({"type": "final", **fields})

    def close(self):
        with self.lock:
            self.f.close()


def load(path):
    ops, events, windows, final = [], [], [], None
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            kind = r.pop("type")
            if kind == "op":
                ops.append(r)
            elif kind == "event":
                events.append(r)
            elif kind == "window":
                windows.append(r)
            elif kind == "final":
                final = r
    return ops, events, windows, final


class SentinelWriter(threading.Thread):
    """Writes <prefix>:1, :2, ... through redis-py's Sentinel-managed master connection pool (the
    client asks the watchers where the master is whenever it connects, and drops a connection to
    a master that became a replica), with no retries, and records every operation in `history`:
    the node is the address the connection went to. After each acknowledged SET, `WAIT 1 wait_ms`
    on the same connection says whether a replica has it.

    Outcomes: ok (+OK); fail when the write was certainly not applied (no master found, no
    connection, an error reply such as READONLY or NOREPLICAS); unknown when the reply was lost
    (timeout, connection dropped after sending)."""

    def __init__(self, sentinel, name, prefix, history, wait_ms=100, op_timeout=0.5, interval=0.002):
        super().__init__(daemon=True)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self.redis = redis
        self.client = sentinel.master_for(name, password=PASSWORD, socket_timeout=op_timeout,
                                          socket_connect_timeout=op_timeout, retry=Retry(NoBackoff(), 0))
        self.pool = self.client.connection_pool
        self.prefix, self.history, self.wait_ms, self.interval = prefix, history, wait_ms, interval
        self.ok = 0
        self.ok_times = []  # end times of acknowledged writes
        self._halt = threading.Event()

    def one(self, n):
        redis = self.redis
        key = f"{self.prefix}:{n}"
        rec = {"writer": self.prefix, "n": n, "key": key, "value": n, "node": None, "via": "sentinel", "wait": None}
        start, start_wall = time.monotonic(), time.time()
        try:
            conn = self.pool.get_connection()
        except (redis.RedisError, OSError) as e:
            # No master named, or no connection to it: nothing was sent.
            self._done(rec, start, start_wall, "fail", f"{type(e).__name__}: {e}")
            return False
        rec["node"] = conn.host
        outcome, error = "unknown", None
        try:
            conn.send_command("SET", key, n)
            r = conn.read_response()
            if r in (b"OK", "OK", True):
                outcome = "ok"
            else:
                outcome, error = "unknown", f"unexpected reply {r!r}"
        except redis.ResponseError as e:
            outcome, error = "fail", f"{type(e).__name__}: {e}"
        except redis.ConnectionError as e:
            # redis-py turns READONLY into this on a Sentinel-managed master connection.
            outcome = "fail" if "previous master is now a slave" in str(e) else "unknown"
            error = f"{type(e).__name__}: {e}"
            conn.disconnect()
        except (redis.RedisError, OSError) as e:
            outcome, error = "unknown", f"{type(e).__name__}: {e}"
            conn.disconnect()
        end, end_wall = time.monotonic(), time.time()
        if outcome == "ok" and self.wait_ms:
            try:
                conn.send_command("WAIT", 1, self.wait_ms)
                rec["wait"] = int(conn.read_response()) >= 1
            except (redis.RedisError, OSError, ValueError) as e:
                rec["wait_error"] = f"{type(e).__name__}: {e}"
                conn.disconnect()
        self.pool.release(conn)
        self._done(rec, start, start_wall, outcome, error, end, end_wall)
        return outcome == "ok"

    def _done(self, rec, start, start_wall, outcome, error, end=None, end_wall=None):
        if end is None:
            end, end_wall = time.monotonic(), time.time()
        rec.update(start=start, end=end, start_wall=start_wall, end_wall=end_wall, outcome=outcome, error=error)
        self.history.op(**rec)
        if outcome == "ok":
            self.ok += 1
            self.ok_times.append(end)

    def run(self):
        n = 0
        while not self._halt.is_set():
            n += 1
            if not self.one(n):
                time.sleep(0.01)
            elif self.interval:
                time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=10)
        if self.is_alive():
            raise RuntimeError(f"the redis-py writer {self.prefix} did not end within 10 s")


def _in_window(op, windows):
    return any(w["node"] in (None, op["node"]) and w["start"] <= op["end"] <= w["end"] for w in windows)


def check(path, name_of=lambda ip: ip):
    """Judges one history file (with its final record). Returns (stats, failures): failures is a
    list of (check number, message); stats has the counts the summary prints."""
    ops, events, windows, final = load(path)
    failures = []
    if final is None:
        return {}, [(4, "the history has no final state (the round did not finish)")]
    ok = [o for o in ops if o["outcome"] == "ok"]
    missing = set(final.get("missing") or [])
    master = final.get("master")
    st = {"ops": len(ops), "ok": len(ok), "fail": sum(o["outcome"] == "fail" for o in ops),
          "unknown": sum(o["outcome"] == "unknown" for o in ops),
          "confirmed": sum(1 for o in ok if o.get("wait") is True)}
    # (1) acknowledged and confirmed by WAIT 1: on the final master, no window.
    if master is None or final.get("missing") is None:
        failures.append((1, f"cannot be verified: no single readable final master to check the writes on "
                            f"({final.get('why_no_master')})"))
        st.update(lost=0, lost_confirmed=0, bound=0, lost_outside=0)
    else:
        lost = [o for o in ok if o["key"] in missing]
        lc = [o for o in lost if o.get("wait") is True]
        st["lost"], st["lost_confirmed"] = len(lost), len(lc)
        if lc:
            failures.append((1, f"{len(lc)} writes acknowledged AND confirmed by WAIT 1 are missing on the final master "
                                f"{name_of(master)}: " + _describe(lc, name_of)))
        # (2) other acknowledged writes: lost only inside the stated windows.
        outside = [o for o in lost if not _in_window(o, windows)]
        st["bound"] = sum(1 for o in ok if _in_window(o, windows))
        st["lost_outside"] = len(outside)
        if outside:
            failures.append((2, f"{len(outside)} acknowledged writes lost outside the stated windows "
                                f"{_windows(windows, name_of)}: " + _describe(outside, name_of)))
    # (3) never two nodes acknowledging at once (outside the windows): no node Y acknowledges a
    # write that lies wholly between two writes node X acknowledged (X's first reply before Y's
    # write was sent, X's last write sent after Y's reply).
    per = {}
    for o in ok:
        if o["node"] and not _in_window(o, windows):
            per.setdefault(o["node"], []).append(o)
    spans = {n: (min(o["end"] for o in v), max(o["start"] for o in v)) for n, v in per.items()}
    overlaps = []
    for x, (x_first, x_last) in spans.items():
        for y, v in per.items():
            if y == x:
                continue
            inside = [o for o in v if o["start"] > x_first and o["end"] < x_last]
            if inside:
                overlaps.append((x, y, inside))
    st["overlap"] = sum(len(i) for _, _, i in overlaps)
    for x, y, inside in overlaps:
        xs = [o for o in per[x] if o["start"] >= min(o["start"] for o in inside) - 1]
        failures.append((3, f"two writable masters: {name_of(y)} acknowledged {len(inside)} writes between "
                            f"{_t(min(o['start'] for o in inside), events)} and {_t(max(o['end'] for o in inside), events)} "
                            f"while {name_of(x)} kept acknowledging (until {_t(spans[x][1], events)}; "
                            f"e.g. {_describe(xs[-3:], name_of)}); {name_of(y)}: " + _describe(inside, name_of)))
    # (4) one writable master, every other node its linked replica; the watchers name it.
    for msg in final.get("topology_errors") or []:
        failures.append((4, msg))
    st["longest_pause_ms"] = final.get("longest_pause_ms", 0)
    return st, failures


def _t(t, events):
    """A time as seconds after the round's first event."""
    t0 = events[0]["t"] if events else 0
    return f"{t - t0:.2f}s"


def _describe(ops, name_of, k=3):
    xs = sorted(ops, key=lambda o: o["end"] or 0)
    parts = [f"{o['key']}@{name_of(o['node'])} via {o.get('via')} acked {o['end_wall']:.3f} wait={o.get('wait')}" for o in xs[:k]]
    return "[" + "; ".join(parts) + (f"; ... {len(xs) - k} more" if len(xs) > k else "") + "]"


def _windows(windows, name_of):
    return "[" + "; ".join(f"{name_of(w['node'])} {w['why']} ({(w['end'] - w['start']):.1f} s)" for w in windows) + "]" if windows else "[none]"
