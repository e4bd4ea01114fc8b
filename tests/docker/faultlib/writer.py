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

    def __init__(self, hosts, prefix, op_timeout=0.5, interval=0.001):
        super().__init__(daemon=True)
        # A list, or a callable giving the list (a client that asks where the master is).
        self.hosts = hosts if callable(hosts) else list(hosts)
        self.prefix = prefix
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

    def run(self):
        con, host, avoid, n = None, None, None, 0
        while not self._halt.is_set():
            if con is None:
                con, h = find_master(self.hosts() if callable(self.hosts) else self.hosts, avoid)
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
        hosts = Counter(h for _, h, _ in self.acked)
        return (f"writer {self.prefix}: acked={len(self.acked)} by_node={dict(hosts)} "
                f"errors={dict(self.errors)} longest_gap_ms={int(self.longest * 1000)}"
                f"{' (ended at %.1fs)' % (self.longest_end_ms / 1000) if self.longest_end_ms else ''}")


# The in-container loop: one redis-cli SET per line of output, "<n> <reply>", until the stop file
# appears or the time limit passes. redis-cli takes the password from REDISCLI_AUTH.
_PROBE = r'''
n=0; end=$(( $(date +%s) + $1 ))
while [ ! -e "$2" ] && [ "$(date +%s)" -lt "$end" ]; do
  n=$((n+1))
  r=$(redis-cli -h 127.0.0.1 -p 6379 SET "$3:$n" "$n" 2>&1 | tr '\n' ' ')
  echo "$n $r"
  sleep "$4"
done
echo done
'''


class ContainerWriter(threading.Thread):
    """Writes <prefix>:1, ... to the container's own Redis from inside it (docker exec), so writes
    are tried on a node the host cannot reach. Each reply is classified: `OK` acknowledged, a
    `NOREPLICAS` error is a refusal Redis returned, anything else (cannot connect, other errors)
    is counted apart and is never a refusal. Times are the host's, when the line arrived."""

    def __init__(self, env, g, prefix, interval=0.05, limit_s=300):
        super().__init__(daemon=True)
        self.env, self.g, self.prefix = env, g, prefix
        self.stopfile = f"/tmp/stop-{prefix}"
        self.acked = []  # (n, t)
        self.refused = []  # (n, t) NOREPLICAS
        self.other = Counter()
        self.other_first = {}
        cid = env.cid(g)
        env.docker("exec", cid, "rm", "-f", self.stopfile, check=False)
        self.proc = subprocess.Popen(
            ["docker", "exec", "-e", f"REDISCLI_AUTH={PASSWORD}", cid, "sh", "-c", _PROBE, "probe", str(limit_s),
             self.stopfile, prefix, str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.done = False

    def key(self, n):
        return f"{self.prefix}:{n}"

    def run(self):
        for line in self.proc.stdout:
            t = time.monotonic()
            line = line.strip()
            if line == "done":
                self.done = True
                continue
            n, _, reply = line.partition(" ")
            if not n.isdigit():
                self.other[line[:60]] += 1
                continue
            reply = reply.strip()
            if reply == "OK":
                self.acked.append((int(n), t))
            elif "NOREPLICAS" in reply:
                self.refused.append((int(n), t))
            else:
                word = reply.split(" ")[0] if reply else "(empty)"
                self.other[word] += 1
                self.other_first.setdefault(word, reply[:120])

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


def missing_on(host, keys_values):
    """The (key, value) pairs whose value is not on host; None when host cannot be read."""
    try:
        r = Redis(host, timeout=5.0)
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
