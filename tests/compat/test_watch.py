"""trove-guestctl watch: a dead master is replaced without a human, and redis-py's Sentinel
client (a client no one here wrote) finds the new master through the watcher's discovery
endpoint and keeps writing. Real agents, real redis-server processes, real RabbitMQ."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

import compat_lib as lib
from conftest import ROOT, Guest

GUESTCTL = Path(os.environ.get("TROVE_GUESTCTL_BIN", ROOT / "target/debug/trove-guestctl"))
PW = "watch-secret"
NAME = "compatset"
DOWN_AFTER_MS = 1000
# The loss bound of a master killed under the writer: only writes acknowledged from TAIL_S before
# the kill until the first write after it was acknowledged (the old master's unreplicated tail)
# may be missing on the new master.
TAIL_S = 0.5
# Writes acknowledged before the window, and by the new master, that the check must cover.
MIN_BEFORE = 200
MIN_AFTER = 200
CONF = "bind 127.0.0.1\nport 6379\nrequirepass %s\nsave 3600 1\nappendonly no\n" % PW


def wait_until(what, fn, secs=30, interval=0.05):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001
            pass
        time.sleep(interval)
    pytest.fail("timed out waiting for: %s" % what, pytrace=False)


def redis_port(g):
    for line in g.config.read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=")[1])
    raise AssertionError("no port in %s" % g.config)


def guestctl(inv, *args, check=True, timeout=120):
    if not GUESTCTL.exists():
        pytest.fail("trove-guestctl not found at %s: build it with `cargo build`" % GUESTCTL,
                    pytrace=False)
    r = subprocess.run([str(GUESTCTL), "--inventory", str(inv), *args], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail("trove-guestctl %s failed (%d):\n%s%s" % (" ".join(args), r.returncode,
                                                              r.stdout, r.stderr), pytrace=False)
    return r


class Writer(threading.Thread):
    """Writes k<i> through the Sentinel-managed master connection, recording every ack."""

    def __init__(self, master):
        super().__init__(daemon=True)
        self.master = master
        self.acked = []  # (i, sent, acked): monotonic times
        self.errors = 0
        self.stopping = threading.Event()

    def run(self):
        i = 0
        while not self.stopping.is_set():
            i += 1
            try:
                sent = time.monotonic()
                self.master.set("k%d" % i, i)
                self.acked.append((i, sent, time.monotonic()))
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
                    redis.ResponseError):
                self.errors += 1
                time.sleep(0.01)

    def stop(self):
        self.stopping.set()
        self.join(10)
        assert not self.is_alive(), "writer thread did not stop"

    def first_ack_sent_after(self, t):
        """When the first write sent after t was acknowledged (None: none yet)."""
        return next((acked for _, sent, acked in self.acked if sent > t), None)

    def acked_since(self, t):
        return sum(1 for _, _, acked in self.acked if acked >= t)


def missing_on(r, ids):
    """The ids i whose k<i> does not hold i on the node r."""
    out = []
    for s in range(0, len(ids), 1000):
        batch = ids[s:s + 1000]
        out += [i for i, v in zip(batch, r.mget(["k%d" % i for i in batch])) if v != str(i).encode()]
    return out


def check_kill_losses(writer, r_new, t_kill, failover, what):
    """Every write the writer acknowledged is on the new master r_new, except at most those
    acknowledged from TAIL_S before the kill (t_kill) until the failover (the first write sent
    after the kill acknowledged): none acknowledged earlier, none acknowledged after the failover
    (at least MIN_BEFORE and MIN_AFTER of those). Prints and returns (lost, in the window, acked)."""
    acked = writer.acked
    missing = set(missing_on(r_new, [i for i, _, _ in acked]))
    before = [i for i, _, t in acked if t < t_kill - TAIL_S]
    window = [i for i, _, t in acked if t_kill - TAIL_S <= t < failover]
    after = [i for i, _, t in acked if t >= failover]
    lost = [len([i for i in ids if i in missing]) for ids in (before, window, after)]
    print("\nwatch: %s: lost %d of %d acknowledged writes; %d of %d before the window, %d of %d in the "
          "window (%.0f ms before the kill to the failover %.0f ms after it: the bound), %d of %d after "
          "the failover" % (what, sum(lost), len(acked), lost[0], len(before), lost[1], len(window),
                            TAIL_S * 1000, (failover - t_kill) * 1000, lost[2], len(after)))
    assert len(before) >= MIN_BEFORE, "only %d writes acknowledged before the window" % len(before)
    assert len(after) >= MIN_AFTER, "only %d writes acknowledged after the failover" % len(after)
    assert lost[0] == 0, "%d writes acknowledged more than %.1f s before the kill are lost" % (lost[0], TAIL_S)
    assert lost[2] == 0, "%d writes acknowledged after the failover are lost" % lost[2]
    return sum(lost), len(window), len(acked)


@contextlib.contextmanager
def replica_set(rabbit_url, tmp_path, name=NAME, inv=None):
    """Three prepared guests on rabbit_url, guest 0 the master of the others, an inventory (at inv,
    default tmp_path/inventory.toml) for the set `name` naming two watcher addresses; yields
    (guests, inventory, listen addresses, {name: watcher process})."""
    guests = [Guest("rust", rabbit_url, name="%s%d" % (name, n)) for n in range(3)]
    watcher = {}
    try:
        for g in guests:
            g.start()
            g.client(timeout=30).call(lib.newest_context(), "prepare", packages=None,
                                      databases=[], memory_mb=512, users=[], device_path=None,
                                      mount_point="/var/lib/redis", backup_info=None,
                                      config_contents=CONF, root_password=None, overrides={},
                                      cluster_config=None, snapshot=None)
        inv = inv or tmp_path / "inventory.toml"
        listen = ["127.0.0.1:%d" % lib.free_port() for _ in range(2)]
        inv.write_text('transport_url = "%s"\ncontrol_exchange = "trove"\nname = "%s"\n'
                       'watchers = ["%s", "%s"]\n%s' % (
                           rabbit_url, name, listen[0], listen[1],
                           "".join('\n[[guest]]\nid = "%s"\n' % g.id for g in guests)))
        guestctl(inv, "create-replicas", "--replica-of", guests[0].id, guests[1].id,
                 guests[2].id)
        yield guests, inv, listen, watcher
    finally:
        for proc in watcher.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for g in guests:
            g.cleanup()


@pytest.fixture
def topology(rabbit_url, tmp_path):
    with replica_set(rabbit_url, tmp_path) as t:
        yield t


def start_watcher(inv, listen, log):
    return subprocess.Popen([str(GUESTCTL), "--inventory", str(inv), "watch", "--listen", listen,
                             "--down-after-ms", str(DOWN_AFTER_MS)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TROVE_GUESTCTL_LOG="trove_guest=debug,warn"))


def start_one_watcher(inv, listen, watcher, tmp_path):
    """Starts watcher a and waits until it holds the lease; returns a function giving its log."""
    log_path = tmp_path / "watch.log"
    with open(log_path, "wb") as log:
        watcher["a"] = start_watcher(inv, listen, log)
    log_text = lambda: log_path.read_text(errors="replace") if log_path.exists() else ""  # noqa: E731
    wait_until("the watcher holds the lease", lambda: "holds the lease" in log_text(), secs=20)
    return log_text


def start_two_watchers(inv, listens, watcher, tmp_path):
    """Starts watcher a, waits until it holds the lease, then watcher b; returns read(n), the log
    of watcher n so far."""
    logs = [tmp_path / ("watch%d.log" % n) for n in range(2)]
    read = lambda n: logs[n].read_text(errors="replace") if logs[n].exists() else ""  # noqa: E731
    with open(logs[0], "wb") as log:
        watcher["a"] = start_watcher(inv, listens[0], log)
    wait_until("the first watcher holds the lease", lambda: "holds the lease" in read(0), secs=20)
    with open(logs[1], "wb") as log:
        watcher["b"] = start_watcher(inv, listens[1], log)
    return read


def test_watch_fails_over_and_sentinel_clients_follow(topology, tmp_path):
    """Two watchers: one holds the lease and acts, both serve discovery; the other takes over
    when the first dies."""
    guests, inv, listens, watcher = topology
    read = start_two_watchers(inv, listens, watcher, tmp_path)
    log_text = lambda: read(0)  # noqa: E731
    host, port = listens[0].rsplit(":", 1)

    ports = [redis_port(g) for g in guests]
    sentinel = Sentinel([(host, int(port))], socket_timeout=0.5)
    addr = wait_until("discovery names the master",
                      lambda: sentinel.discover_master(NAME), secs=20)
    assert addr == ("127.0.0.1", ports[0]), addr
    assert sorted(p for _, p in sentinel.discover_slaves(NAME)) == sorted(ports[1:])
    sc = redis.Redis(host=host, port=int(port), socket_timeout=2)
    assert sc.execute_command("ROLE")[0] in (b"sentinel", "sentinel")
    events = sc.pubsub()
    events.psubscribe("*")
    wait_until("psubscribe confirmed", lambda: events.get_message(timeout=0.2))
    # The standby watcher publishes +switch-master too (every watcher announces what the agents
    # accepted, whoever acted), with the stored epoch as config-epoch.
    h1, p1 = listens[1].rsplit(":", 1)
    sc1 = redis.Redis(host=h1, port=int(p1), socket_timeout=2)
    events1 = sc1.pubsub()
    events1.subscribe("+switch-master")
    wait_until("subscribe confirmed on the standby", lambda: events1.get_message(timeout=0.2))
    epoch_before = sc.sentinel_master(NAME)["config-epoch"]

    master = sentinel.master_for(NAME, password=PW, socket_timeout=0.5)
    writer = Writer(master)
    writer.start()
    wait_until("the writer's first acks", lambda: len(writer.acked) > 50)

    # 1. No false failover: the master's agent dies, its Redis keeps serving, replicas linked.
    guests[0].proc.kill()
    guests[0].proc.wait(5)
    time.sleep(3 * DOWN_AFTER_MS / 1000)
    assert sentinel.discover_master(NAME) == ("127.0.0.1", ports[0])
    assert "decision: master is down" not in log_text(), log_text()[-3000:]

    # 2. The whole master goes (its Redis too): the watcher ejects it; the client follows.
    os.killpg(guests[0].proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    new = wait_until("discovery names a new master",
                     lambda: (sentinel.discover_master(NAME) != ("127.0.0.1", ports[0])
                              and sentinel.discover_master(NAME)), secs=30)
    # Recovery: the first write sent after the kill that was acknowledged.
    first_after = wait_until("writes acknowledged again", lambda: writer.first_ack_sent_after(t_kill),
                             secs=30)
    wait_until("%d writes acknowledged after the failover" % MIN_AFTER,
               lambda: writer.acked_since(first_after) >= MIN_AFTER, secs=30)
    writer.stop()
    print("\nwatch: kill -9 of the master -> writable through redis-py Sentinel after %.0f ms "
          "(down_after %d ms); writes acked %d, errors %d"
          % ((first_after - t_kill) * 1000, DOWN_AFTER_MS, len(writer.acked), writer.errors))

    assert new[1] in ports[1:], new
    new_port = new[1]
    other_port = [p for p in ports[1:] if p != new_port][0]
    r_new = redis.Redis(port=new_port, password=PW)
    r_other = redis.Redis(port=other_port, password=PW)
    assert r_new.info("replication")["role"] == "master"
    wait_until("the other replica follows the new master",
               lambda: r_other.info("replication").get("master_port") == new_port
               and r_other.info("replication").get("master_link_status") == "up", secs=20)
    check_kill_losses(writer, r_new, t_kill, first_after, "kill -9 of the master's agent and Redis")
    seen = []
    wait_until("+switch-master published", lambda: any(
        m and m.get("channel") in (b"+switch-master", "+switch-master")
        for m in seen.append(events.get_message(timeout=0.2)) or seen), secs=5)
    assert "decision: master is down" in log_text()
    seen1 = []
    wait_until("+switch-master published by the standby", lambda: any(
        m and m.get("type") == "message" for m in seen1.append(events1.get_message(timeout=0.2)) or seen1), secs=5)
    for s in (sc, sc1):
        epoch_after = s.sentinel_master(NAME)["config-epoch"]
        assert epoch_after > epoch_before, (epoch_before, epoch_after)
    # The second watcher serves the same answer and never acted.
    other = Sentinel([tuple((h, int(p)) for h, p in [listens[1].rsplit(":", 1)])[0]],
                     socket_timeout=0.5)
    wait_until("the second watcher names the new master",
               lambda: other.discover_master(NAME) == new, secs=10)
    assert "holds the lease" not in read(1) and "decision:" not in read(1), read(1)[-3000:]

    # SIGTERM: the acting watcher exits cleanly, and the other one takes the lease.
    watcher["a"].send_signal(signal.SIGTERM)
    assert watcher["a"].wait(15) == 0, log_text()[-3000:]
    wait_until("the second watcher takes the lease", lambda: "holds the lease" in read(1), secs=15)
    watcher["b"].send_signal(signal.SIGTERM)
    assert watcher["b"].wait(15) == 0, read(1)[-3000:]


def test_watch_ejects_a_crashed_master_redis_and_reattaches_it(topology, tmp_path):
    """kill -9 of the master's redis-server alone: its agent holds the restart back (a restart
    from its snapshot would make the replicas drop every later write), the watcher ejects it, and
    then re-attaches it as a replica of the new master. A redis-py Sentinel client writes through."""
    guests, inv, listens, watcher = topology
    log_text = start_one_watcher(inv, listens[0], watcher, tmp_path)
    host, port = listens[0].rsplit(":", 1)
    ports = [redis_port(g) for g in guests]
    sentinel = Sentinel([(host, int(port))], socket_timeout=0.5)
    wait_until("discovery names the master",
               lambda: sentinel.discover_master(NAME) == ("127.0.0.1", ports[0]), secs=20)
    writer = Writer(sentinel.master_for(NAME, password=PW, socket_timeout=0.5))
    writer.start()
    wait_until("%d writes acknowledged %.1f s ago" % (MIN_BEFORE, TAIL_S),
               lambda: writer.acked_since(0) - writer.acked_since(time.monotonic() - TAIL_S) >= MIN_BEFORE)

    pid = int(redis.Redis(port=ports[0], password=PW).info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    new = wait_until("discovery names a new master",
                     lambda: (sentinel.discover_master(NAME) != ("127.0.0.1", ports[0])
                              and sentinel.discover_master(NAME)), secs=30)
    first_after = wait_until("writes acknowledged again", lambda: writer.first_ack_sent_after(t_kill),
                             secs=30)
    r_old = redis.Redis(port=ports[0], password=PW, socket_timeout=2)
    wait_until("the old master is back as a replica of the new one",
               lambda: r_old.info("replication").get("master_port") == new[1]
               and r_old.info("replication").get("master_link_status") == "up", secs=30)
    wait_until("%d writes acknowledged after the failover" % MIN_AFTER,
               lambda: writer.acked_since(first_after) >= MIN_AFTER, secs=30)
    writer.stop()
    r_new = redis.Redis(port=new[1], password=PW)
    assert r_new.info("replication")["role"] == "master"
    assert int(r_old.info("server")["process_id"]) != pid
    print("\nwatch: kill -9 of the master's redis-server -> writable through redis-py Sentinel after "
          "%.0f ms" % ((first_after - t_kill) * 1000))
    # A restart from the snapshot would have lost every write since it: the bound catches that.
    check_kill_losses(writer, r_new, t_kill, first_after, "kill -9 of the master's redis-server")
    assert "held back" in guests[0].log_path.read_text(errors="replace"), guests[0].log_tail()
    assert "re-attached" in log_text(), log_text()[-3000:]
    watcher["a"].send_signal(signal.SIGTERM)
    assert watcher["a"].wait(15) == 0, log_text()[-3000:]


def test_a_promote_by_hand_from_another_inventory_copy_is_followed_not_undone(topology, tmp_path):
    """A promote run by hand on another host, whose inventory copy the watcher never reads: the
    watcher reads the topology from the agents (the epoch the promote claimed), so it announces the
    new master and never points it back at the old one, whose own inventory copy still names it.
    A Trove-style call without an epoch on the managed set is refused and changes nothing."""
    guests, inv, listens, watcher = topology
    log_text = start_one_watcher(inv, listens[0], watcher, tmp_path)
    ports = [redis_port(g) for g in guests]
    sentinel = Sentinel([tuple_of(listens[0])], socket_timeout=0.5)
    wait_until("discovery names the master", lambda: sentinel.discover_master(NAME) == ("127.0.0.1", ports[0]), secs=20)
    old = redis.Redis(port=ports[0], password=PW, socket_timeout=2)
    promoted = redis.Redis(port=ports[1], password=PW, socket_timeout=2)
    old.set("before", 1)
    wait_until("guest 1 has the write", lambda: promoted.get("before") == b"1")
    with pytest.raises(Exception, match="without an epoch"):
        guests[1].client(timeout=30).call(lib.newest_context(), "detach_replica", for_failover=False)
    assert promoted.info("replication")["role"] == "slave"
    other_copy = tmp_path / "other-host-inventory.toml"
    other_copy.write_text(Path(inv).read_text())
    guestctl(other_copy, "promote-to-replica-source", guests[1].id)
    wait_until("discovery names the promoted guest",
               lambda: sentinel.discover_master(NAME) == ("127.0.0.1", ports[1]), secs=10)
    t = time.monotonic()
    while time.monotonic() - t < 3:  # 60 watcher rounds at down_after 1000 ms
        assert promoted.info("replication")["role"] == "master", log_text()[-3000:]
        time.sleep(0.1)
    assert old.info("replication")["master_port"] == ports[1]
    assert "differ from the accepted topology" not in log_text(), log_text()[-3000:]
    watcher["a"].send_signal(signal.SIGTERM)
    assert watcher["a"].wait(15) == 0, log_text()[-3000:]


def tuple_of(listen):
    h, p = listen.rsplit(":", 1)
    return (h, int(p))


def test_sentinel_failover_is_a_planned_switchover(topology, tmp_path):
    """SENTINEL FAILOVER, sent by redis-py to the acting watcher, runs our promote: the most current
    replica takes over and no write acknowledged through the Sentinel client is lost. The other
    watcher refuses it (only the lease holder acts)."""
    guests, inv, listens, watcher = topology
    read = start_two_watchers(inv, listens, watcher, tmp_path)
    ports = [redis_port(g) for g in guests]
    acting = [(h, int(p)) for h, p in [listens[0].rsplit(":", 1)]][0]
    other = [(h, int(p)) for h, p in [listens[1].rsplit(":", 1)]][0]
    sentinel = Sentinel([acting, other], socket_timeout=0.5)
    wait_until("discovery names the master",
               lambda: sentinel.discover_master(NAME) == ("127.0.0.1", ports[0]), secs=20)
    wait_until("the second watcher serves the same view",
               lambda: Sentinel([other], socket_timeout=0.5).discover_master(NAME) == ("127.0.0.1", ports[0]),
               secs=20)
    writer = Writer(sentinel.master_for(NAME, password=PW, socket_timeout=0.5))
    writer.start()
    wait_until("the writer's first acks", lambda: len(writer.acked) > 200)

    with pytest.raises(redis.ResponseError, match="lease"):
        redis.Redis(host=other[0], port=other[1], socket_timeout=5).execute_command(
            "SENTINEL", "FAILOVER", NAME)
    t0 = time.monotonic()
    reply = redis.Redis(host=acting[0], port=acting[1], socket_timeout=30).execute_command(
        "SENTINEL", "FAILOVER", NAME)
    took = time.monotonic() - t0
    assert reply in (True, b"OK", "OK"), reply
    new = sentinel.discover_master(NAME)
    assert new != ("127.0.0.1", ports[0]) and new[1] in ports[1:], new
    # Writes acknowledged after the promote returned are the new master's (the old one is a replica).
    wait_until("%d writes acknowledged by the new master" % MIN_AFTER,
               lambda: writer.acked_since(t0 + took) >= MIN_AFTER, secs=20)
    r_old = redis.Redis(port=ports[0], password=PW, socket_timeout=2)
    wait_until("the old master follows the new one",
               lambda: r_old.info("replication").get("master_port") == new[1]
               and r_old.info("replication").get("master_link_status") == "up", secs=20)
    writer.stop()
    r_new = redis.Redis(port=new[1], password=PW)
    lost = missing_on(r_new, [i for i, _, _ in writer.acked])
    gaps = [b[2] - a[2] for a, b in zip(writer.acked, writer.acked[1:])]
    print("\nwatch: SENTINEL FAILOVER -> promote in %.0f ms; acked %d (%d after the promote), lost %d, "
          "longest pause %.0f ms" % (took * 1000, len(writer.acked), writer.acked_since(t0 + took),
                                     len(lost), max(gaps) * 1000))
    assert not lost, "%d acknowledged writes lost in a planned switchover" % len(lost)
    assert "SENTINEL FAILOVER" in read(0) and "decision:" not in read(1)
    for w in ("a", "b"):
        watcher[w].send_signal(signal.SIGTERM)
        assert watcher[w].wait(15) == 0


def test_no_failover_on_a_broker_restart(restart_broker, tmp_path):
    """A restart of RabbitMQ silences every agent at once: nobody reports the master's link down,
    so the watcher must not fail over, and it acts again once the broker is back."""
    with replica_set(restart_broker.url, tmp_path) as (guests, inv, listens, watcher):
        log_text = start_one_watcher(inv, listens[0], watcher, tmp_path)
        host, port = listens[0].rsplit(":", 1)
        sentinel = Sentinel([(host, int(port))], socket_timeout=0.5)
        ports = [redis_port(g) for g in guests]
        wait_until("discovery names the master",
                   lambda: sentinel.discover_master(NAME) == ("127.0.0.1", ports[0]), secs=20)
        restart_broker.restart()
        # Back: every agent answers again and the watcher holds the lease again.
        for g in guests:
            wait_until("agent %s answers after the broker restart" % g.id,
                       lambda g=g: g.client(timeout=2).call(lib.newest_context(), "rpc_ping"),
                       secs=60)
        wait_until("the watcher holds the lease again",
                   lambda: log_text().count("holds the lease") >= 2, secs=30)
        time.sleep(3 * DOWN_AFTER_MS / 1000)
        assert sentinel.discover_master(NAME) == ("127.0.0.1", ports[0])
        assert "decision: master is down" not in log_text(), log_text()[-3000:]
        assert redis.Redis(port=ports[0], password=PW).info("replication")["role"] == "master"
        # Sighted again: its RPC connection was opened again, so a dead master is failed over.
        os.killpg(guests[0].proc.pid, signal.SIGKILL)
        new = wait_until("discovery names a new master after the broker restart",
                         lambda: (sentinel.discover_master(NAME) != ("127.0.0.1", ports[0])
                                  and sentinel.discover_master(NAME)), secs=30)
        assert new[1] in ports[1:], new
        watcher["a"].send_signal(signal.SIGTERM)
        assert watcher["a"].wait(15) == 0, log_text()[-3000:]


def test_a_paused_leader_is_replaced_and_acts_no_more(topology, tmp_path):
    """SIGSTOP of the acting watcher: its lease connection misses its AMQP heartbeats (down_after,
    at least 1 s), the broker drops it, and the standby takes the lease within a few down_after
    (the 60 s default heartbeat before). Resumed, the old leader finds the lease gone and does not
    act; the standby fails a dead master over."""
    guests, inv, listens, watcher = topology
    read = start_two_watchers(inv, listens, watcher, tmp_path)
    ports = [redis_port(g) for g in guests]
    wait_until("the standby is up", lambda: "watching" in read(1), secs=20)
    watcher["a"].send_signal(signal.SIGSTOP)
    t = time.monotonic()
    try:
        wait_until("the standby takes the lease", lambda: "holds the lease" in read(1), secs=30)
        took = time.monotonic() - t
    finally:
        watcher["a"].send_signal(signal.SIGCONT)
    print("\nwatch: a SIGSTOPped leader replaced after %.1f s (down_after %d ms)" % (took, DOWN_AFTER_MS))
    assert took < 4 * DOWN_AFTER_MS / 1000 + 2, took
    wait_until("the resumed leader knows it lost the lease", lambda: "lost the lease" in read(0), secs=15)
    os.killpg(guests[0].proc.pid, signal.SIGKILL)
    sentinel = Sentinel([tuple_of(listens[1])], socket_timeout=0.5)
    wait_until("the new leader fails the master over",
               lambda: sentinel.discover_master(NAME)[1] in ports[1:], secs=30)
    assert "decision: master is down" in read(1)
    assert "decision:" not in read(0).split("lost the lease")[-1], read(0)[-3000:]
    for w in ("a", "b"):
        watcher[w].send_signal(signal.SIGTERM)
        assert watcher[w].wait(15) == 0


def test_one_watcher_process_serves_every_set_of_a_directory(rabbit_url, tmp_path):
    """watch --sets DIR: two replica sets in one watcher process, one discovery endpoint naming
    each; the master of one is killed and only that set fails over (redis-py's Sentinel client
    follows, losses bounded); an inventory removed from DIR is no longer served."""
    sets_dir = tmp_path / "sets"
    sets_dir.mkdir()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(replica_set(rabbit_url, tmp_path, "seta", sets_dir / "a.toml"))
        b = stack.enter_context(replica_set(rabbit_url, tmp_path, "setb", sets_dir / "b.toml"))
        listen = "127.0.0.1:%d" % lib.free_port()
        log_path = tmp_path / "watch-sets.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(GUESTCTL), "watch", "--sets", str(sets_dir), "--listen", listen,
                                     "--down-after-ms", str(DOWN_AFTER_MS)], stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, TROVE_GUESTCTL_LOG="trove_guest=debug,warn"))
        a[3]["sets"] = proc
        log_text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        host, port = listen.rsplit(":", 1)
        sentinel = Sentinel([(host, int(port))], socket_timeout=0.5)
        ports = {name: [redis_port(g) for g in t[0]] for name, t in (("seta", a), ("setb", b))}
        for name in ("seta", "setb"):
            wait_until("discovery names %s's master" % name,
                       lambda: sentinel.discover_master(name) == ("127.0.0.1", ports[name][0]), secs=30)
        sc = redis.Redis(host=host, port=int(port), socket_timeout=2)
        assert sorted(sc.sentinel_masters()) == ["seta", "setb"], sc.sentinel_masters()
        info = sc.info("sentinel")
        assert info["sentinel_masters"] == 2, info

        master = sentinel.master_for("seta", password=PW, socket_timeout=0.5)
        writer = Writer(master)
        writer.start()
        wait_until("%d writes before the kill" % MIN_BEFORE, lambda: len(writer.acked) > MIN_BEFORE)
        time.sleep(TAIL_S + 0.5)  # the check needs writes acknowledged before its window
        os.killpg(a[0][0].proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        new = wait_until("discovery names a new master of seta",
                         lambda: (sentinel.discover_master("seta") != ("127.0.0.1", ports["seta"][0])
                                  and sentinel.discover_master("seta")), secs=30)
        first_after = wait_until("writes acknowledged again", lambda: writer.first_ack_sent_after(t_kill), secs=30)
        wait_until("%d writes after the failover" % MIN_AFTER, lambda: writer.acked_since(first_after) >= MIN_AFTER, secs=30)
        writer.stop()
        assert new[1] in ports["seta"][1:], new
        check_kill_losses(writer, redis.Redis(port=new[1], password=PW), t_kill, first_after, "one set of two, kill -9")
        # The other set was not touched.
        assert sentinel.discover_master("setb") == ("127.0.0.1", ports["setb"][0])
        assert redis.Redis(port=ports["setb"][0], password=PW).info("replication")["role"] == "master"
        decisions = [line for line in log_text().splitlines() if "decision: master is down" in line]
        assert len(decisions) == 1 and b[0][0].id not in decisions[0], decisions

        # An inventory removed from the directory: its set is no longer served.
        (sets_dir / "b.toml").unlink()
        wait_until("setb is no longer served", lambda: "setb" not in sc.sentinel_masters(), secs=20)
        assert sentinel.discover_master("seta") == new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log_text()[-3000:]
