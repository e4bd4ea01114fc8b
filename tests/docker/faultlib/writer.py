"""Writers that record every acknowledged write: one from the host that follows the master, and
one inside a container (it reaches its own Redis while the container is cut off the network)."""

import socket
import subprocess
import threading
import time
from collections import Counter

from .base import PASSWORD, now_ms
from .resp import Redis, ReplyError, find_master


class Writer(threading.Thread):
    """Writes <prefix>:1, <prefix>:2, ... to whichever node says it is master, following it.

    A write counts as acknowledged only when Redis answered +OK. Any error or a reply slower than
    op_timeout abandons the connection and looks for the master again, trying the node that failed
    last. Records every acknowledged write with the node that acknowledged it and when, and the
    longest gap between two consecutive acknowledgements."""

    def __init__(self, hosts, prefix, op_timeout=0.5, interval=0.001, password=PASSWORD):
        super().__init__(daemon=True)
        # A list, or a callable giving the list (a client that asks where the master is).
        self.hosts = hosts if callable(hosts) else list(hosts)
        self.prefix = prefix
        self.password = password
        self.op_timeout = op_timeout
        self.interval = interval
        self.acked = []  # (n, host, monotonic time of the +OK)
        self.errors = Counter()
        self.switches = []  # (ms, host)
        self.longest = 0.0
        self.longest_end_ms = None
        self.first_ack = None
        self.last_ack = None
        self._halt = threading.Event()

    def key(self, n):
        return f"{self.prefix}:{n}"

    def stop(self):
        """Stops the thread and waits for it; raises if it did not end."""
        self._halt.set()
        self.join(timeout=10)
        if self.is_alive():
            raise RuntimeError(f"writer {self.prefix}: the thread did not end within 10 s of stop()")
        return self

    def records(self):
        """(key, value, host, time) of every acknowledged write."""
        return [(self.key(n), n, h, t) for n, h, t in self.acked]

    def acked_by(self, host, start=float("-inf"), end=float("inf")):
        return [n for n, h, t in self.acked if h == host and start <= t <= end]

    @property
    def by_host(self):
        """How many writes each node acknowledged."""
        return Counter(h for _, h, _ in list(self.acked))

    def missing_on(self, host):
        """The acknowledged (key, value) pairs not on host: all of them when host cannot be read."""
        pairs = [(self.key(n), n) for n, _, _ in self.acked]
        missing = missing_on(host, pairs, self.password)
        return pairs if missing is None else missing

    def run(self):
        con, host, avoid, n = None, None, None, 0
        while not self._halt.is_set():
            if con is None:
                con, h = find_master(self.hosts() if callable(self.hosts) else self.hosts, avoid, password=self.password)
                if con is None:
                    time.sleep(0.01)
                    continue
                con.settimeout(self.op_timeout)
                if h != host:
                    self.switches.append((now_ms(), h))
                host = h
            n += 1
            try:
                con.call("SET", self.key(n), n)
            except ReplyError as e:
                self.errors[str(e).split(" ")[0]] += 1
                con.close()
                con, avoid = None, host
                continue
            except (OSError, ValueError) as e:
                self.errors["timeout" if isinstance(e, socket.timeout) else type(e).__name__] += 1
                con.close()
                con, avoid = None, host
                continue
            t = time.monotonic()
            if self.last_ack is not None and t - self.last_ack > self.longest:
                self.longest = t - self.last_ack
                self.longest_end_ms = now_ms()
            if self.first_ack is None:
                self.first_ack = t
            self.last_ack = t
            self.acked.append((n, host, t))
            if self.interval:
                time.sleep(self.interval)
        if con is not None:
            con.close()

    def summary(self):
        return (f"writer {self.prefix}: acked={len(self.acked)} by_node={dict(self.by_host)} "
                f"errors={dict(self.errors)} longest_gap_ms={int(self.longest * 1000)}"
                f"{' (ended at %.1fs)' % (self.longest_end_ms / 1000) if self.longest_end_ms else ''}")


# The in-container loop: one redis-cli per write, until the stop file appears or the time limit
# passes. Before each write a line "b <n> <t0>", after it "e <n> <t0> <t1> <reply words> rc=<exit>"
# (t0, t1: wall-clock ns around the redis-cli call). With a WAIT timeout ($5 > 0) the same
# connection sends `WAIT 1 <ms>` after the SET, and its reply follows the SET's. redis-cli takes
# the password from REDISCLI_AUTH; `timeout` ends a call to a Redis that does not answer.
_PROBE = r"""
n=0; end=$(( $(date +%s) + $1 ))
while [ ! -e "$2" ] && [ "$(date +%s)" -lt "$end" ]; do
  n=$((n+1))
  t0=$(date +%s%N)
  echo "b $n $t0"
  if [ "$5" -gt 0 ]; then
    r=$(printf 'SET %s %s\nWAIT 1 %s\n' "$3:$n" "$n" "$5" | timeout 3 redis-cli -h 127.0.0.1 -p 6379 2>&1; echo "rc=$?")
  else
    r=$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 SET "$3:$n" "$n" 2>&1; echo "rc=$?")
  fi
  t1=$(date +%s%N)
  echo "e $n $t0 $t1 $(echo "$r" | tr '\n' ' ')"
  sleep "$4"
done
echo done
"""

# Replies that say Redis refused the write (it was not applied).
REFUSALS = ("NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "ERR", "WRONGTYPE", "OOM", "MISCONF",
            "NOAUTH", "WRONGPASS", "CLUSTERDOWN", "TRYAGAIN", "NOPERM")


