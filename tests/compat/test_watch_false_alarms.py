"""trove-guestctl watch does not fail over what is not dead: a master Redis stalled for half of
down_after (SIGSTOP, or a slow script as DEBUG SLEEP would be), and a dead agent beside a serving
Redis. Real agents, real redis-server processes, real RabbitMQ; the watcher's own log and the
guests' roles are the evidence."""

import os
import signal
import time

import pytest
import redis

from test_watch import DOWN_AFTER_MS, PW, redis_port, start_one_watcher, topology  # noqa: F401

# A Lua script that keeps Redis busy for ARGV[1] ms (what DEBUG SLEEP does, which Redis 7 disables
# by default): every client, the agents' probes included, waits.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat
  t = redis.call('TIME')
until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return 1
"""


def master_redis(g):
    return redis.Redis(host="127.0.0.1", port=redis_port(g), password=PW, socket_timeout=5)


def roles(guests):
    return [master_redis(g).execute_command("ROLE")[0] for g in guests]


@pytest.mark.parametrize("fault", ["sigstop", "busy", "agent_dead"])
def test_no_failover_when_the_master_is_not_dead(fault, topology, tmp_path):  # noqa: F811
    guests, inv, listen, watcher = topology
    log = start_one_watcher(inv, listen[0], watcher, tmp_path)
    master = master_redis(guests[0])
    assert roles(guests) == [b"master", b"slave", b"slave"]
    time.sleep(1.0)  # the watcher has seen the set healthy
    stall_ms = DOWN_AFTER_MS // 2
    if fault == "agent_dead":
        guests[0].proc.kill()
        guests[0].proc.wait(5)
        time.sleep(3 * DOWN_AFTER_MS / 1000)
    else:
        pid = master.info("server")["process_id"]
        for _ in range(3):
            if fault == "sigstop":
                os.kill(pid, signal.SIGSTOP)
                time.sleep(stall_ms / 1000)
                os.kill(pid, signal.SIGCONT)
            else:
                assert master.eval(BUSY, 0, stall_ms) == 1
            time.sleep(1.5 * DOWN_AFTER_MS / 1000)
    text = log()
    assert watcher["a"].poll() is None, "the watcher exited:\n" + text[-3000:]
    assert "decision: master is down" not in text and "eject done" not in text, \
        "a %s of %d ms (down_after %d ms) was taken for a dead master:\n%s" % (
            fault, stall_ms, DOWN_AFTER_MS, text[-3000:])
    assert roles(guests) == [b"master", b"slave", b"slave"]
    assert master.set("after", 1), "the master still takes writes"
