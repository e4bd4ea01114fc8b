#!/usr/bin/env python3
"""A promote while the RabbitMQ node the agents use dies (driven by scripts/cluster-tests.sh).

Three RabbitMQ nodes in one cluster, three guests whose agents list the nodes in the same order
(so all of them are on infra-rmq1) and use quorum queues; trove-guestctl on the host lists
infra-rmq2 first. Under a writer, promote-to-replica-source starts, and as soon as the candidate's
agent has answered the promote's first call, infra-rmq1 is killed (docker kill). The promote
must complete, or fail cleanly and complete on a retry; no RPC may be applied twice (every
msg_id is handled once across the agents' logs); every acknowledged write must be on the new
master. Prints the writer's longest pause, the agents' reconnect times and the promote's timings.

Prints detail lines and one summary line `scenario=rmq_cluster result=pass|fail ...`.
Environment (set by the script): TROVE_INFRA_GUESTCTL, TROVE_INFRA_WORKDIR, TROVE_INFRA_PREFIX,
TROVE_RUN_TAG.
"""

import datetime
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from infra_common import (PREPARE_ARGS, Ctl, Failed, Redis, Writer, check, dexec, rinfo, run, say,  # noqa: E402
                          wait_for, write_inventory)

GUESTS = ("infra-cg1", "infra-cg2", "infra-cg3")
NODES = ("infra-rmq1", "infra-rmq2", "infra-rmq3")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def logs(container):
    """The container's log lines as (unix time, text), from docker's own timestamps."""
    p = run(["docker", "logs", "-t", container], timeout=60)
    out = []
    for line in (p.stdout + p.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        try:
            t = datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
        except ValueError:
            continue
        out.append((t, ANSI.sub("", text)))
    out.sort(key=lambda x: x[0])
    return out


def broker_of(container, since=0.0):
    """The broker address the agent connected to last (after `since`), from its log."""
    found = None
    for t, text in logs(container):
        if t >= since and "connected to RabbitMQ" in text:
            m = re.search(r"broker=(\S+)", text)
            found = (t, m.group(1) if m else "?")
    return found


def reconnect_after(container, since):
    """(time the agent saw its connection lost, time it consumed again) after `since`, from its log."""
    lost = None
    for t, text in logs(container):
        if t >= since and lost is None and "rpc connection lost" in text:
            lost = t
        if lost is not None and "consuming" in text and "queues=" in text:
            return lost, t
    return lost, None


def handled_msg_ids(container):
    """msg_id of every request the agent finished (done or failed), and duplicates it dropped."""
    done, dropped = Counter(), 0
    for _, text in logs(container):
        if "request done" in text or "request failed" in text:
            m = re.search(r'msg_id="?([0-9a-f]+)', text)
            if m:
                done[m.group(1)] += 1
        if "duplicate message dropped" in text:
            dropped += 1
    return done, dropped


def queue_depth(name):
    """Messages in queue `name` (ready + unacknowledged), asked of a node that stays up."""
    p = dexec(NODES[1], "rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "messages", timeout=60, check=False)
    for line in p.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] == name:
            return int(parts[1])
    return 0


def queues():
    """Queue name -> (type, members) from one of the surviving nodes."""
    for node in NODES[1:]:
        p = dexec(node, "rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "type", "members",
                  timeout=60, check=False)
        if p.returncode == 0:
            out = {}
            for line in p.stdout.splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    out[parts[0]] = (parts[1], parts[2])
            return out
    raise Failed("rabbitmqctl list_queues failed on every node")


def main():
    e = os.environ
    work, prefix, tag = e["TROVE_INFRA_WORKDIR"], e["TROVE_INFRA_PREFIX"], e["TROVE_RUN_TAG"]
    ips = {g: f"{prefix}.{11 + i}" for i, g in enumerate(GUESTS)}
    node_ip = {n: f"{prefix}.{2 + i}" for i, n in enumerate(NODES)}
    ids = {g: f"{g}-{tag}" for g in GUESTS}
    g1, g2, g3 = (ids[g] for g in GUESTS)
    inventory = os.path.join(work, "inventory.toml")
    # The taskmanager lists the nodes starting from infra-rmq2: it stays up while infra-rmq1 dies.
    url = "rabbit://" + ",".join(f"trove:trove@{node_ip[n]}:5672" for n in (NODES[1], NODES[2], NODES[0])) + "/"
    write_inventory(inventory, url, list(ids.values()), extra="quorum_queues = true")
    ctl = Ctl(e["TROVE_INFRA_GUESTCTL"], inventory, work)
    figures = {}

    for g in GUESTS:
        ctl.wait_ping(ids[g], 120)
        b = broker_of(g)
        check(b and b[1] == f"{node_ip[NODES[0]]}:5672", f"{g}: the agent is connected to infra-rmq1 ({b and b[1]})")
    qs = queues()
    for g in GUESTS:
        for q in (f"guestagent.{ids[g]}", f"guestagent.{ids[g]}.{ids[g]}"):
            typ, members = qs.get(q, ("missing", ""))
            check(typ == "quorum" and all(n in members for n in NODES), f"queue {q}: {typ}, members on all three nodes")

    for g in GUESTS:
        ctl.must_call(ids[g], "prepare", PREPARE_ARGS, timeout=120)
    ctl.must("create-replicas", "--replica-of", g1, g2, g3, timeout=180)
    for g in GUESTS[1:]:
        wait_for(f"{g} replicates infra-cg1", lambda g=g: (i := rinfo(ips[g], "replication")) and i.get("master_host") == ips[GUESTS[0]]
                 and i.get("master_link_status") == "up", 60)

    w = Writer(list(ips.values()), "cluster")
    w.start()
    wait_for("the writer has acknowledged 200 writes on the master", lambda: w.by_host[ips[GUESTS[0]]] >= 200, 30)
    # The promote's first call must be in flight when the node dies: the candidate's agent is
    # frozen (SIGSTOP; its Redis keeps running) until the call sits in its queue, then infra-rmq1
    # is killed and the agent thawed. Everything after that call runs through the failover.
    agent_pid = dexec(GUESTS[1], "pidof", "trove-guestagent").stdout.strip()
    dexec(GUESTS[1], "sh", "-c", f"kill -STOP {agent_pid}")
    try:
        t_promote = time.time()
        err_path = os.path.join(work, "promote-under-node-loss.err")
        promote = subprocess.Popen([ctl.binary, "--json", "promote-to-replica-source", g2], stdout=subprocess.PIPE,
                                   stderr=open(err_path, "w"), text=True, env=ctl.env())
        # The CLI logs "promoting" right before the flow's first call (get_replica_context); its
        # pre-command probe (get_replication_status, 1 s) is the other message held by the frozen agent.
        wait_for("the promote's first call is held by the frozen candidate",
                 lambda: promote.poll() is not None or ("promoting" in open(err_path).read() and queue_depth(f"guestagent.{g2}") >= 2),
                 60, interval=0.1)
        if promote.poll() is not None:
            raise Failed(f"the promote ended (exit {promote.returncode}) before the node loss: {open(err_path).read()[-800:]}")
        killed_at = time.time()  # just before: the agents may see the loss before docker kill returns
        run(["docker", "kill", NODES[0]], check=True)
    finally:
        dexec(GUESTS[1], "sh", "-c", f"kill -CONT {agent_pid}")
    say(f"infra-rmq1 killed {int((killed_at - t_promote) * 1000)} ms after the promote started, its first call in flight")
    state = run(["docker", "inspect", "-f", "{{.State.Running}}", NODES[0]]).stdout.strip()
    check(state == "false", f"infra-rmq1 is dead (running={state})")
    try:
        out, _ = promote.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        promote.kill()
        raise Failed("the promote did not end within 240 s of the node loss")
    err = open(err_path).read()
    rc, ms = promote.returncode, int((time.time() - t_promote) * 1000)
    attempts = [(rc, ms)]
    if rc == 0:
        say(f"promote completed through the node loss in {ms} ms: {out.strip()}")
        report = json.loads(out)
    else:
        say(f"promote failed (exit {rc}) after {ms} ms: {err.strip()[-800:]}")
        check(rc in (2, 3), "the failed promote ended with a clear failure (exit 2 or 3), not a hang or a crash")
        rc2, out2, err2, ms2 = ctl("--json", "promote-to-replica-source", g2, timeout=240)
        attempts.append((rc2, ms2))
        if rc2 != 0:
            raise Failed(f"the retried promote failed too (exit {rc2}): {err2.strip()[-800:]}")
        say(f"the retried promote completed in {ms2} ms: {out2.strip()}")
        report = json.loads(out2)
    figures["promote_attempts"] = len(attempts)
    figures["promote_ms"] = sum(a[1] for a in attempts)
    figures["writes_blocked_ms"] = report.get("writes_blocked_ms", -1)

    new = ips[GUESTS[1]]
    wait_for("the writer has acknowledged 200 writes on the new master", lambda: w.by_host[new] >= 200, 60)
    w.stop()
    say(w.summary())
    lost = w.missing_on(new)
    figures.update(acked=len(w.acked), lost=len(lost), longest_pause_ms=int(w.longest * 1000))
    check(not lost, f"every acknowledged write is on the new master ({len(lost)} lost)")
    for g in (GUESTS[0], GUESTS[2]):
        wait_for(f"{g} replicates the new master", lambda g=g: (i := rinfo(ips[g], "replication")) and i.get("role") == "slave"
                 and i.get("master_host") == new and i.get("master_link_status") == "up", 60)
    say(f"ok: infra-cg2 is master, infra-cg1 and infra-cg3 replicate it")
    r = Redis(new)
    r.call("SET", "after-promote", "1")
    r.close()

    # No RPC was applied twice; the agents moved to another node, and how long it took.
    total, dropped = Counter(), 0
    for g in GUESTS:
        done, d = handled_msg_ids(g)
        total.update(done)
        dropped += d
        lost_at, back_at = reconnect_after(g, killed_at)
        b = broker_of(g, since=killed_at)
        check(lost_at is not None and back_at is not None and b and b[1] != f"{node_ip[NODES[0]]}:5672",
              f"{g}: saw the loss {int(((lost_at or 0) - killed_at) * 1000)} ms after the kill, consuming again on "
              f"{b and b[1]} {int(((back_at or 0) - (lost_at or 0)) * 1000)} ms later")
        figures[f"reconnect_ms_{g[-3:]}"] = int((back_at - lost_at) * 1000)
        # Generous: the dead node is tried last, so this is one connect and declare, not a timeout.
        check(back_at - lost_at < 5, f"{g}: back within 5 s of the loss")
    twice = {m: n for m, n in total.items() if n > 1}
    figures["duplicates_dropped"] = dropped
    check(not twice, f"no RPC handled twice ({len(total)} requests in the agents' logs; {dropped} redelivered duplicates dropped)")
    # The CLI still works on the remaining two nodes.
    out = ctl.must("--json", "show", timeout=60)
    say(f"show: {out.strip()[:400]}")
    return figures


if __name__ == "__main__":
    try:
        figs = main()
    except Failed as ex:
        say(f"FAILED: {ex}")
        print("scenario=rmq_cluster result=fail")
        sys.exit(1)
    except Exception:  # noqa: BLE001 — any other error fails the scenario, loudly
        traceback.print_exc()
        print("scenario=rmq_cluster result=fail")
        sys.exit(1)
    print("scenario=rmq_cluster result=pass " + " ".join(f"{k}={v}" for k, v in figs.items()))
