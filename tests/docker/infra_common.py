"""Shared helpers of the systemd and RabbitMQ-cluster scenarios: RESP client, writer (the fault scenarios' own), docker, trove-guestctl.

Standard library only. The scenarios run on the host and reach containers at their addresses on
the scenario's private bridge network.
"""

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from resp import ReplyError, Resp, info_of  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib.writer  # noqa: E402

PASSWORD = "infra-secret"
# What prepare sends (config_contents): listen on every address with a password, persist.
REDIS_CONF = f"""bind * -::*
protected-mode yes
port 6379
requirepass {PASSWORD}
save 3600 1 300 100 60 10000
appendonly no
"""
PREPARE_ARGS = {"packages": None, "databases": [], "memory_mb": 512, "users": [], "device_path": None,
                "mount_point": "/var/lib/redis", "backup_info": None, "config_contents": REDIS_CONF,
                "root_password": None, "overrides": {}, "cluster_config": None, "snapshot": None}
T0 = time.monotonic()


def say(text):
    print(f"  [{time.monotonic() - T0:6.1f}s] {text}", flush=True)


class Failed(Exception):
    """A check of the scenario failed."""


def check(cond, what):
    if not cond:
        raise Failed(what)
    say(f"ok: {what}")


def wait_for(what, fn, secs, interval=0.2):
    """Polls fn() until it returns a truthy value (returned) or secs pass (Failed)."""
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError, ReplyError) as e:
            last = e
        time.sleep(interval)
    raise Failed(f"{what}: not within {secs} s (last: {last!r})")


# --------------------------------------------------------------------------------------------
class Redis(Resp):
    """A connection with the infrastructure scenarios' password (tests/pylib/resp.py)."""

    def __init__(self, host, port=6379, password=PASSWORD, timeout=2.0):
        super().__init__(host, port, password, timeout)


def rinfo(host, section="all", timeout=1.0):
    """INFO over a fresh connection; None when the node cannot be reached."""
    return info_of(host, section, PASSWORD, timeout)


def port_open(host, port, timeout=0.5):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class Writer(faultlib.writer.Writer):
    """The fault scenarios' writer (tests/docker/faultlib/writer.py), with this file's password."""

    def __init__(self, hosts, prefix, op_timeout=0.5, interval=0.002):
        super().__init__(hosts, prefix, op_timeout, interval, password=PASSWORD)


# --------------------------------------------------------------------------------------------
# docker and trove-guestctl


def run(cmd, timeout=60, check=False, input=None, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if check and p.returncode != 0:
        raise Failed(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def dexec(container, *cmd, timeout=60, check=True):
    return run(["docker", "exec", container, *cmd], timeout=timeout, check=check)


class Ctl:
    """trove-guestctl with one inventory."""

    def __init__(self, binary, inventory, log_dir):
        self.binary, self.inventory, self.log_dir = binary, inventory, log_dir
        self.count = 0

    def env(self):
        return dict(os.environ, TROVE_GUESTCTL_INVENTORY=self.inventory, NO_COLOR="1")

    def __call__(self, *args, timeout=180):
        """Runs one command; returns (exit code or None on timeout, stdout, stderr, ms)."""
        self.count += 1
        t = time.monotonic()
        try:
            p = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout, env=self.env())
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc = None
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        ms = int((time.monotonic() - t) * 1000)
        if "rpc_ping" in args:
            return rc, out, err, ms
        with open(os.path.join(self.log_dir, f"guestctl-{self.count:03d}-{args[0]}.log"), "w") as f:
            f.write(f"$ trove-guestctl {' '.join(args[:2])}\nexit={rc} ms={ms}\n--- stdout\n{out}\n--- stderr\n{err}\n")
        return rc, out, err, ms

    def call(self, guest, method, args=None, timeout=30):
        a = ["call", guest, method] + ([json.dumps(args)] if args is not None else []) + ["--timeout", str(timeout)]
        return self(*a, timeout=timeout + 30)

    def must(self, *args, timeout=180):
        rc, out, err, ms = self(*args, timeout=timeout)
        if rc != 0:
            tail = "\n".join((err.strip() + "\n" + out.strip()).strip().splitlines()[-10:])
            raise Failed(f"trove-guestctl {' '.join(args[:3])}: exit {rc} after {ms} ms\n{tail}")
        say(f"trove-guestctl {' '.join(args[:2])}: done in {ms} ms")
        return out

    def must_call(self, guest, method, args=None, timeout=30):
        rc, out, err, ms = self.call(guest, method, args, timeout)
        if rc != 0:
            raise Failed(f"{method} on {guest}: exit {rc} after {ms} ms: {err.strip()[-600:]}")
        say(f"{method} on {guest}: done in {ms} ms")
        return json.loads(out) if out.strip() else None

    def wait_ping(self, guest, secs):
        def ping():
            rc, out, _, _ = self.call(guest, "rpc_ping", timeout=3)
            return rc == 0 and out.strip() == "true"
        return wait_for(f"{guest} answers rpc_ping", ping, secs, interval=0.5)


def write_inventory(path, transport_url, guests, extra=""):
    lines = [f'transport_url = "{transport_url}"', 'control_exchange = "trove"', extra]
    for g in guests:
        lines += ["", "[[guest]]", f'id = "{g}"']
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
