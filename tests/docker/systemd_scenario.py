#!/usr/bin/env python3
"""The agent in systemd mode under Debian's systemd as PID 1 (driven by scripts/systemd-tests.sh).

Two guest containers (docker/systemd/Dockerfile) run trove-guestagent as the unit
trove-guestagent.service with [redis] service = "systemd"; the agent drives Debian's
redis-server.service with systemctl. From the host, trove-guestctl covers: prepare, create-replicas
(attach), promote under a writer, kill -9 of a replica's redis-server (systemd restarts it; the next
replication calls and a promote work), kill -9 of the master's redis-server (systemd restarts it
guarded; eject re-attaches it), the `restart` RPC, the `stop_db` RPC (do_not_start_on_reboot: down across a reboot), a reboot of the
container (systemd brings Redis back from the agent's redis.conf) and stopping the agent's unit.

Prints detail lines and one summary line `scenario=systemd result=pass|fail ...`; exit 0 on pass.
Environment (set by the script): TROVE_INFRA_GUESTCTL, TROVE_INFRA_WORKDIR, TROVE_INFRA_BROKER,
TROVE_INFRA_GUESTS ("container=ip,container=ip"), TROVE_INFRA_IDS (guest ids, same order).
"""

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from infra_common import (PREPARE_ARGS, Ctl, Failed, Redis, Writer, check, dexec, port_open, rinfo, run, say,  # noqa: E402
                          wait_for, write_inventory)


def unit_prop(c, unit, prop):
    return dexec(c, "systemctl", "show", "-p", prop, "--value", unit).stdout.strip()


def unit_active(c, unit):
    return dexec(c, "systemctl", "is-active", unit, check=False).stdout.strip()


def redis_pid(c):
    return int(unit_prop(c, "redis-server.service", "MainPID") or 0)


