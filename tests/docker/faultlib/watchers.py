"""trove-guestctl watch in the compose topology: the compose `watch` service (172.x.20:26379) and a
second watcher on the host, both on the scenario's inventory (shared by watch_sentinel_client and
nemesis.py)."""

import os
import signal
import socket
import subprocess
import threading
import time

from .env import run as sh

NAME = "faults"
DOWN_AFTER_MS = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_watch_settings(env, watchers, name=NAME):
    """Top-level `name` and `watchers` go before the [[guest]] tables of the scenario's inventory."""
    with open(env.inventory) as f:
        lines = f.read().splitlines()
    first_table = next((i for i, l in enumerate(lines) if l.startswith("[")), len(lines))
    head = [l for l in lines[:first_table] if not l.startswith(("name =", "watchers ="))]
    ws = ", ".join(f'"{w}"' for w in watchers)
    with open(env.inventory, "w") as f:
        f.write("\n".join([f'name = "{name}"', f"watchers = [{ws}]", *head, *lines[first_table:]]) + "\n")


def watch_compose(env, *args, timeout=120, down_after_ms=DOWN_AFTER_MS):
    """docker-compose --profile watch ... with the scenario's tag, inventory directory and down_after."""
    e = dict(os.environ, TROVE_RUN_TAG=env.tag, TROVE_GUESTCTL_STATE_DIR=env.workdir, TROVE_WATCH_PORT="",
             TROVE_WATCH_DOWN_AFTER_MS=str(down_after_ms))
    return sh([*env.compose, "--profile", "watch", *args], timeout=timeout, check=True, env=e)


def watch_container(env):
    ids = sh(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={env.project}",
              "--filter", "label=com.docker.compose.service=watch"], check=True).stdout.split()
    if len(ids) != 1:
        raise RuntimeError(f"expected one watch container, found {ids}")
    env.containers["watch"] = ids[0]
    return ids[0]


def guest_at(env, addr, guests=("guest1", "guest2", "guest3")):
    return next((g for g in guests if addr and addr[0] == env.ip(g)), None)


class Watchers:
    """Both watchers of one scenario: `start()` brings up the compose one (it takes the lease) and
    then the host one; `holder()` says which holds the lease; `kill(which)` kill -9s one."""

    def __init__(self, env, down_after_ms=DOWN_AFTER_MS, name=NAME):
        self.env, self.down_after_ms, self.name = env, down_after_ms, name
        self.compose_addr = (f"{env.prefix}.20", 26379)
        self.host_port = free_port()
        self.host_addr = ("127.0.0.1", self.host_port)
        self.wcid = None
        self.host_proc = None
        self.host_err = None
        self.killed = set()

    def start(self, lease_secs=30, host_first=False):
        """Starts both; the first started takes the lease (the compose one, or the host one)."""
        env = self.env
        add_watch_settings(env, [f"{self.compose_addr[0]}:26379", f"127.0.0.1:{self.host_port}"], self.name)
        if host_first:
            self._start_host()
            self._wait_lease("host", lease_secs)
        watch_compose(env, "up", "-d", "--no-build", "--no-deps", "--force-recreate", "watch", down_after_ms=self.down_after_ms)
        self.wcid = watch_container(env)
        if not host_first:
            self._wait_lease("compose", lease_secs)
            self._start_host()
        else:
            deadline = time.monotonic() + lease_secs
            while "watching" not in self.log("compose"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the watch container did not start within {lease_secs} s:\n" + self.log("compose")[-2000:])
                time.sleep(0.2)

    def _wait_lease(self, which, secs):
        deadline = time.monotonic() + secs
        while "holds the lease" not in self.log(which):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {which} watcher did not take the lease within {secs} s:\n" + self.log(which)[-2000:])
            time.sleep(0.2)

    def _start_host(self):
        """The host watcher, its stderr read line by line (into watch.err) so that it can be
        killed within a millisecond of logging a line (kill_on)."""
        env = self.env
        self.host_err = os.path.join(env.workdir, "watch.err")
        out = open(os.path.join(env.workdir, "watch.out"), "w")
        self.host_proc = subprocess.Popen(
            env.ctl_cmd("watch", "--listen", f"127.0.0.1:{self.host_port}", "--down-after-ms", str(self.down_after_ms)),
            stdout=out, stderr=subprocess.PIPE, env=env.ctl_env(), bufsize=0)
        env.background.append(self.host_proc)
        self._trigger = None  # (text, delay_s, event) while armed
        self.killed_at = None
        f = open(self.host_err, "wb", buffering=0)
        threading.Thread(target=self._pump, args=(f,), daemon=True).start()

    def _pump(self, f):
        with f:
            for line in iter(self.host_proc.stderr.readline, b""):
                f.write(line)
                trig = self._trigger
                if trig and trig[0].encode() in line:
                    if trig[1]:
                        time.sleep(trig[1])
                    try:
                        os.kill(self.host_proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.killed_at = time.monotonic()
                    self.killed.add("host")
                    self._trigger = None
                    trig[2].set()

    def kill_on(self, text, delay_s=0.0):
        """Arms a kill -9 of the host watcher as soon as it logs a line containing `text` (after
        delay_s); returns an Event set once it is done (killed_at: when)."""
        done = threading.Event()
        self._trigger = (text, delay_s, done)
        return done

    def addrs(self):
        return [self.compose_addr, self.host_addr]

    def log(self, which):
        if which == "compose":
            if not self.wcid:
                return ""
            p = self.env.docker("logs", self.wcid, check=False, timeout=30)
            return p.stdout + p.stderr
        if not self.host_err:
            return ""
        with open(self.host_err) as f:
            return f.read()

    def holder(self):
        """Which watcher last logged taking the lease and has not logged losing it (None: neither)."""
        for which in ("compose", "host"):
            if which in self.killed:
                continue
            log = self.log(which)
            took, lost = log.rfind("holds the lease"), log.rfind("lost the lease")
            if took >= 0 and took > lost:
                return which
        return None

    def kill(self, which):
        """kill -9 of one watcher (the compose one with its container)."""
        if which == "compose":
            self.env.docker("kill", "-s", "KILL", self.wcid, check=False)
        else:
            self.host_proc.kill()
        self.killed.add(which)

    def stop(self, logdir):
        """Saves both logs into logdir and removes the compose watcher; the host one is stopped
        by env.stop_background()."""
        if self.wcid:
            logs = self.env.docker("logs", "--timestamps", self.wcid, check=False, timeout=30)
            with open(os.path.join(logdir, "watch-compose.log"), "w") as f:
                f.write(logs.stdout + logs.stderr)
            self.env.docker("rm", "-f", self.wcid, check=False)
        if self.host_proc is not None and self.host_proc.poll() is None:
            self.host_proc.terminate()
            try:
                self.host_proc.wait(timeout=5)
            except Exception:  # noqa: BLE001
                self.host_proc.kill()