def classify_cli(words, rc):
    """(outcome, error, wait) of one in-container write from redis-cli's output words and exit code."""
    text = " ".join(words)
    if words and words[0] == "OK":
        wait = None
        if len(words) >= 2 and words[1].lstrip("-").isdigit():
            wait = int(words[1]) >= 1
        return "ok", None, wait
    if rc == 124:
        return "unknown", f"timed out (3 s): {text[:120]}", None
    w = words[1] if words and words[0] == "(error)" and len(words) > 1 else (words[0] if words else "")
    if w in REFUSALS:
        return "fail", text[:200], None
    if "Could not connect" in text or "Connection refused" in text:
        return "fail", text[:200], None
    return "unknown", text[:200] or f"(no reply, exit {rc})", None


class ContainerWriter(threading.Thread):
    """Writes <prefix>:1, ... to the container's own Redis from inside it (docker exec), so writes
    are tried on a node the host cannot reach. Each reply is classified: `OK` acknowledged, a
    `NOREPLICAS` error is a refusal Redis returned, anything else (cannot connect, other errors)
    is counted apart and is never a refusal. Times are the container's clock around each call
    (the host's: one kernel), in the host's monotonic time. With `history` (faultlib.history.History),
    every write is recorded there; with `wait_ms`, each SET is followed by `WAIT 1 wait_ms`."""

    def __init__(self, env, g, prefix, interval=0.05, limit_s=300, history=None, wait_ms=0):
        super().__init__(daemon=True)
        self.env, self.g, self.prefix = env, g, prefix
        self.node = env.ip(g)
        self.history = history
        self.stopfile = f"/tmp/stop-{prefix}"
        self.acked = []  # (n, t)
        self.refused = []  # (n, t) NOREPLICAS
        self.other = Counter()
        self.other_first = {}
        self.pending = {}  # n -> t0 (wall ns) of a write begun and not reported
        self._wall_to_mono = time.monotonic() - time.time()
        cid = env.cid(g)
        env.docker("exec", cid, "rm", "-f", self.stopfile, check=False)
        self.proc = subprocess.Popen(
            ["docker", "exec", "-e", f"REDISCLI_AUTH={PASSWORD}", cid, "sh", "-c", _PROBE, "probe", str(limit_s),
             self.stopfile, prefix, str(interval), str(int(wait_ms))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.done = False

    def key(self, n):
        return f"{self.prefix}:{n}"

    def _record(self, n, t0_ns, t1_ns, outcome, error, wait):
        if self.history is None:
            return
        w0 = t0_ns / 1e9
        w1 = t1_ns / 1e9 if t1_ns is not None else None
        self.history.op(writer=self.prefix, n=n, key=self.key(n), value=n, node=self.node,
                        start=w0 + self._wall_to_mono, end=(w1 + self._wall_to_mono) if w1 else None,
                        start_wall=w0, end_wall=w1, outcome=outcome, error=error, wait=wait, via=f"inside {self.g}")

    def run(self):
        for line in self.proc.stdout:
            words = line.split()
            if words == ["done"]:
                self.done = True
                continue
            if len(words) == 3 and words[0] == "b" and words[1].isdigit():
                self.pending[int(words[1])] = int(words[2])
                continue
            if len(words) < 5 or words[0] != "e" or not words[1].isdigit() or not words[-1].startswith("rc="):
                self.other[line.strip()[:60]] += 1
                continue
            n, t0, t1 = int(words[1]), int(words[2]), int(words[3])
            self.pending.pop(n, None)
            rc = int(words[-1][3:]) if words[-1][3:].isdigit() else -1
            outcome, error, wait = classify_cli(words[4:-1], rc)
            t = t1 / 1e9 + self._wall_to_mono
            self._record(n, t0, t1, outcome, error, wait)
            if outcome == "ok":
                self.acked.append((n, t))
            elif error and "NOREPLICAS" in error:
                self.refused.append((n, t))
            else:
                word = (error or "").split(" ")[0] or "(empty)"
                self.other[word] += 1
                self.other_first.setdefault(word, (error or "")[:120])
        # Writes begun and never reported (the container died, or stop() cut the stream): unknown.
        for n, t0 in sorted(self.pending.items()):
            self._record(n, t0, None, "unknown", "no reply recorded (the writer's stream ended)", None)
        self.pending.clear()

    def stop(self):
        self.env.docker("exec", self.env.cid(self.g), "touch", self.stopfile, check=False, timeout=30)
        self.join(timeout=15)
        if self.is_alive():
            self.proc.kill()
            self.join(timeout=5)
            raise RuntimeError(f"container writer {self.prefix} on {self.g} did not end within 15 s of stop()")
        self.proc.wait(timeout=5)
        return self

    def records(self):
        return [(self.key(n), n, self.env.ip(self.g), t) for n, t in self.acked]

    def summary(self):
        return (f"container writer {self.prefix} on {self.g}: acked={len(self.acked)} refused_noreplicas={len(self.refused)} "
                f"other={dict(self.other)}{' ' + str(self.other_first) if self.other_first else ''}")


def missing_on(host, keys_values, password=PASSWORD):
    """The (key, value) pairs whose value is not on host; None when host cannot be read."""
    try:
        r = Redis(host, password=password, timeout=5.0)
    except (OSError, ReplyError):
        return None
    out = []
    try:
        for i in range(0, len(keys_values), 1000):
            batch = keys_values[i:i + 1000]
            vals = r.call("MGET", *[k for k, _ in batch])
            out.extend(kv for kv, v in zip(batch, vals) if v != str(kv[1]).encode())
    except (OSError, ReplyError):
        return None
    finally:
        r.close()
    return out


def acked_pairs(*writers):
    return [(k, v) for w in writers for k, v, _, _ in w.records()]