def main():
    e = os.environ
    work = e["TROVE_INFRA_WORKDIR"]
    guests = [pair.split("=") for pair in e["TROVE_INFRA_GUESTS"].split(",")]
    ids = e["TROVE_INFRA_IDS"].split(",")
    (c1, ip1), (c2, ip2) = guests
    g1, g2 = ids
    inventory = os.path.join(work, "inventory.toml")
    write_inventory(inventory, f"rabbit://trove:trove@{e['TROVE_INFRA_BROKER']}:5672/", ids)
    ctl = Ctl(e["TROVE_INFRA_GUESTCTL"], inventory, work)
    figures = {}

    # --- boot: systemd is PID 1, the agent is a unit and answers
    for c, g in ((c1, g1), (c2, g2)):
        wait_for(f"{c}: systemd finished booting",
                 lambda: dexec(c, "systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"), 60)
        ctl.wait_ping(g, 90)
        check(dexec(c, "cat", "/proc/1/comm").stdout.strip() == "systemd", f"{c}: PID 1 is systemd")
        check(unit_active(c, "trove-guestagent.service") == "active", f"{c}: trove-guestagent.service is active")
        agent_pid = unit_prop(c, "trove-guestagent.service", "MainPID")
        check(dexec(c, "cat", f"/proc/{agent_pid}/comm").stdout.strip().startswith("trove-guestage"),
              f"{c}: the unit's main process is trove-guestagent (pid {agent_pid})")
        failed = dexec(c, "systemctl", "--failed", "--plain", "--no-legend").stdout.strip()
        check(failed == "", f"{c}: no failed units ({failed or 'none'})")

    # --- prepare: the agent rewrites redis.conf and restarts redis-server.service with systemctl
    before = {c: redis_pid(c) for c in (c1, c2)}
    for g in (g1, g2):
        ctl.must_call(g, "prepare", PREPARE_ARGS, timeout=120)
    for c, ip in ((c1, ip1), (c2, ip2)):
        pid = redis_pid(c)
        check(unit_active(c, "redis-server.service") == "active" and pid not in (0, before[c]),
              f"{c}: redis-server.service was restarted by prepare (MainPID {before[c]} -> {pid})")
        info = rinfo(ip, "server")
        check(info is not None and int(info["process_id"]) == pid,
              f"{c}: the Redis answering on {ip}:6379 with the prepared password is the unit's process")
        owner = dexec(c, "stat", "-c", "%U:%G %a", "/etc/redis/redis.conf").stdout.strip()
        check(owner == "redis:redis 600", f"{c}: /etc/redis/redis.conf stays readable by redis only ({owner})")
        state = dexec(c, "stat", "-c", "%U %a", "/etc/redis/redis.conf.agent.json").stdout.strip()
        check(state == "root 600", f"{c}: the agent's state file is root's, 0600 ({state})")

    # --- attach: create-replicas through the taskmanager flow
    r = Redis(ip1)
    for i in range(500):
        r.call("SET", f"seed:{i}", i)
    r.close()
    ctl.must("create-replicas", "--replica-of", g1, g2, timeout=180)
    wait_for(f"{c2} replicates {ip1} with the link up",
             lambda: (i := rinfo(ip2, "replication")) and i.get("role") == "slave" and i.get("master_host") == ip1
             and i.get("master_link_status") == "up", 60)
    check(Redis(ip2).call("GET", "seed:499") == b"499", f"{c2} has the master's data")

    # --- promote under a writer: nothing acknowledged is lost
    w = Writer([ip1, ip2], "promote")
    w.start()
    wait_for("the writer has acknowledged 200 writes on the master", lambda: w.by_host[ip1] >= 200, 30)
    ctl.must("promote-to-replica-source", g2, timeout=180)
    wait_for("the writer has acknowledged 200 writes on the new master", lambda: w.by_host[ip2] >= 200, 30)
    w.stop()
    say(w.summary())
    lost = w.missing_on(ip2)
    figures["promote_acked"], figures["promote_lost"], figures["promote_pause_ms"] = len(w.acked), len(lost), int(w.longest * 1000)
    check(not lost, f"promote: {len(w.acked)} writes acknowledged on both masters, none lost on the new master")
    i1 = rinfo(ip1, "replication")
    check(rinfo(ip2, "replication")["role"] == "master" and i1["role"] == "slave" and i1["master_host"] == ip2,
          f"{g2} is master, {g1} its replica")

    # --- kill -9 of the replica's redis-server: systemd restarts it (Restart=always)
    pid = redis_pid(c1)
    restarts = int(unit_prop(c1, "redis-server.service", "NRestarts"))
    dexec(c1, "kill", "-9", str(pid))
    t0 = time.monotonic()
    new_pid = wait_for(f"{c1}: systemd restarts redis-server",
                       lambda: (p := redis_pid(c1)) not in (0, pid) and unit_active(c1, "redis-server.service") == "active" and p, 30)
    check(int(unit_prop(c1, "redis-server.service", "NRestarts")) == restarts + 1,
          f"{c1}: systemd restarted redis-server.service (MainPID {pid} -> {new_pid}, NRestarts {restarts} -> {restarts + 1})")
    wait_for(f"{c1} links to {ip2} again",
             lambda: (i := rinfo(ip1, "replication")) and i.get("master_host") == ip2 and i.get("master_link_status") == "up", 60)
    figures["kill9_relink_ms"] = int((time.monotonic() - t0) * 1000)
    say(f"kill -9 to the replica linked again: {figures['kill9_relink_ms']} ms")
    # The very next calls after the restart, replication ones included.
    st = ctl.must_call(g1, "get_replication_status")
    check(st.get("role") in ("slave", "replica") or st.get("master_host") == ip2, f"{g1}: status after the restart says replica of {ip2}")
    ctl.must_call(g1, "get_latest_txn_id")
    ctl.must("promote-to-replica-source", g1, timeout=180)
    i2 = rinfo(ip2, "replication")
    check(rinfo(ip1, "replication")["role"] == "master" and i2["role"] == "slave" and i2["master_host"] == ip1,
          f"after the kill -9, a promote back works: {g1} is master, {g2} its replica")

    # --- the restart RPC on the replica: a new process, the same data, linked again
    agent_pid = unit_prop(c2, "trove-guestagent.service", "MainPID")
    pid = redis_pid(c2)
    ctl.must_call(g2, "restart", {}, timeout=120)
    new_pid = redis_pid(c2)
    check(new_pid not in (0, pid) and unit_active(c2, "redis-server.service") == "active",
          f"{c2}: restart went through systemd (MainPID {pid} -> {new_pid})")
    check(unit_prop(c2, "trove-guestagent.service", "MainPID") == agent_pid, f"{c2}: the agent itself was not restarted")
    wait_for(f"{c2} links to {ip1} again after restart",
             lambda: (i := rinfo(ip2, "replication")) and i.get("master_host") == ip1 and i.get("master_link_status") == "up", 60)
    check(Redis(ip2).call("GET", "seed:499") == b"499" and not w.missing_on(ip2), f"{c2} kept every write across the restart")

    # --- stop_db(do_not_start_on_reboot): redis-server.service is stopped, stays stopped (not
    # Restart=always'd back), is disabled, and stays down across a reboot until a start
    ctl.must_call(g2, "stop_db", {"do_not_start_on_reboot": True}, timeout=120)
    enabled = dexec(c2, "systemctl", "is-enabled", "redis-server.service", check=False).stdout.strip()
    check(enabled == "disabled", f"{c2}: stop_db(do_not_start_on_reboot) disabled redis-server.service ({enabled})")
    check(unit_active(c2, "redis-server.service") == "inactive", f"{c2}: stop_db stopped redis-server.service")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if port_open(ip2, 6379) or unit_active(c2, "redis-server.service") != "inactive":
            raise Failed(f"{c2}: redis-server came back after stop_db")
        time.sleep(0.3)
    say(f"ok: {c2}: redis-server stayed down for 3 s after stop_db")
    rc, out, err, _ = ctl.call(g2, "get_replication_status", timeout=10)
    say(f"get_replication_status on the stopped guest: exit {rc}: {(out or err).strip()[-200:]}")
    # The agent answers: rpc_ping says true, and the status call is refused by the agent (Redis is
    # down), not left without an answer.
    prc, pout, perr, _ = ctl.call(g2, "rpc_ping", timeout=10)
    check(prc == 0 and "true" in pout, f"{g2}: the agent answers rpc_ping with Redis stopped (exit {prc}: {(pout or perr).strip()[-200:]})")
    check(rc not in (None, 0) and "no answer within" not in (out + err),
          f"{g2}: the agent refuses get_replication_status with Redis stopped, rather than not answering")
    run(["docker", "restart", "-t", "60", c2], timeout=120, check=True)
    ctl.wait_ping(g2, 90)
    time.sleep(2)
    check(unit_active(c2, "redis-server.service") == "inactive" and not port_open(ip2, 6379),
          f"{c2}: redis-server stayed down across a reboot after stop_db(do_not_start_on_reboot)")
    # And back: restart starts it again (enabled again) and it rejoins its master.
    ctl.must_call(g2, "restart", {}, timeout=120)
    enabled = dexec(c2, "systemctl", "is-enabled", "redis-server.service", check=False).stdout.strip()
    check(enabled == "enabled", f"{c2}: restart enabled redis-server.service again ({enabled})")
    wait_for(f"{c2} rejoins {ip1} after stop_db and restart",
             lambda: (i := rinfo(ip2, "replication")) and i.get("master_host") == ip1 and i.get("master_link_status") == "up", 60)
    check(not w.missing_on(ip2), f"{c2} still holds every acknowledged write")

    # --- a reboot: systemd starts redis-server.service from the agent's redis.conf (still a
    # replica of the same master) and the agent; nothing is lost
    t0 = time.monotonic()
    run(["docker", "restart", "-t", "60", c2], timeout=120, check=True)
    ctl.wait_ping(g2, 90)
    wait_for(f"{c2} replicates {ip1} again after the reboot",
             lambda: (i := rinfo(ip2, "replication")) and i.get("master_host") == ip1 and i.get("master_link_status") == "up", 60)
    figures["reboot_relink_ms"] = int((time.monotonic() - t0) * 1000)
    check(not w.missing_on(ip2) and Redis(ip2).call("GET", "seed:499") == b"499",
          f"{c2} came back from a reboot as a replica of {ip1} with every write, in {figures['reboot_relink_ms']} ms")

    # --- kill -9 of the master's redis-server: systemd restarts it at once, but guarded (the unit's
    # ExecStartPre, etc/redis-server.service.d): a replica of nobody, so it takes no write and its
    # replica never resyncs from its snapshot; eject promotes the replica and re-attaches it
    pid = redis_pid(c1)
    dexec(c1, "kill", "-9", str(pid))
    wait_for(f"{c1}: systemd restarts the master's redis-server",
             lambda: (p := redis_pid(c1)) not in (0, pid) and unit_active(c1, "redis-server.service") == "active" and p, 30)
    i1 = wait_for(f"{c1}: the restarted master serves, guarded",
                  lambda: (i := rinfo(ip1, "replication")) and i.get("role") == "slave" and i, 30)
    check(i1.get("master_host") == "127.0.0.1" and str(i1.get("master_port")) == "1",
          f"{c1}: the master restarted by systemd is a replica of nobody (127.0.0.1:1): {i1.get('master_host')}:{i1.get('master_port')}")
    try:
        Redis(ip1).call("SET", "after-guard", "1")
        refused = ""
    except Exception as ex:  # noqa: BLE001 — the refusal text is the check
        refused = str(ex)
    check("READONLY" in refused, f"{c1}: the guarded master refuses writes ({refused or 'accepted'})")
    time.sleep(2)
    check(not w.missing_on(ip2), f"{c2} kept every acknowledged write (no resync from the restarted master's snapshot)")
    ctl.must("eject-replica-source", g1, timeout=180)
    wait_for(f"{c1} follows {ip2} after the eject",
             lambda: (i := rinfo(ip1, "replication")) and i.get("master_host") == ip2 and i.get("master_link_status") == "up", 60)
    check(rinfo(ip2, "replication")["role"] == "master" and not w.missing_on(ip1),
          f"after the eject {g2} is master and {g1}, re-attached, holds every acknowledged write")

    # --- the agent's own unit: SIGTERM from systemctl stop ends it cleanly
    dexec(c2, "systemctl", "stop", "trove-guestagent.service", timeout=90)
    result = unit_prop(c2, "trove-guestagent.service", "Result")
    status = unit_prop(c2, "trove-guestagent.service", "ExecMainStatus")
    check(result == "success" and status == "0", f"{c2}: systemctl stop trove-guestagent: Result={result} exit={status}")
    check(unit_active(c2, "redis-server.service") == "active", f"{c2}: stopping the agent leaves redis-server.service running")
    return figures


if __name__ == "__main__":
    try:
        figs = main()
    except Failed as ex:
        say(f"FAILED: {ex}")
        print("scenario=systemd result=fail")
        sys.exit(1)
    except Exception:  # noqa: BLE001 — any other error fails the scenario, loudly
        traceback.print_exc()
        print("scenario=systemd result=fail")
        sys.exit(1)
    print("scenario=systemd result=pass " + " ".join(f"{k}={v}" for k, v in figs.items()))
