#!/usr/bin/env python3
"""Fault-injection scenarios against real containers (driven by scripts/docker-tests.sh).

One scenario per invocation:

    faults.py SCENARIO        (environment: see Env.from_environ)

Each scenario starts from three fresh guest containers (guest1..3 of the compose project, with
guest ids unique to the scenario), prepares them, runs its faults with trove-guestctl on the host,
and prints detail lines followed by exactly one summary line:

    scenario=<name> result=pass|fail acked=<n> lost=<n> longest_pause_ms=<n>

Exit status 0 when the scenario passed, 1 when it failed.

Only the Python standard library is used: Redis is spoken with a minimal RESP client, and the
containers are driven with the docker CLI. Writes go from the host to the containers' addresses
on the project's private bridge network.
"""

import json
import os
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter

PASSWORD = "fault-secret"
TLS_PORT = 6380
GUESTS = ("guest1", "guest2", "guest3")
# What prepare sends (config_contents). requirepass makes cross-container replication possible
# with protected mode on; DEBUG is allowed from inside the container only (DEBUG POPULATE).
REDIS_CONF = f"""bind * -::*
protected-mode yes
port 6379
requirepass {PASSWORD}
save 3600 1 300 100 60 10000
appendonly no
logfile ""
enable-debug-command local
"""
T0 = time.monotonic()


def now_ms():
    return int((time.monotonic() - T0) * 1000)


def say(text):
    print(f"  [{now_ms() / 1000:6.1f}s] {text}", flush=True)


# --------------------------------------------------------------------------------------------
# A minimal RESP client


class ReplyError(Exception):
    """An error reply from Redis (-ERR, -READONLY, -NOREPLICAS, ...)."""


