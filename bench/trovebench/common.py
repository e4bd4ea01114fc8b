"""Shared plumbing: the run context (paths, binaries, AMQP URL), process bookkeeping and cleanup,
plain redis-server and sentinel processes, agent guests and the inventory, and statistics."""

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import redis

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The server every node of the run uses (plain nodes, sentinels and the agents' redis.binary):
# BENCH_SERVER_BIN, which scripts/bench.sh sets from BENCH_SERVER; else redis-server on PATH.
SERVER_BIN = os.environ.get("BENCH_SERVER_BIN") or "redis-server"


@functools.lru_cache(maxsize=None)
def server_identity(binary=None):
    """("redis" or "valkey", (major, minor, patch)) from `<binary> --version`."""
    out = subprocess.run([binary or SERVER_BIN, "--version"], capture_output=True, text=True, timeout=10).stdout
    name = "valkey" if out.lower().startswith("valkey") else "redis"
    v = next((w[2:] for w in out.split() if w.startswith("v=")), "0.0.0")
    return name, tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])


def log(*args):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now():
    return time.monotonic()


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


# ---------------------------------------------------------------------------------------------
# statistics

def percentile(values, q):
    """Linear-interpolated percentile (numpy's default); None for no values."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    pos = (len(vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def summary(values):
    vals = [v for v in values if v is not None]
    return {
        "n": len(vals),
        "missing": len(values) - len(vals),
        "median": percentile(vals, 50),
        "p95": percentile(vals, 95),
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
    }


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return None if a != 0 else 1.0
    return a / b


# ---------------------------------------------------------------------------------------------
# the run context

class Ctx:
    """Everything one benchmark run owns; `close()` stops every process it started."""

    def __init__(self, amqp_url, bin_dir, load_bin=None, smoke=False, keep=False):
        self.amqp_url = amqp_url
        self.bin_dir = bin_dir
        self.agent_bin = os.path.join(bin_dir, "trove-guestagent")
        self.ctl_bin = os.path.join(bin_dir, "trove-guestctl")
        self.load_bin = load_bin or os.path.join(bin_dir, "trovebench-rpc-load")
        self.smoke = smoke
        self.keep = keep
        self.tmp = tempfile.mkdtemp(prefix="trovebench-")
        os.chmod(self.tmp, 0o700)
        self.procs = []          # Popen objects we started
        self.pidfiles = []       # redis pid files of supervised servers (children of agents)
        self.queues = set()      # AMQP queues our servers declared (deleted at the end)
        self.run_id = uuid.uuid4().hex[:6]
        self.python = sys.executable

    def path(self, *parts):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def spawn(self, argv, log_path, env=None, **kw):
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        out = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=full_env, **kw)
        out.close()
        self.procs.append(p)
        return p

    def kill(self, p, sig=signal.SIGKILL, wait=5.0):
        if p is None or p.poll() is not None:
            return
        try:
            p.send_signal(sig)
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        for f in self.pidfiles:
            try:
                with open(f) as fh:
                    pid = int(fh.read().strip())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        self.delete_queues()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log("kept", self.tmp)

    def delete_queues(self):
        if not self.queues:
            return
        try:
            import kombu
            url = self.amqp_url.replace("rabbit://", "amqp://", 1)
            with kombu.Connection(url, connect_timeout=5) as conn:
                ch = conn.channel()
                for q in sorted(self.queues):
                    try:
                        ch.queue_delete(q)
                    except Exception:  # noqa: BLE001
                        ch = conn.channel()
        except Exception as e:  # noqa: BLE001
            log("could not delete bench queues:", e)
        self.queues.clear()


# ---------------------------------------------------------------------------------------------
# Redis

BASE_CONF = """bind 127.0.0.1
port {port}
save 3600 1 300 100 60 10000
appendonly no
rdbcompression no
pidfile {dir}/redis.pid
dir {dir}/data
logfile {logfile}
enable-debug-command local
"""


def base_conf(dirpath, port=6379, logfile='""'):
    text = BASE_CONF.format(port=port, dir=dirpath, logfile=logfile)
    name, version = server_identity()
    if name == "redis" and version < (7, 0, 0):
        # No enable-debug-command before 7.0 (DEBUG is open); one save pair per line (6.x ignores more).
        text = text.replace("enable-debug-command local\n", "")
        text = text.replace("save 3600 1 300 100 60 10000\n", "save 3600 1\nsave 300 100\nsave 60 10000\n")
    return text


def rcon(port, timeout=5.0):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, decode_responses=True)


def quiet(fn):
    """fn(), or False when Redis is unreachable or answers unexpectedly (for polling)."""
    try:
        return fn()
    except (redis.RedisError, OSError, ValueError, TypeError):
        return False


def wait_until(what, check, timeout=30.0, interval=0.01):
    deadline = now() + timeout
    last = None
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as e:
            last = e
        if now() > deadline:
            raise BenchError("timed out after %.0fs waiting for %s%s" % (timeout, what, " (%s)" % last if last else ""))
        time.sleep(interval)


def replication(port, con=None):
    c = con or rcon(port)
    return c.info("replication")


def linked_to(port, master_port, con=None, master_offset=None):
    """True when `port` replicates from `master_port` with the link up (and, if given, has
    applied `master_offset`)."""
    r = replication(port, con)
    if r.get("role") != "slave" or int(r.get("master_port", -1)) != master_port:
        return False
    if r.get("master_link_status") != "up" or r.get("master_sync_in_progress", 0) not in (0, "0"):
        return False
    if master_offset is not None and int(r.get("slave_repl_offset", -1)) < master_offset:
        return False
    return True


def stats(port, con=None):
    c = con or rcon(port)
    return c.info("stats")


class RedisNode:
    """A plain redis-server (the anchors' nodes)."""

    def __init__(self, ctx, name, extra_conf=""):
        self.ctx = ctx
        self.name = name
        self.port = free_port()
        self.dir = ctx.path("redis", name)
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.conf = os.path.join(self.dir, "redis.conf")
        with open(self.conf, "w") as f:
            f.write(base_conf(self.dir, self.port, logfile=os.path.join(self.dir, "redis.log")))
            f.write(extra_conf)
        self.proc = None
        self.start()

    def start(self):
        self.proc = self.ctx.spawn([SERVER_BIN, self.conf], os.path.join(self.dir, "stdout.log"))
        self.ctx.pidfiles.append(os.path.join(self.dir, "redis.pid"))
        wait_until("redis %s to answer" % self.name, lambda: rcon(self.port, 0.5).ping(), timeout=60)

    def kill9(self):
        self.ctx.kill(self.proc, signal.SIGKILL)

    def con(self, timeout=5.0):
        return rcon(self.port, timeout)


class Sentinel:
    def __init__(self, ctx, name, master_port, quorum=2, down_after=1000, failover_timeout=10000):
        self.ctx = ctx
        self.port = free_port()
        self.dir = ctx.path("sentinel", name)
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write("bind 127.0.0.1\nport %d\ndir %s\nlogfile %s\n" % (self.port, self.dir, os.path.join(self.dir, "sentinel.log")))
            f.write("sentinel monitor mymaster 127.0.0.1 %d %d\n" % (master_port, quorum))
            f.write("sentinel down-after-milliseconds mymaster %d\n" % down_after)
            f.write("sentinel failover-timeout mymaster %d\n" % failover_timeout)
            f.write("sentinel parallel-syncs mymaster 1\n")
        # redis-sentinel is redis-server in sentinel mode (the Debian redis-sentinel package only
        # adds a service around the same binary).
        self.proc = ctx.spawn([SERVER_BIN, self.conf, "--sentinel"], os.path.join(self.dir, "stdout.log"))
        wait_until("sentinel to answer", lambda: rcon(self.port, 0.5).ping(), timeout=30)

    def con(self, timeout=5.0):
        return rcon(self.port, timeout)


# ---------------------------------------------------------------------------------------------
# agents and the inventory

AGENT_ENV_BASE = {
    "TROVE_GUESTAGENT__CONDUCTOR__REPORT_INTERVAL": "3",
    "TROVE_GUESTAGENT__REDIS__SERVICE": "supervised",
    "TROVE_GUESTAGENT__REDIS__ADVERTISE_HOST": "127.0.0.1",
    "TROVE_GUESTAGENT__REPLICATION__FAILOVER_DETACH_GRACE": "60",
    "TROVE_GUESTAGENT__GUEST__SHUTDOWN_GRACE": "5",
}
if os.environ.get("BENCH_SERVER_BIN"):
    AGENT_ENV_BASE["TROVE_GUESTAGENT__REDIS__BINARY"] = SERVER_BIN


class Guest:
    """A trove-guestagent process supervising its own redis-server."""

    def __init__(self, ctx, name, env=None, start=True):
        self.ctx = ctx
        self.id = "b%s-%s" % (ctx.run_id, name)
        self.name = name
        self.port = free_port()
        self.dir = ctx.path("guests", self.id)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "agent.log")
        self.extra_env = dict(env or {})
        self.proc = None
        ctx.queues.update({"guestagent.%s" % self.id, "guestagent.%s.%s" % (self.id, self.id)})
        if start:
            self.start()

    def env(self):
        e = dict(AGENT_ENV_BASE)
        e.update({
            "TROVE_GUESTAGENT__RPC__TRANSPORT_URL": self.ctx.amqp_url,
            "TROVE_GUESTAGENT__GUEST__ID": self.id,
            "TROVE_GUESTAGENT__REDIS__CONFIG_FILE": os.path.join(self.dir, "redis.conf"),
            "TROVE_GUESTAGENT__REDIS__DATA_DIR": os.path.join(self.dir, "data"),
            "TROVE_GUESTAGENT__REDIS__PORT": str(self.port),
            "TROVE_GUESTAGENT__LOG__LEVEL": "info",
        })
        e.update(self.extra_env)
        return e

    def start(self):
        self.proc = self.ctx.spawn([self.ctx.agent_bin], self.log_path, env=self.env())
        if os.path.join(self.dir, "redis.pid") not in self.ctx.pidfiles:
            self.ctx.pidfiles.append(os.path.join(self.dir, "redis.pid"))

    def redis_pid(self):
        try:
            with open(os.path.join(self.dir, "redis.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def kill9(self):
        """The agent first (so nothing restarts Redis), then its Redis."""
        self.ctx.kill(self.proc, signal.SIGKILL)
        pid = self.redis_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def con(self, timeout=5.0):
        return rcon(self.port, timeout)

    def config_contents(self):
        return base_conf(self.dir, 6379, logfile='""')


class Fleet:
    """A set of guests plus the inventory file trove-guestctl reads."""

    def __init__(self, ctx, name, count, env=None):
        self.ctx = ctx
        self.name = name
        self.guests = [Guest(ctx, "%s%d" % (name, i + 1), env=env) for i in range(count)]
        self.ctl_env = dict(env or {})  # also for trove-guestctl (e.g. LD_PRELOAD in the fsync diagnostic)
        self.inventory = ctx.path("inventory-%s.toml" % name)
        self.write_inventory()
        for g in self.guests:
            self.wait_ping(g)
        self.prepare_all(self.guests)

    def write_inventory(self, replica_of=None):
        replica_of = replica_of or {}
        with open(self.inventory, "w") as f:
            f.write('transport_url = "%s"\ncontrol_exchange = "trove"\n' % self.ctx.amqp_url)
            for g in self.guests:
                f.write('\n[[guest]]\nid = "%s"\n' % g.id)
                if replica_of.get(g.id):
                    f.write('replica_of = "%s"\n' % replica_of[g.id])
        os.chmod(self.inventory, 0o600)

    def by_id(self, gid):
        return next(g for g in self.guests if g.id == gid)

    def ctl(self, *args, timeout=600, check=True):
        """Runs trove-guestctl; returns (seconds, exit code, parsed JSON or text, stderr)."""
        env = dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory, **getattr(self, "ctl_env", {}))
        t0 = now()
        p = subprocess.run([self.ctx.ctl_bin, *args], capture_output=True, text=True, env=env, timeout=timeout)
        took = now() - t0
        out = p.stdout.strip()
        try:
            parsed = json.loads(out) if out else None
        except ValueError:
            parsed = out
        if check and p.returncode != 0:
            raise BenchError("trove-guestctl %s failed (%d): %s %s" % (" ".join(args[:2]), p.returncode, out, p.stderr.strip()[-2000:]))
        return took, p.returncode, parsed, p.stderr

    def ctl_popen(self, *args):
        env = dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory, **getattr(self, "ctl_env", {}))
        return subprocess.Popen([self.ctx.ctl_bin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def call(self, g, method, args=None, timeout=600):
        return self.ctl("call", g.id, method, json.dumps(args or {}), "--timeout", str(timeout), timeout=timeout + 30)[2]

    def wait_ping(self, g, timeout=30.0):
        """Until the agent consumes (its log says so; a ping sent before its queue exists would be
        dropped and cost a whole call timeout), then one rpc_ping."""
        deadline = now() + timeout
        quiet = g.extra_env.get("TROVE_GUESTAGENT__LOG__LEVEL", "info") not in ("info", "debug", "trace")
        while not quiet and "consuming" not in tail(g.log_path, 200):
            if g.proc.poll() is not None:
                raise BenchError("agent %s exited: %s" % (g.id, tail(g.log_path)))
            if now() > deadline:
                raise BenchError("agent %s never started consuming: %s" % (g.id, tail(g.log_path)))
            time.sleep(0.01)
        if quiet:
            time.sleep(0.3)  # no "consuming" line to wait for at this log level
        while True:
            _, rc, out, _ = self.ctl("call", g.id, "rpc_ping", "--timeout", "2", check=False, timeout=30)
            if rc == 0 and out is True:
                return
            if now() > deadline:
                raise BenchError("agent %s never answered rpc_ping: %s" % (g.id, tail(g.log_path)))
            time.sleep(0.05)

    def prepare_all(self, guests):
        """prepare on every guest at once (each a call that returns when its Redis runs)."""
        env = dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory)
        procs = []
        for g in guests:
            procs.append(subprocess.Popen([self.ctx.ctl_bin, "call", g.id, "prepare", json.dumps(self.prepare_args(g)),
                                           "--timeout", "120"], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p, g in zip(procs, guests):
            out, err = p.communicate(timeout=180)
            if p.returncode != 0:
                raise BenchError("prepare of %s failed: %s %s" % (g.id, out, err[-1000:]))
        for g in guests:
            wait_until("redis of %s" % g.id, lambda g=g: g.con(0.5).ping(), timeout=60)

    def prepare_args(self, g):
        return {
            "packages": None, "databases": [], "memory_mb": 2048, "users": [], "device_path": None,
            "mount_point": None, "backup_info": None, "config_contents": g.config_contents(),
            "root_password": None, "overrides": {}, "cluster_config": None, "snapshot": None,
        }

    def prepare(self, g):
        self.prepare_all([g])

    def close(self):
        """Stops every agent of the fleet and its Redis."""
        for g in self.guests:
            g.kill9()

    def live_roles(self):
        """{guest id: (role, master_port)} read from Redis directly."""
        out = {}
        for g in self.guests:
            r = replication(g.port)
            out[g.id] = (r.get("role"), int(r["master_port"]) if r.get("master_port") else None)
        return out


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def populate(port, mb, value_size=1024, con=None):
    """Fills a master with about `mb` MiB of values (DEBUG POPULATE; values are not compressed in
    the RDB because the config says rdbcompression no)."""
    c = con or rcon(port, timeout=600)
    keys = max(1, int(mb * 1024 * 1024 / value_size))
    c.execute_command("DEBUG", "POPULATE", keys, "data", value_size)
    mem = int(c.info("memory")["used_memory"])
    return keys, mem


def git(*args):
    p = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=30)
    return p.stdout.strip() if p.returncode == 0 else None


def agent_commit():
    """The agent the binaries were built from: HEAD, whether the tree differs from it, and the last
    commit that changed the agent's sources (src/, Cargo.toml, Cargo.lock)."""
    return {"head": git("rev-parse", "--short=10", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "src_dirty": bool(git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")),
            "src_commit": git("log", "-1", "--format=%h", "--abbrev=10", "--", "src", "Cargo.toml", "Cargo.lock")}


def provenance():
    """What each section records: the agent commit, the machine, and the load average now."""
    def read(path, key=None):
        try:
            with open(path) as f:
                for line in f:
                    if key is None:
                        return line
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return None
    return {"agent": agent_commit(),
            "machine": {"cores": os.cpu_count(), "cpu": read("/proc/cpuinfo", "model name"),
                        "kernel": os.uname().release},
            "load": " ".join((read("/proc/loadavg") or "").split()[:3])}


def machine_description():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            return "?"
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem_kb = sh("grep MemTotal /proc/meminfo | awk '{print $2}'")
    return {
        "nproc": sh("nproc"),
        "memory": "%.1f GiB" % (int(mem_kb) / 1024 / 1024) if mem_kb.isdigit() else "?",
        "cpu": cpu or "?",
        "kernel": sh("uname -r"),
        "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
        "redis": sh("%s --version" % SERVER_BIN).split(" sha=")[0],
        "rabbitmq": sh("dpkg-query -W -f='${Version}' rabbitmq-server"),
        "erlang": sh("dpkg-query -W -f='${Version}' erlang-base"),
        "rustc": sh("rustc --version"),
        "python": sys.version.split()[0],
        "oslo.messaging": sh("%s -c 'import oslo_messaging,importlib.metadata as m; print(m.version(\"oslo.messaging\"))'" % sys.executable),
        "trove (PyPI)": sh("%s -c 'import importlib.metadata as m; print(m.version(\"trove\"))' 2>/dev/null" % sys.executable) or "not installed",
        "redis-py": redis.__version__,
        "agent": sh("git -C %s rev-parse --short HEAD" % ROOT) + (" (+ uncommitted changes)" if sh("git -C %s status --porcelain -- src Cargo.toml Cargo.lock" % ROOT) else ""),
        "load_at_start": sh("cut -d' ' -f1-3 /proc/loadavg"),
    }
