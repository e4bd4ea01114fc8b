"""The compose environment of one scenario: containers, network, trove-guestctl, fresh guests."""

import json
import os
import random
import shlex
import subprocess
import threading
import time
import tomllib

from .base import GUESTS, PASSWORD, REDIS_CONF
from .resp import rinfo


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
    def __init__(self, scenario, tag=None, workdir=None):
        e = os.environ
        self.scenario = scenario
        self.project = e["TROVE_FAULTS_PROJECT"]
        self.prefix = e["TROVE_SUBNET_PREFIX"]
        self.guestctl = e["TROVE_FAULTS_GUESTCTL"]
        self.compose = shlex.split(e["TROVE_FAULTS_COMPOSE"])
        self.workdir = workdir or os.path.join(e["TROVE_FAULTS_WORKDIR"], scenario)
        self.flow_deadline = int(e.get("TROVE_FAULTS_FLOW_DEADLINE", "120"))
        self.min_replicas = int(e.get("TROVE_FAULTS_MIN_REPLICAS", "1"))
        self.max_lag = int(e.get("TROVE_FAULTS_MAX_LAG", "2"))
        os.makedirs(self.workdir, exist_ok=True)
        self.tag = tag or f"{scenario.split('_')[0][:8]}{random.randrange(16**4):04x}"
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

    def redis_pid(self, g):
        p = self.exec(g, "pidof", "redis-server", check=False)
        return p.stdout.strip() or None

    def netns_pid(self, g):
        """The pid of g's container on the host, to enter its network namespace."""
        return self.docker("inspect", "-f", "{{.State.Pid}}", self.cid(g)).stdout.strip()

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

    def prepare_all(self, conf=REDIS_CONF):
        args = {"packages": None, "databases": [], "memory_mb": 512, "users": [], "device_path": None,
                "mount_point": "/var/lib/redis", "backup_info": None, "config_contents": conf,
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


def kill_agent(env, g):
    """kill -9 of g's agent (the container's restart loop starts a new one); returns its pid."""
    pid = env.agent_pid(g)
    if not pid:
        raise RuntimeError(f"no trove-guestagent process in {g}")
    env.exec(g, "sh", "-c", f"kill -9 {pid}")
    return pid


def set_net(env, g, connected):
    """Connects g to, or cuts it off, the project's network (the host then cannot reach it)."""
    if connected:
        env.docker("network", "connect", "--ip", env.ip(g), env.net(), env.cid(g))
    else:
        env.docker("network", "disconnect", "--force", env.net(), env.cid(g))


def iptables(env, g, rules):
    """Applies iptables rules (lists of arguments after `-A`/`-I`...) inside g's network namespace,
    in one iptables-restore transaction, with the host's iptables (the guest image has none)."""
    data = "*filter\n" + "".join(" ".join(r) + "\n" for r in rules) + "COMMIT\n"
    run(["nsenter", "-t", env.netns_pid(g), "-n", "iptables-restore", "--noflush"], check=True, input=data)


def cut(env, g, peers=None, inbound_only=False):
    """Cuts g off with iptables inside its namespace: from every address but loopback (peers None),
    or from the given addresses only; inbound_only drops what g receives but lets it send."""
    rules = []
    if peers is None:
        rules += [["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"], ["-A", "INPUT", "-j", "DROP"]]
        if not inbound_only:
            rules += [["-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"], ["-A", "OUTPUT", "-j", "DROP"]]
    else:
        for ip in peers:
            rules.append(["-A", "INPUT", "-s", ip, "-j", "DROP"])
            if not inbound_only:
                rules.append(["-A", "OUTPUT", "-d", ip, "-j", "DROP"])
    iptables(env, g, rules)


def uncut(env, g):
    """Removes every filter rule of g's namespace (a guest container has none of its own)."""
    run(["nsenter", "-t", env.netns_pid(g), "-n", "iptables", "-F"], check=True)
