"""RabbitMQ restarts while the agents run under a writer: they reconnect soon after the broker accepts connections, and the next flow succeeds."""

import datetime
import re
import socket
import threading
import time

from faultlib.base import GUESTS, say
from faultlib.checks import check_losses, check_writer, create, linked_to, promote, replica_state, wait_for
from faultlib.writer import Writer

MIN_WRITES = 1000
# The agent's reconnect delays are capped at [rpc] reconnect_max_backoff (1 s by default) and
# jittered; the target is to consume again within 2 s of the broker accepting connections.
# The check allows 5 s (a connect and the queue declarations on a broker that just started).
TARGET_S = 2.0
LIMIT_S = 5.0
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_accepts(host, port=5672, timeout=0.3):
    """True when the broker answers the AMQP protocol header with a method frame (Connection.Start)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(AMQP_HEADER)
            return s.recv(1)[:1] == b"\x01"
    except OSError:
        return False


class AcceptWatch(threading.Thread):
    """Polls the broker's AMQP handshake every 20 ms: when it stopped, and when it accepted again."""

    def __init__(self, host):
        super().__init__(daemon=True)
        self.host = host
        self.down = None  # (monotonic, wall)
        self.up = None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set() and self.up is None:
            ok = amqp_accepts(self.host)
            t = (time.monotonic(), time.time())
            if not ok and self.down is None:
                self.down = t
            elif ok and self.down is not None:
                self.up = t
            time.sleep(0.02)


CONSUMING = re.compile(r"^(\S+) .*\bconsuming\b")


def consuming_times(env, g, since_wall):
    """Wall-clock times (from docker's log timestamps) at which g's agent started consuming after since_wall."""
    p = env.docker("logs", "--timestamps", env.cid(g), check=False, timeout=30)
    out = []
    for line in (p.stdout + p.stderr).splitlines():
        m = CONSUMING.match(line)
        if not m:
            continue
        stamp = m.group(1)
        # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
        stamp = re.sub(r"\.(\d{6})\d*", r".\1", stamp).replace("Z", "+00:00")
        try:
            t = datetime.datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            continue
        if t > since_wall:
            out.append(t)
    return out


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    pids = {g: env.agent_pid(g) for g in GUESTS}
    w = Writer([env.ip(g) for g in GUESTS], "s4")
    w.start()
    watch = AcceptWatch(env.broker_ip)
    watch.start()
    res.require(wait_for(lambda: amqp_accepts(env.broker_ip), 5), "the broker does not accept AMQP connections before the restart")
    t, t_wall = time.monotonic(), time.time()
    env.docker("restart", "-t", "10", env.cid("rabbitmq"), timeout=120)
    say(f"docker restart of the broker took {time.monotonic() - t:.1f}s")
    watch.join(timeout=90)
    watch.halt.set()
    res.require(watch.up is not None, "the broker did not accept AMQP connections again within 90 s")
    t_accept, wall_accept = watch.up
    say(f"broker stopped accepting {watch.down[0] - t:.1f}s and accepted AMQP again {t_accept - t:.1f}s after the restart began")
    # Each agent answers rpc_ping (measured in parallel, from the host: includes trove-guestctl's own connect).
    pinged = {}

    def ping(g):
        if env.wait_ping(g, 60):
            pinged[g] = time.monotonic()

    threads = [threading.Thread(target=ping, args=(g,)) for g in GUESTS]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    res.check(len(pinged) == len(GUESTS), f"agents that never reconnected: {[g for g in GUESTS if g not in pinged]}")
    consuming = {}
    for g in GUESTS:
        times = consuming_times(env, g, t_wall)
        if times:
            consuming[g] = times[0] - wall_accept
    say("agents consuming again (agent log), seconds from the broker accepting: "
        + ", ".join(f"{g}={s:+.2f}" for g, s in consuming.items())
        + "; from the restart command: " + ", ".join(f"{g}={s + (t_accept - t):.1f}" for g, s in consuming.items()))
    say("agents answering rpc_ping, seconds from the broker accepting: "
        + ", ".join(f"{g}={s - t_accept:.2f}" for g, s in pinged.items())
        + "; from the restart command: " + ", ".join(f"{g}={s - t:.1f}" for g, s in pinged.items()))
    res.check(len(consuming) == len(GUESTS), f"no 'consuming' line after the restart in the log of {[g for g in GUESTS if g not in consuming]}")
    if consuming:
        worst = max(consuming.values())
        say(f"reconnect: worst {worst:.2f}s from accept (target {TARGET_S:.0f}s, limit {LIMIT_S:.0f}s), "
            f"{worst + (t_accept - t):.1f}s from the restart command")
        res.check(worst <= LIMIT_S, f"an agent consumed again only {worst:.1f}s after the broker accepted connections (limit {LIMIT_S}s)")
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
    check_writer(res, w, MIN_WRITES)
    check_losses(env, res, w.records(), "guest2", ["guest1", "guest3"])