class Redis:
    def __init__(self, host, port=6379, password=PASSWORD, timeout=2.0, connect_timeout=None):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        if password:
            self.call("AUTH", password)

    def close(self):
        for x in (self.f, self.sock):
            try:
                x.close()
            except OSError:
                pass

    def settimeout(self, t):
        self.sock.settimeout(t)

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection to {self.host} closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError(f"connection to {self.host} closed")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ConnectionError(f"bad reply from {self.host}: {line!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        r = self.read()
        if isinstance(r, ReplyError):
            raise r
        return r

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self.encode(c) for c in commands))
        return [self.read() for _ in commands]

    def info(self, section="all"):
        text = self.call("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


def rinfo(host, section="all", timeout=1.0):
    """INFO from a fresh connection; None when the node cannot be reached."""
    try:
        r = Redis(host, timeout=timeout)
    except (OSError, ReplyError):
        return None
    try:
        return r.info(section)
    except (OSError, ReplyError):
        return None
    finally:
        r.close()


def rcall(host, *args, timeout=2.0):
    r = Redis(host, timeout=timeout)
    try:
        return r.call(*args)
    finally:
        r.close()


def find_master(hosts, avoid=None, timeout=0.3):
    """A connection to the first node (the one to avoid last) that says role:master."""
    order = [h for h in hosts if h != avoid] + [h for h in hosts if h == avoid]
    for h in order:
        try:
            r = Redis(h, timeout=timeout)
        except (OSError, ReplyError):
            continue
        try:
            if r.info("replication").get("role") == "master":
                return r, h
        except (OSError, ReplyError):
            pass
        r.close()
    return None, None


class Writer(threading.Thread):
    """Writes <prefix>:1, <prefix>:2, ... to whichever node says it is master, following it.

    A write counts as acknowledged only when Redis answered +OK. Any error or a reply slower than
    op_timeout abandons the connection and looks for the master again, trying the node that failed
    last. Records every acknowledged write with the node that acknowledged it, and the longest gap
    between two consecutive acknowledgements."""

    def __init__(self, hosts, prefix, op_timeout=0.5, interval=0.001):
        super().__init__(daemon=True)
        self.hosts = list(hosts)
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.interval = interval
        self.acked = []  # (n, host)
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
        self._halt.set()
        self.join(timeout=10)
        return self

    def run(self):
        con, host, avoid, n = None, None, None, 0
        while not self._halt.is_set():
            if con is None:
                con, h = find_master(self.hosts, avoid)
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
            self.acked.append((n, host))
            if self.interval:
                time.sleep(self.interval)
        if con is not None:
            con.close()

    def summary(self):
        hosts = Counter(h for _, h in self.acked)
        return (f"writer {self.prefix}: acked={len(self.acked)} by_node={dict(hosts)} "
                f"errors={dict(self.errors)} longest_gap_ms={int(self.longest * 1000)}"
                f"{' (ended at %.1fs)' % (self.longest_end_ms / 1000) if self.longest_end_ms else ''}")


def missing_on(host, keys_values):
    """The (key, value) pairs whose value is not on host (all of them when it cannot be read)."""
    try:
        r = Redis(host, timeout=5.0)
    except (OSError, ReplyError):
        return list(keys_values)
    out = []
    try:
        for i in range(0, len(keys_values), 1000):
            batch = keys_values[i:i + 1000]
            vals = r.call("MGET", *[k for k, _ in batch])
            out.extend(kv for kv, v in zip(batch, vals) if v != str(kv[1]).encode())
    except (OSError, ReplyError):
        return list(keys_values)
    finally:
        r.close()
    return out


def acked_pairs(*writers):
    return [(w.key(n), n) for w in writers for n, _ in w.acked]


# --------------------------------------------------------------------------------------------
# The environment: compose project, containers, trove-guestctl


def run(cmd, timeout=60, check=False, env=None, input=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


class Ctl:
    """The result of one trove-guestctl command."""

    def __init__(self, args, rc, out, err, ms):
        self.args, self.rc, self.out, self.err, self.ms = args, rc, out, err, ms

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            return None

    def describe(self):
        rc = "timed out" if self.rc is None else f"exit {self.rc}"
        text = (self.err.strip() + "\n" + self.out.strip()).strip()
        lines = text.splitlines()
        tail = "\n".join("      | " + l for l in lines[-12:])
        return f"trove-guestctl {' '.join(self.args[:2])}: {rc} after {self.ms} ms" + (f"\n{tail}" if tail else "")


class Env:
    def __init__(self, scenario):
        e = os.environ
        self.scenario = scenario
        self.project = e["TROVE_FAULTS_PROJECT"]
        self.prefix = e["TROVE_SUBNET_PREFIX"]
        self.guestctl = e["TROVE_FAULTS_GUESTCTL"]
        self.compose = shlex.split(e["TROVE_FAULTS_COMPOSE"])
        self.workdir = os.path.join(e["TROVE_FAULTS_WORKDIR"], scenario)
        self.flow_deadline = int(e.get("TROVE_FAULTS_FLOW_DEADLINE", "120"))
        self.fence_delay = int(e.get("TROVE_FAULTS_FENCE_DELAY", "12"))
        os.makedirs(self.workdir, exist_ok=True)
        self.tag = f"{scenario.split('_')[0][:8]}{random.randrange(16**4):04x}"
        self.inventory = os.path.join(self.workdir, "inventory.toml")
        self.containers = {}
        self.network = None
        self.background = []

    # --- names and addresses
    def ip(self, g):
        return f"{self.prefix}.{10 + int(g[-1])}"

    def gid(self, g):
        return f"{self.tag}-{g}"

    @property
    def broker_ip(self):
        return f"{self.prefix}.2"

    def cid(self, service):
        if service not in self.containers:
            p = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}"], check=True)
            ids = p.stdout.split()
            if len(ids) != 1:
                raise RuntimeError(f"expected one container for {service}, found {ids}")
            self.containers[service] = ids[0]
        return self.containers[service]

    def docker(self, *args, timeout=60, check=True):
        return run(["docker", *args], timeout=timeout, check=check)

    def compose_run(self, *args, timeout=120):
        env = dict(os.environ, TROVE_RUN_TAG=self.tag)
        return run([*self.compose, *args], timeout=timeout, check=True, env=env)

    def net(self):
        if self.network is None:
            p = run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"], check=True)
            ids = p.stdout.split()
            if len(ids) != 1:
                raise RuntimeError(f"expected one network for project {self.project}, found {ids}")
            self.network = ids[0]
        return self.network

    def exec(self, g, *cmd, timeout=60, check=True):
        return self.docker("exec", self.cid(g), *cmd, timeout=timeout, check=check)

    def redis_cli(self, g, *args, timeout=120):
        return self.exec(g, "redis-cli", "--no-auth-warning", "-a", PASSWORD, *args, timeout=timeout).stdout.strip()

    def agent_pid(self, g):
        p = self.exec(g, "pidof", "trove-guestagent", check=False)
        return p.stdout.strip() or None

    # --- trove-guestctl
    def ctl_cmd(self, *args):
        return [self.guestctl, *args]

    def ctl_env(self):
        return dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory, NO_COLOR="1")

    def ctl(self, *args, timeout=90):
        t = time.monotonic()
        try:
            p = subprocess.run(self.ctl_cmd(*args), capture_output=True, text=True, timeout=timeout, env=self.ctl_env())
            return Ctl(args, p.returncode, p.stdout, p.stderr, int((time.monotonic() - t) * 1000))
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return Ctl(args, None, out, err, int((time.monotonic() - t) * 1000))

    def ctl_background(self, *args):
        """Starts trove-guestctl; returns (Popen, start time, stdout path, stderr path)."""
        name = args[0]
        out = os.path.join(self.workdir, f"{name}.out")
        err = os.path.join(self.workdir, f"{name}.err")
        p = subprocess.Popen(self.ctl_cmd(*args), stdout=open(out, "w"), stderr=open(err, "w"), env=self.ctl_env())
        self.background.append(p)
        return p, time.monotonic(), out, err

    def stop_background(self):
        for p in self.background:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()

    def call(self, g, method, args=None, timeout=5):
        a = [g if g.startswith(self.tag) else self.gid(g), method]
        if args is not None:
            a.append(json.dumps(args))
        return self.ctl("call", *a, "--timeout", str(timeout), timeout=timeout + 15)

    def ping(self, g, timeout=2):
        c = self.call(g, "rpc_ping", timeout=timeout)
        return c.rc == 0 and c.out.strip() == "true"

    def wait_ping(self, g, secs):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if self.ping(g, timeout=2):
                return True
            time.sleep(0.2)
        return False

    def status(self, g):
        c = self.call(g, "get_replication_status", timeout=5)
        return c.json() if c.rc == 0 else None

    # --- lifecycle
    def broker_healthy(self):
        p = self.docker("inspect", "-f", "{{.State.Health.Status}}", self.cid("rabbitmq"), check=False)
        return p.stdout.strip() == "healthy"

    def wait_broker(self, secs=90):
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            if self.broker_healthy():
                return True
            time.sleep(0.5)
        return False

    def fresh_guests(self):
        """Removes the guest containers of earlier scenarios and starts new ones with this tag."""
        old = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"], check=True).stdout.split()
        guests = []
        for c in old:
            svc = self.docker("inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}}', c).stdout.strip()
            if svc in GUESTS:
                guests.append(c)
        paused = run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                      "--filter", "status=paused"], check=True).stdout.split()
        if paused:
            self.docker("unpause", *paused, check=False)
        if guests:
            self.docker("rm", "-f", "-v", *guests)
        self.containers.clear()
        self.compose_run("up", "-d", "--no-build", "rabbitmq")
        if not self.wait_broker():
            raise RuntimeError("the RabbitMQ container did not become healthy within 90 s")
        self.compose_run("up", "-d", "--no-build", "--no-deps", *GUESTS)

    def write_inventory(self):
        lines = [f'transport_url = "rabbit://trove:trove@{self.broker_ip}:5672/"', 'control_exchange = "trove"']
        for g in GUESTS:
            lines += ["", "[[guest]]", f'id = "{self.gid(g)}"']
        with open(self.inventory, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.inventory, 0o600)

    def inventory_replica_of(self):
        with open(self.inventory, "rb") as f:
            inv = tomllib.load(f)
        return {g["id"]: g.get("replica_of") for g in inv.get("guest", [])}

    def prepare_all(self):
        args = {"packages": None, "databases": [], "memory_mb": 512, "users": [], "device_path": None,
                "mount_point": "/var/lib/redis", "backup_info": None, "config_contents": REDIS_CONF,
                "root_password": None, "overrides": {}, "cluster_config": None, "snapshot": None}
        results = {}

        def one(g):
            if not self.wait_ping(g, 30):
                results[g] = f"{self.gid(g)}: the agent never answered rpc_ping"
                return
            c = self.call(g, "prepare", args, timeout=60)
            results[g] = None if c.rc == 0 else c.describe()

        threads = [threading.Thread(target=one, args=(g,)) for g in GUESTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [e for e in results.values() if e]
        if errors:
            raise RuntimeError("prepare failed:\n" + "\n".join(errors))
        for g in GUESTS:
            info = rinfo(self.ip(g), "replication", timeout=2)
            if not info or info.get("role") != "master":
                raise RuntimeError(f"{g} is not a serving master after prepare: {info}")

    def save_logs(self):
        paths = []
        for svc in ("rabbitmq", *GUESTS):
            try:
                cid = self.cid(svc)
            except RuntimeError:
                continue
            path = os.path.join(self.workdir, f"{svc}.log")
            p = self.docker("logs", "--timestamps", cid, check=False, timeout=30)
            with open(path, "w") as f:
                f.write(p.stdout + p.stderr)
            if svc in GUESTS:
                rl = self.docker("exec", cid, "cat", "/var/lib/redis/redis-server.log", check=False, timeout=10)
                if rl.returncode == 0:
                    with open(os.path.join(self.workdir, f"{svc}-redis.log"), "w") as f:
                        f.write(rl.stdout)
            paths.append(path)
        return paths


# --------------------------------------------------------------------------------------------
# Scenario helpers


class Failed(Exception):
    pass


class Result:
    def __init__(self, name):
        self.name = name
        self.acked = 0
        self.lost = 0
        self.pause_ms = 0
        self.failures = []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
            say(f"FAIL: {msg}")
        return cond

    def require(self, cond, msg):
        if not self.check(cond, msg):
            raise Failed(msg)

    def line(self):
        result = "pass" if not self.failures else "fail"
        return (f"scenario={self.name} result={result} acked={self.acked} lost={self.lost} "
                f"longest_pause_ms={self.pause_ms}")


def wait_for(fn, secs, interval=0.1):
    deadline = time.monotonic() + secs
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


def replica_state(env, g):
    info = rinfo(env.ip(g), "replication")
    if info is None:
        return None
    return {
        "role": info.get("role"),
        "master_host": info.get("master_host"),
        "link": info.get("master_link_status"),
        "sync": info.get("master_sync_in_progress"),
        "offset": int(info.get("slave_repl_offset", info.get("master_repl_offset", "-1"))),
        "master_repl_offset": int(info.get("master_repl_offset", "-1")),
        "connected_slaves": int(info.get("connected_slaves", "0")),
        "replid": info.get("master_replid"),
    }


def linked_to(env, g, master):
    """g replicates from master, its link is up and it has reached master's offset."""
    s, m = replica_state(env, g), replica_state(env, master)
    return bool(s and m and s["role"] == "slave" and s["master_host"] == env.ip(master) and s["link"] == "up"
                and s["sync"] == "0" and s["offset"] >= m["master_repl_offset"])


def config_get(env, g, pattern):
    try:
        r = rcall(env.ip(g), "CONFIG", "GET", pattern)
    except (OSError, ReplyError) as e:
        return f"(CONFIG GET failed: {e})"
    return {k.decode(): v.decode() for k, v in zip(r[::2], r[1::2])}


def stats(env, g):
    info = rinfo(env.ip(g), "stats")
    if not info:
        return {}
    return {k: int(info.get(k, "0")) for k in ("sync_full", "sync_partial_ok", "sync_partial_err")}


def create(env, res, master, replicas, timeout=120):
    c = env.ctl("create-replicas", "--replica-of", env.gid(master), *[env.gid(r) for r in replicas], timeout=timeout)
    say(f"create-replicas {master} <- {','.join(replicas)}: rc={c.rc} in {c.ms} ms")
    res.require(c.rc == 0, "create-replicas failed: " + c.describe())
    return c


def promote(env, g, note=""):
    """promote-to-replica-source g; returns the command and its JSON report, and says how it went."""
    c = env.ctl("promote-to-replica-source", env.gid(g))
    rep = c.json() or {}
    say(f"promote-to-replica-source {g}{note}: rc={c.rc} in {c.ms} ms, writes_blocked_ms={rep.get('writes_blocked_ms')}, "
        f"total_ms={rep.get('total_ms')}")
    return c, rep


def verify_writes(env, res, pairs, nodes, secs=15, label="acknowledged writes"):
    """Waits until every pair is on every node; sets res.acked/res.lost; returns the missing map."""
    missing = {}

    def all_there():
        missing.clear()
        for g in nodes:
            m = missing_on(env.ip(g), pairs)
            if m:
                missing[g] = m
        return not missing

    wait_for(all_there, secs, interval=0.5)
    lost = set()
    for g, m in missing.items():
        lost.update(k for k, _ in m)
        say(f"{g} lacks {len(m)} of the {len(pairs)} {label} (first: {[k for k, _ in m[:5]]})")
    res.acked = len(pairs)
    res.lost = len(lost)
    say(f"{label}: {len(pairs)} checked on {','.join(nodes)}, {len(lost)} missing")
    res.check(not lost, f"{len(lost)} {label} are missing after {secs}s")
    return missing


def show_table(env):
    c = env.ctl("show", timeout=30)
    for line in c.out.rstrip().splitlines():
        say("  " + line)


def kill_agent(env, g):
    pid = env.agent_pid(g)
    if not pid:
        raise Failed(f"no trove-guestagent process in {g}")
    env.exec(g, "sh", "-c", f"kill -9 {pid}")
    return pid


def set_net(env, g, connected):
    if connected:
        env.docker("network", "connect", "--ip", env.ip(g), env.net(), env.cid(g))
    else:
        env.docker("network", "disconnect", "--force", env.net(), env.cid(g))


# --------------------------------------------------------------------------------------------
# Scenarios


def s_promote_under_load(env, res):
    """1. A writer follows the master through promote-to-replica-source; nothing acknowledged is lost."""
    create(env, res, "guest1", ["guest2", "guest3"])
    full0 = stats(env, "guest2")
    w = Writer([env.ip(g) for g in GUESTS], "s1")
    w.start()
    time.sleep(1.5)
    c, rep = promote(env, "guest2")
    time.sleep(1.5)
    w.stop()
    say(w.summary())
    say("master switches seen by the writer: " + ", ".join(f"{h}@{t / 1000:.1f}s" for t, h in w.switches))
    res.pause_ms = int(w.longest * 1000)
    res.require(c.rc == 0, "promote failed: " + c.describe())
    res.check(len(w.acked) > 200, f"the writer made too few writes ({len(w.acked)})")
    for g in ("guest1", "guest3"):
        res.check(wait_for(lambda: linked_to(env, g, "guest2"), 15), f"{g} is not a linked replica of guest2 after the promote: {replica_state(env, g)}")
    verify_writes(env, res, acked_pairs(w), ["guest2", "guest1", "guest3"])
    full1 = stats(env, "guest2")
    say(f"resyncs served by the new master guest2: full={full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"partial={full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)}")
    show_table(env)


def s_master_killed_eject(env, res):
    """2. The master dies (docker kill) with one replica lagging; eject picks the most current one."""
    create(env, res, "guest1", ["guest2", "guest3"])
    m = env.ip("guest1")
    wa = Writer([m], "s2a")
    wa.start()
    time.sleep(0.5)
    env.docker("pause", env.cid("guest3"))
    rcall(m, "CLIENT", "KILL", "TYPE", "replica")
    say("paused guest3 and cut the replica links on the master (CLIENT KILL TYPE replica)")
    time.sleep(1.0)
    wa.stop()
    say(wa.summary())
    caught_up = wait_for(lambda: linked_to(env, "guest2", "guest1"), 10)
    res.require(caught_up, f"guest2 did not catch up with the master before the kill: {replica_state(env, 'guest2')}")
    before = {g: replica_state(env, g) for g in ("guest1", "guest2")}
    env.docker("kill", env.cid("guest1"))
    t_kill = time.monotonic()
    env.docker("unpause", env.cid("guest3"))
    say(f"killed guest1 (master offset {before['guest1']['master_repl_offset']}, guest2 offset {before['guest2']['offset']}); unpaused guest3")
    full0 = stats(env, "guest2")
    wb = Writer([env.ip("guest2"), env.ip("guest3")], "s2b")
    wb.start()
    c = env.ctl("eject-replica-source", env.gid("guest1"), timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest1: rc={c.rc} in {c.ms} ms (the flow itself: total_ms={rep.get('total_ms')}), "
        f"new_master={rep.get('new_master')}")
    for line in c.err.splitlines():
        if "candidate" in line:
            say("  " + line.strip())
    time.sleep(1.5)
    wb.stop()
    say(wb.summary())
    gap = (wb.first_ack - max(t_kill, wa.last_ack)) if wb.first_ack and wa.last_ack else 0
    say(f"writes unavailable from the kill until the first write on the new master: {int(gap * 1000)} ms")
    res.pause_ms = int(max(wa.longest, wb.longest, gap) * 1000)
    res.require(c.rc == 0, "eject failed: " + c.describe())
    res.check(rep.get("new_master") == env.gid("guest2"), f"the most current replica guest2 must win, got {rep.get('new_master')}")
    offsets = {e["id"]: e["offset"] for e in rep.get("evidence", [])}
    res.check(len(set(offsets.values())) > 1, f"the lag was not real: {offsets}")
    res.check(wait_for(lambda: linked_to(env, "guest3", "guest2"), 15), f"guest3 does not follow guest2: {replica_state(env, 'guest3')}")
    res.check(len(wb.acked) > 50, f"too few writes on the new master ({len(wb.acked)})")
    # Everything acknowledged before the kill had reached guest2 (checked above), so none of it may
    # be lost; the new master's writes must be on every live node.
    verify_writes(env, res, acked_pairs(wa, wb), ["guest2", "guest3"])
    full1 = stats(env, "guest2")
    say(f"guest3's resync from guest2: full={full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"partial={full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)}")
    inv = env.inventory_replica_of()
    res.check(inv.get(env.gid("guest3")) == env.gid("guest2") and inv.get(env.gid("guest2")) is None,
              f"the inventory does not record the new topology: {inv}")


def s_master_cut_off(env, res):
    """3. The master is cut off the network, ejected, then comes back: it must be fenced, then re-attached."""
    create(env, res, "guest1", ["guest2", "guest3"])
    t_created = time.monotonic()
    wa = Writer([env.ip(g) for g in GUESTS], "s3a")
    wa.start()
    time.sleep(1.0)
    wa.stop()
    say(wa.summary())
    for g in ("guest2", "guest3"):
        res.require(wait_for(lambda: linked_to(env, g, "guest1"), 10), f"{g} did not catch up before the cut")
    fence = int(os.environ.get("TROVE_FAULTS_MIN_REPLICAS", "1"))
    if fence > 0:
        # The agent arms min-replicas-to-write once the replicas are online (at its next status probe).
        armed = wait_for(lambda: config_get(env, "guest1", "min-replicas-to-write") == {"min-replicas-to-write": str(fence)}, 15)
        say(f"split-brain fence on guest1 {'armed' if armed else 'NOT armed'} {time.monotonic() - t_created:.1f}s after create-replicas returned")
        res.check(armed, f"the agent did not arm min-replicas-to-write={fence} on the master within 15 s of create-replicas")
    else:
        say("the agent's split-brain fence is off (TROVE_FAULTS_MIN_REPLICAS=0)")
    say(f"guest1 before the cut: {config_get(env, 'guest1', 'min-replicas-*')}")
    set_net(env, "guest1", False)
    t_cut = time.monotonic()
    say("disconnected guest1 from the network (its agent cannot reach RabbitMQ either)")
    c = env.ctl("eject-replica-source", env.gid("guest1"), timeout=120)
    if c.rc == 3 and "alive" in c.err:
        say("eject refused (the old master still answered); retrying with --force")
        c = env.ctl("eject-replica-source", env.gid("guest1"), "--force", timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest1: rc={c.rc} in {c.ms} ms (the flow itself: total_ms={rep.get('total_ms')}), "
        f"new_master={rep.get('new_master')}")
    res.require(c.rc == 0, "eject failed: " + c.describe())
    new = next((g for g in GUESTS if env.gid(g) == rep.get("new_master")), None)
    res.require(new in ("guest2", "guest3"), f"unexpected new master {rep.get('new_master')}")
    other = "guest3" if new == "guest2" else "guest2"
    wb = Writer([env.ip(new), env.ip(other)], "s3b")
    wb.start()
    # Any fence needs the old master to notice that its replicas are gone; Redis's own
    # min-replicas-max-lag is 10 s. Come back no earlier than that after the cut.
    wait_s = env.fence_delay - (time.monotonic() - t_cut)
    if wait_s > 0:
        time.sleep(wait_s)
    set_net(env, "guest1", True)
    t_back = time.monotonic()
    say(f"reconnected guest1 {t_back - t_cut:.1f}s after the cut")
    # The old master must not take writes: probe it for 3 s.
    split_acked, refusals = [], Counter()
    n = 0
    while time.monotonic() - t_back < 3.0:
        n += 1
        try:
            rcall(env.ip("guest1"), "SET", f"s3split:{n}", n, timeout=0.5)
            split_acked.append((f"s3split:{n}", n))
        except ReplyError as e:
            refusals[str(e).split(" ")[0]] += 1
        except OSError as e:
            refusals[type(e).__name__] += 1
        time.sleep(0.05)
    st = replica_state(env, "guest1")
    say(f"old master after reconnect: role={st and st['role']} connected_slaves={st and st['connected_slaves']} "
        f"{config_get(env, 'guest1', 'min-replicas-*')}")
    say(f"writes tried on the old master after reconnect: {n}, acknowledged {len(split_acked)}, refused {dict(refusals)}")
    res.check(not split_acked, f"split brain: the old master guest1 acknowledged {len(split_acked)} of {n} writes after it came back "
              "(nothing makes a master that lost its replicas refuse writes; the agent's [replication] "
              f"min_replicas_to_write is {os.environ.get('TROVE_FAULTS_MIN_REPLICAS', '1')})")
    pinged = env.wait_ping("guest1", 40)
    say(f"guest1's agent answers again {time.monotonic() - t_back:.1f}s after the reconnect" if pinged else "guest1's agent does not answer")
    res.require(pinged, "the old master's agent did not come back within 40 s of the reconnect")
    create(env, res, new, ["guest1"])
    res.check(wait_for(lambda: linked_to(env, "guest1", new), 15), f"guest1 is not a linked replica of {new}: {replica_state(env, 'guest1')}")
    time.sleep(0.5)
    wb.stop()
    say(wb.summary())
    res.pause_ms = int(max(wa.longest, wb.longest) * 1000)
    # Writes acknowledged by the new master (and before the cut) must be everywhere; writes the old
    # master acknowledged after it came back count as lost if they are not on the new master.
    verify_writes(env, res, acked_pairs(wa, wb) + split_acked, [new, other, "guest1"])
    show_table(env)


def s_broker_restart(env, res):
    """4. RabbitMQ restarts while the agents run: they reconnect, and the next flow succeeds."""
    create(env, res, "guest1", ["guest2", "guest3"])
    pids = {g: env.agent_pid(g) for g in GUESTS}
    w = Writer([env.ip(g) for g in GUESTS], "s4")
    w.start()
    t = time.monotonic()
    env.docker("restart", "-t", "10", env.cid("rabbitmq"), timeout=120)
    say(f"docker restart of the broker took {time.monotonic() - t:.1f}s")
    healthy = env.wait_broker(90)
    say(f"broker healthy {time.monotonic() - t:.1f}s after the restart began")
    res.require(healthy, "the broker did not come back")
    back = {}
    for g in GUESTS:
        if env.wait_ping(g, 60):
            back[g] = time.monotonic() - t
    say("agents answering rpc_ping, seconds after the restart began: " + ", ".join(f"{g}={s:.1f}" for g, s in back.items()))
    res.check(len(back) == len(GUESTS), f"agents that never reconnected: {[g for g in GUESTS if g not in back]}")
    c, rep = promote(env, "guest2", " after the restart")
    time.sleep(1.0)
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.require(c.rc == 0, "the flow after the broker restart failed: " + c.describe())
    after = {g: env.agent_pid(g) for g in GUESTS}
    say(f"agent pids before {pids}, after {after}")
    res.check(pids == after, "an agent was restarted (its pid changed)")
    for g in ("guest1", "guest3"):
        res.check(wait_for(lambda: linked_to(env, g, "guest2"), 15), f"{g} does not follow guest2: {replica_state(env, g)}")
    verify_writes(env, res, acked_pairs(w), ["guest2", "guest1", "guest3"])


def s_agent_killed_mid_attach(env, res):
    """5. The replica's agent is killed while attach_replica waits for a large sync; the retried create converges."""
    keys = int(os.environ.get("TROVE_FAULTS_POPULATE", "1000000"))
    t = time.monotonic()
    env.redis_cli("guest1", "DEBUG", "POPULATE", str(keys), "s5pop", "100")
    mem = rinfo(env.ip("guest1"), "memory") or {}
    say(f"populated guest1 with {keys} keys ({mem.get('used_memory_human')}) in {time.monotonic() - t:.1f}s")
    full0 = stats(env, "guest1")
    w = Writer([env.ip("guest1")], "s5")
    w.start()
    p, t_start, out, err = env.ctl_background("create-replicas", "--replica-of", env.gid("guest1"), env.gid("guest2"))
    seen = wait_for(lambda: (replica_state(env, "guest2") or {}).get("role") == "slave" or p.poll() is not None, 60, interval=0.01)
    st = replica_state(env, "guest2")
    res.require(seen and p.poll() is None, f"never saw guest2 start replicating while the create ran (create exit {p.poll()})")
    old_pid = kill_agent(env, "guest2")
    say(f"killed guest2's agent (pid {old_pid}) {time.monotonic() - t_start:.2f}s into the create; guest2 then: "
        f"role={st['role']} link={st['link']} sync_in_progress={st['sync']}")
    back = env.wait_ping("guest2", 30)
    new_pid = env.agent_pid("guest2")
    res.require(back, "guest2's agent did not come back")
    say(f"guest2's agent is back (pid {new_pid}) {time.monotonic() - t_start:.1f}s into the create")
    try:
        p.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    if p.poll() is None:
        p.terminate()
        p.wait()
        say("the interrupted create-replicas was still waiting for attach_replica's reply (lost with the agent); stopped it, "
            "as a taskmanager timeout would")
    else:
        say(f"the interrupted create-replicas ended by itself: exit {p.returncode}: {open(err).read().strip()[-300:]}")
    c = create(env, res, "guest1", ["guest2"])
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.check(wait_for(lambda: linked_to(env, "guest2", "guest1"), 20), f"guest2 is not a linked replica: {replica_state(env, 'guest2')}")
    inv = env.inventory_replica_of()
    res.check(inv.get(env.gid("guest2")) == env.gid("guest1"), f"inventory does not record guest2 as replica of guest1: {inv}")
    d1, d2 = rcall(env.ip("guest1"), "DBSIZE"), rcall(env.ip("guest2"), "DBSIZE")
    say(f"dbsize master={d1} replica={d2}")
    res.check(d1 == d2, f"the replica has {d2} keys, the master {d1}")
    full1 = stats(env, "guest1")
    say(f"full syncs served by guest1 for the create and its retry: {full1.get('sync_full', 0) - full0.get('sync_full', 0)} "
        f"(partial {full1.get('sync_partial_ok', 0) - full0.get('sync_partial_ok', 0)})")
    verify_writes(env, res, acked_pairs(w), ["guest1", "guest2"])


def s_replica_redis_restart(env, res):
    """6. A replica's redis-server is killed; the agent restarts it; it rejoins the current master, partially when the backlog allows."""
    env.redis_cli("guest1", "DEBUG", "POPULATE", "20000", "s6pop", "100")
    create(env, res, "guest1", ["guest2", "guest3"])
    c = env.ctl("promote-to-replica-source", env.gid("guest2"))
    say(f"promote-to-replica-source guest2 (so that the current master is not the original one): rc={c.rc} in {c.ms} ms")
    res.require(c.rc == 0, "promote failed: " + c.describe())
    res.require(wait_for(lambda: linked_to(env, "guest3", "guest2"), 15), "guest3 does not follow guest2 after the promote")
    backlog = int((rinfo(env.ip("guest2"), "replication") or {}).get("repl_backlog_size", "0"))
    wa = Writer([env.ip("guest2")], "s6a")
    wa.start()
    time.sleep(0.5)

    def restart_once(label, during=None):
        before = stats(env, "guest2")
        pid = (rinfo(env.ip("guest3"), "server") or {}).get("process_id")
        res.require(pid, "cannot read guest3's redis pid")
        env.exec("guest3", "sh", "-c", f"kill -9 {pid}")
        t_kill = time.monotonic()
        if during:
            during()
        back = wait_for(lambda: linked_to(env, "guest3", "guest2"), 30, interval=0.05)
        down_s = time.monotonic() - t_kill
        new_pid = (rinfo(env.ip("guest3"), "server") or {}).get("process_id")
        after = stats(env, "guest2")
        full = after.get("sync_full", 0) - before.get("sync_full", 0)
        partial = after.get("sync_partial_ok", 0) - before.get("sync_partial_ok", 0)
        say(f"{label}: killed guest3's redis-server (pid {pid}); " +
            (f"back as a linked replica of guest2 after {down_s:.1f}s (pid {new_pid}); " if back else
             f"NOT back after {down_s:.1f}s: {replica_state(env, 'guest3')}; ") +
            f"resyncs served by guest2: full={full} partial={partial}")
        res.check(back, f"{label}: guest3 did not come back as a replica of the current master guest2")
        return full, partial

    full, partial = restart_once("within the backlog")
    res.check(full == 0 and partial >= 1, f"a restart within the backlog ({backlog} bytes) must resync partially: full={full} partial={partial}")
    time.sleep(0.3)
    wa.stop()
    say(wa.summary())
    res.pause_ms = int(wa.longest * 1000)
    big = [(f"s6big:{i}", "x" * 100_000) for i in range(3 * backlog // 100_000 + 1)]

    def overflow():
        r = Redis(env.ip("guest2"), timeout=10)
        try:
            replies = r.pipeline([("SET", k, v) for k, v in big])
        finally:
            r.close()
        res.require(all(x == "OK" for x in replies), f"bulk writes failed: {set(map(str, replies))}")

    full, partial = restart_once(f"after {len(big) * 100} kB written during the restart (over the backlog)", overflow)
    res.check(full == 1, f"a restart past the backlog resyncs fully (once): full={full} partial={partial}")
    missing = missing_on(env.ip("guest3"), big)
    res.check(not missing, f"guest3 lacks {len(missing)} of the bulk writes")
    verify_writes(env, res, acked_pairs(wa), ["guest2", "guest1", "guest3"])
    sizes = {g: rcall(env.ip(g), "DBSIZE") for g in GUESTS}
    say(f"dbsize: {sizes}")
    res.check(len(set(sizes.values())) == 1, f"the nodes hold different key counts: {sizes}")


def s_replica_net_drop_during_create(env, res):
    """7. A replica's network drops during a create: the flow names that guest's failure; the others finish."""
    keys = int(os.environ.get("TROVE_FAULTS_POPULATE_SMALL", "300000"))
    env.redis_cli("guest1", "DEBUG", "POPULATE", str(keys), "s7pop", "100")
    say(f"populated guest1 with {keys} keys")
    w = Writer([env.ip("guest1")], "s7")
    w.start()
    p, t_start, out, err = env.ctl_background("create-replicas", "--replica-of", env.gid("guest1"), env.gid("guest2"), env.gid("guest3"))

    def guest3_joined():
        # guest3 is among the master's replicas (waiting for, or receiving, the shared diskless transfer).
        info = rinfo(env.ip("guest1"), "replication") or {}
        return any(k.startswith("slave") and f"ip={env.ip('guest3')}," in v for k, v in info.items()) or p.poll() is not None

    seen = wait_for(guest3_joined, 60, interval=0.01)
    res.require(seen and p.poll() is None, f"never saw guest3 join the master's sync while the create ran (create exit {p.poll()})")
    set_net(env, "guest3", False)
    t_cut = time.monotonic()
    say(f"disconnected guest3 {t_cut - t_start:.2f}s into the create")
    g2_done = None
    while p.poll() is None and time.monotonic() - t_cut < env.flow_deadline:
        if g2_done is None and linked_to(env, "guest2", "guest1"):
            g2_done = time.monotonic() - t_cut
        time.sleep(0.5)
    waited = time.monotonic() - t_cut
    rc = p.poll()
    if rc is None:
        p.terminate()
        p.wait()
    text = open(err).read() + open(out).read()
    say(f"create-replicas: {'exit %d' % rc if rc is not None else 'still running'} {waited:.1f}s after the cut")
    for line in text.strip().splitlines()[-8:]:
        say("  | " + line)
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.check(rc is not None, f"create-replicas did not report within {env.flow_deadline}s of guest3's network drop "
              "(it waits for attach_replica's reply, with no liveness check)")
    if rc is not None:
        res.check(rc != 0, "create-replicas exited 0 although guest3 could not be attached")
        res.check(env.gid("guest3") in text, "the failure output does not name guest3")
    done = wait_for(lambda: linked_to(env, "guest2", "guest1"), 20)
    if g2_done is None and done:
        g2_done = time.monotonic() - t_cut
    say(f"guest2 linked and caught up {g2_done:.1f}s after guest3's drop" if g2_done is not None else "guest2 never finished")
    full = stats(env, "guest1")
    say(f"full syncs served by guest1: {full.get('sync_full')} (a replica dropping out of a shared diskless transfer "
        "stalls the others until repl-timeout, then they sync again)")
    res.check(done, f"guest2 did not finish: {replica_state(env, 'guest2')}")
    inv = env.inventory_replica_of()
    say(f"inventory replica_of: { {k.split('-', 1)[1]: v and v.split('-', 1)[1] for k, v in inv.items()} }")
    res.check(inv.get(env.gid("guest2")) == env.gid("guest1"), "the inventory does not record guest2, which finished, as a replica of guest1")
    res.check(inv.get(env.gid("guest3")) is None, "the inventory records guest3 as a replica although it failed")
    verify_writes(env, res, acked_pairs(w), ["guest1", "guest2"])


def make_tls_pki(env):
    """A CA and one certificate per guest naming its address (SAN), made with the openssl CLI.
    Returns the directory; the guests mount it read-only at /etc/trove-tls."""
    d = os.path.join(env.workdir, "pki")
    os.makedirs(d, exist_ok=True)

    def ossl(*args):
        run(["openssl", *args], check=True, timeout=60)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
         "-subj", "/CN=trove-faults-ca")
    for g in GUESTS:
        ext = f"{d}/{g}.ext"
        with open(ext, "w") as f:
            f.write(f"subjectAltName=IP:{env.ip(g)}\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/{g}.key", "-out", f"{d}/{g}.csr", "-subj", f"/CN={g}")
        ossl("x509", "-req", "-in", f"{d}/{g}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
             "-out", f"{d}/{g}.pem", "-days", "2", "-extfile", ext)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)  # test keys: readable by the container's redis user
    os.chmod(d, 0o755)
    return d


def tls_compose_override(env, pki):
    """A compose file layered for one scenario: every guest gets a TLS port, its certificate, TLS
    replication, and host-name checks of the master's certificate."""
    path = os.path.join(env.workdir, "compose.tls.yml")
    lines = ["services:"]
    for g in GUESTS:
        lines += [
            f"  {g}:",
            "    volumes:",
            f"      - {pki}:/etc/trove-tls:ro",
            "    environment:",
            f'      TROVE_GUESTAGENT__REDIS__TLS_PORT: "{TLS_PORT}"',
            f'      TROVE_GUESTAGENT__REDIS__TLS_CERT_FILE: "/etc/trove-tls/{g}.pem"',
            f'      TROVE_GUESTAGENT__REDIS__TLS_KEY_FILE: "/etc/trove-tls/{g}.key"',
            '      TROVE_GUESTAGENT__REDIS__TLS_CA_CERT_FILE: "/etc/trove-tls/ca.pem"',
            '      TROVE_GUESTAGENT__REDIS__TLS_VERIFY_HOSTNAME: "true"',
            '      TROVE_GUESTAGENT__REPLICATION__TLS_REPLICATION: "true"',
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def tls_ping(env, g, port, with_cert):
    """PING over TLS from inside g's container; True when Redis answered PONG."""
    args = ["redis-cli", "--no-auth-warning", "-a", PASSWORD, "--tls", "--cacert", "/etc/trove-tls/ca.pem",
            "-h", env.ip(g), "-p", str(port)]
    if with_cert:
        args += ["--cert", f"/etc/trove-tls/{g}.pem", "--key", f"/etc/trove-tls/{g}.key"]
    p = env.exec(g, *args, "PING", check=False, timeout=20)
    return p.returncode == 0 and p.stdout.strip() == "PONG"


def s_tls_promote_and_eject(env, res):
    """8. TLS replication between containers (per-node certificates, host names checked): create, promote under load, kill the master and eject."""
    create(env, res, "guest1", ["guest2", "guest3"])
    for g in ("guest2", "guest3"):
        info = rinfo(env.ip(g), "replication")
        res.check(info and info.get("master_port") == str(TLS_PORT) and info.get("master_link_status") == "up",
                  f"{g} does not replicate from the master's TLS port {TLS_PORT}: {info}")
        res.check(config_get(env, g, "tls-replication") == {"tls-replication": "yes"},
                  f"{g}: tls-replication is not on: {config_get(env, g, 'tls-replication')}")
    res.check(not tls_ping(env, "guest2", TLS_PORT, with_cert=False) and tls_ping(env, "guest2", TLS_PORT, with_cert=True),
              "the TLS port must refuse a client without a certificate and accept one with the node's certificate")
    # Promote under load: the old master and guest3 follow guest2's TLS port.
    w = Writer([env.ip(g) for g in GUESTS], "s8a")
    w.start()
    time.sleep(1.0)
    c, rep = promote(env, "guest2")
    time.sleep(1.0)
    w.stop()
    say(w.summary())
    res.require(c.rc == 0, "promote failed: " + c.describe())
    for g in ("guest1", "guest3"):
        res.check(wait_for(lambda: linked_to(env, g, "guest2") and (rinfo(env.ip(g), "replication") or {}).get("master_port") == str(TLS_PORT), 15),
                  f"{g} is not linked to guest2's TLS port after the promote: {rinfo(env.ip(g), 'replication')}")
    # The master dies: eject picks a replica, the other follows it over TLS.
    env.docker("kill", env.cid("guest2"))
    say("killed guest2 (the master)")
    wb = Writer([env.ip("guest1"), env.ip("guest3")], "s8b")
    wb.start()
    c = env.ctl("eject-replica-source", env.gid("guest2"), timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest2: rc={c.rc} in {c.ms} ms, new_master={rep.get('new_master')}")
    time.sleep(1.0)
    wb.stop()
    say(wb.summary())
    res.pause_ms = int(max(w.longest, wb.longest) * 1000)
    res.require(c.rc == 0, "eject failed: " + c.describe())
    new = "guest1" if rep.get("new_master") == env.gid("guest1") else "guest3"
    other = "guest3" if new == "guest1" else "guest1"
    res.check(wait_for(lambda: linked_to(env, other, new) and (rinfo(env.ip(other), "replication") or {}).get("master_port") == str(TLS_PORT), 15),
              f"{other} does not follow {new} over TLS: {rinfo(env.ip(other), 'replication')}")
    verify_writes(env, res, acked_pairs(w, wb), [new, other])
    for g in (new, other):
        log = env.docker("logs", env.cid(g), check=False, timeout=30)
        res.check(PASSWORD not in log.stdout + log.stderr, f"the Redis password is in {g}'s agent log")


SCENARIOS = {
    "promote_under_load": s_promote_under_load,
    "master_killed_eject": s_master_killed_eject,
    "master_cut_off": s_master_cut_off,
    "broker_restart": s_broker_restart,
    "agent_killed_mid_attach": s_agent_killed_mid_attach,
    "replica_redis_restart": s_replica_redis_restart,
    "replica_net_drop_during_create": s_replica_net_drop_during_create,
    "tls_promote_and_eject": s_tls_promote_and_eject,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}}", file=sys.stderr)
        return 2
    name = sys.argv[1]
    res = Result(name)
    env = Env(name)
    print(f"--- {name}: {SCENARIOS[name].__doc__.strip()}", flush=True)
    try:
        t = time.monotonic()
        if name.startswith("tls_"):
            env.compose += ["-f", tls_compose_override(env, make_tls_pki(env))]
        env.fresh_guests()
        env.write_inventory()
        env.prepare_all()
        say(f"fresh guests {env.tag}-guest1..3 prepared in {time.monotonic() - t:.1f}s")
        SCENARIOS[name](env, res)
    except Failed:
        pass
    except Exception as e:  # noqa: BLE001 - any error fails the scenario, loudly
        res.failures.append(f"{type(e).__name__}: {e}")
        say(f"FAIL: {type(e).__name__}: {e}")
    env.stop_background()
    if res.failures:
        try:
            paths = env.save_logs()
            say(f"logs: {os.path.dirname(paths[0]) if paths else env.workdir}")
        except Exception as e:  # noqa: BLE001
            say(f"could not save logs: {e}")
    print(res.line(), flush=True)
    return 0 if not res.failures else 1


if __name__ == "__main__":
    sys.exit(main())
