#!/usr/bin/env python3
"""Promotes while a RabbitMQ cluster node dies under them (driven by scripts/cluster-tests.sh).

Three RabbitMQ nodes in one cluster; three guests whose agents list the nodes in the same order
(so all of them start on infra-rmq1) and use quorum queues; trove-guestctl on the host lists
infra-rmq2 first. Each phase runs a writer and a promote whose first call is held in flight (the
candidate's agent is frozen with SIGSTOP until the call is queued for it) while a node is killed:

  1. infra-rmq1, the agents' node: the promote goes on through the agents' failover;
  2. (infra-rmq1 restarted) infra-rmq2, the node of the agents and of the caller: the caller's
     reply queue dies with it, so the promote fails at once, and a retry completes.

Checked: the promote completes, or fails cleanly (exit 2, or 3 when its epoch claim found no quorum: nothing changed) and a retry completes; every
acknowledged write is on the new master; no RPC is handled twice (each msg_id once across the
agents' logs); each agent consumes again on a live node (within 60 s; the time is reported). Prints the writer's longest
pause, the agents' reconnect times and the promotes' timings.

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
from infra_common import (PREPARE_ARGS, Ctl, Failed, Writer, check, dexec, rinfo, run, say,  # noqa: E402
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


def queue_depth(name, via):
    """Messages in queue `name` (ready + unacknowledged), asked of node `via`."""
    p = dexec(via, "rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "messages", timeout=60, check=False)
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


def node_running(node):
    return run(["docker", "inspect", "-f", "{{.State.Running}}", node]).stdout.strip() == "true"


def running_nodes(via):
    p = dexec(via, "rabbitmqctl", "-q", "cluster_status", "--formatter", "json", timeout=60, check=False)
    try:
        return len(json.loads(p.stdout)["running_nodes"])
    except (ValueError, KeyError):
        return 0


class Cluster:
    def __init__(self):
        e = os.environ
        self.work, prefix, tag = e["TROVE_INFRA_WORKDIR"], e["TROVE_INFRA_PREFIX"], e["TROVE_RUN_TAG"]
        self.ips = {g: f"{prefix}.{11 + i}" for i, g in enumerate(GUESTS)}
        self.node_ip = {n: f"{prefix}.{2 + i}" for i, n in enumerate(NODES)}
        self.ids = {g: f"{g}-{tag}" for g in GUESTS}
        inventory = os.path.join(self.work, "inventory.toml")
        # The taskmanager lists the nodes from infra-rmq2: it stays up while infra-rmq1 dies.
        url = "rabbit://" + ",".join(f"trove:trove@{self.node_ip[n]}:5672" for n in (NODES[1], NODES[2], NODES[0])) + "/"
        write_inventory(inventory, url, list(self.ids.values()), extra="quorum_queues = true")
        self.ctl = Ctl(e["TROVE_INFRA_GUESTCTL"], inventory, self.work)
        self.figures = {}

    def promote_through_node_loss(self, phase, candidate, node, depth_via):
        """Promotes `candidate` under a writer, killing `node` while the promote's first call is in
        flight. Returns (attempts, report, killed_at, writer)."""
        ctl, ids, ips = self.ctl, self.ids, self.ips
        w = Writer(list(ips.values()), phase)
        w.start()
        masters = [g for g in GUESTS if (rinfo(ips[g], "replication") or {}).get("role") == "master"]
        wait_for("the writer has acknowledged 200 writes on the master", lambda: w.by_host[ips[masters[0]]] >= 200, 30)
        # The candidate's agent is frozen (SIGSTOP; its Redis keeps running) until the promote's
        # first call sits in its queue; then the node is killed and the agent thawed.
        agent_pid = dexec(candidate, "pidof", "trove-guestagent").stdout.strip()
        dexec(candidate, "sh", "-c", f"kill -STOP {agent_pid}")
        try:
            t_promote = time.time()
            err_path = os.path.join(self.work, f"{phase}-promote.err")
            promote = subprocess.Popen([ctl.binary, "--json", "promote-to-replica-source", ids[candidate]], stdout=subprocess.PIPE,
                                       stderr=open(err_path, "w"), text=True, env=ctl.env())
            # The flow's first call is its epoch claim (epoch_promise, which the candidate, a replica,
            # must answer); its pre-command probe (get_replication_status) is the other message the
            # frozen agent holds.
            wait_for("the promote's first call is held by the frozen candidate",
                     lambda: promote.poll() is not None
                     or queue_depth(f"guestagent.{ids[candidate]}", depth_via) >= 2,
                     60, interval=0.1)
            if promote.poll() is not None:
                raise Failed(f"the promote ended (exit {promote.returncode}) before the node loss: {open(err_path).read()[-800:]}")
            killed_at = time.time()  # just before: the agents may see the loss before docker kill returns
            run(["docker", "kill", node], check=True)
        finally:
            dexec(candidate, "sh", "-c", f"kill -CONT {agent_pid}")
        say(f"{node} killed {int((killed_at - t_promote) * 1000)} ms after the promote started, its first call in flight")
        check(not node_running(node), f"{node} is dead")
        try:
            out, _ = promote.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            promote.kill()
            raise Failed("the promote did not end within 240 s of the node loss")
        rc, ms = promote.returncode, int((time.time() - t_promote) * 1000)
        attempts = [(rc, ms)]
        if rc == 0:
            say(f"promote completed through the node loss in {ms} ms")
        else:
            say(f"promote failed (exit {rc}) after {ms} ms: {open(err_path).read().strip()[-600:]}")
            # 2: a guest call failed; 3: refused with nothing changed (its epoch claim found no quorum).
            check(rc in (2, 3), f"the failed promote ended with a clear failure (exit {rc}: 2 or 3), not a hang or a crash")
            # Re-run, as an operator would: each attempt must end cleanly (2: a call failed, 3:
            # refused, nothing changed), and one of at most three retries must complete.
            while rc != 0:
                if len(attempts) > 3:
                    raise Failed(f"the promote did not complete in {len(attempts)} attempts")
                rc, out, err2, ms2 = ctl("--json", "promote-to-replica-source", ids[candidate], timeout=240)
                attempts.append((rc, ms2))
                if rc != 0:
                    say(f"retry {len(attempts) - 1} ended (exit {rc}) after {ms2} ms: {err2.strip()[-400:]}")
                    check(rc in (2, 3), f"retry {len(attempts) - 1} ended cleanly (exit {rc})")
            say(f"retry {len(attempts) - 1} completed the promote in {ms2} ms")
        report = json.loads(out)
        say(f"promote report: {report}")

        new = ips[candidate]
        wait_for("the writer has acknowledged 200 writes on the new master", lambda: w.by_host[new] >= 200, 60)
        w.stop()
        say(w.summary())
        lost = w.missing_on(new)
        self.figures.update({f"{phase}_attempts": len(attempts), f"{phase}_ms": ",".join(str(a[1]) for a in attempts),
                             f"{phase}_writes_blocked_ms": report.get("writes_blocked_ms", -1), f"{phase}_acked": len(w.acked),
                             f"{phase}_lost": len(lost), f"{phase}_longest_pause_ms": int(w.longest * 1000)})
        check(not lost, f"every acknowledged write is on the new master ({len(lost)} lost of {len(w.acked)})")
        for g in GUESTS:
            if g != candidate:
                wait_for(f"{g} replicates the new master", lambda g=g: (i := rinfo(ips[g], "replication")) and i.get("role") == "slave"
                         and i.get("master_host") == new and i.get("master_link_status") == "up", 60)
        say(f"ok: {candidate} is master, the others replicate it")
        return attempts, report, killed_at

    def agents_moved(self, phase, killed_at, dead):
        for g in GUESTS:
            lost_at, back_at = reconnect_after(g, killed_at)
            b = broker_of(g, since=killed_at)
            check(lost_at is not None and back_at is not None and b and b[1] != f"{self.node_ip[dead]}:5672",
                  f"{g}: saw the loss {int(((lost_at or 0) - killed_at) * 1000)} ms after the kill, consuming again on "
                  f"{b and b[1]} {int(((back_at or 0) - (lost_at or 0)) * 1000)} ms later")
            self.figures[f"{phase}_reconnect_ms_{g[-3:]}"] = int((back_at - lost_at) * 1000)
            # Generous: the dead node is tried last, so this is one connect and declare, not a timeout.
            # A liveness bound, not a speed target: the time is RabbitMQ's (a quorum-queue leader
            # election can hold the declare for seconds) and is reported above.
            check(back_at - lost_at < 60, f"{g}: consuming again within 60 s of the loss")


def main():
    c = Cluster()
    ctl, ids, ips, node_ip = c.ctl, c.ids, c.ips, c.node_ip
    g1, g2, g3 = (ids[g] for g in GUESTS)
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

    # Phase 1: the agents' node (infra-rmq1) dies; the caller (on infra-rmq2) stays connected.
    say("phase 1: the node the agents use dies mid-promote")
    _, _, killed_at = c.promote_through_node_loss("agents_node", GUESTS[1], NODES[0], NODES[1])
    c.agents_moved("agents_node", killed_at, NODES[0])

    # Phase 2: infra-rmq1 comes back; now the node both the agents and the caller use
    # (infra-rmq2) dies mid-promote: the caller's reply queue goes with it, so the promote fails
    # at once and a retry (on infra-rmq3) completes.
    say("phase 2: infra-rmq1 back; the node the agents and the caller use dies mid-promote")
    run(["docker", "start", NODES[0]], check=True)
    wait_for("infra-rmq1 rejoins the cluster", lambda: running_nodes(NODES[1]) == 3, 120, interval=1)
    _, _, killed_at = c.promote_through_node_loss("callers_node", GUESTS[0], NODES[1], NODES[2])
    c.agents_moved("callers_node", killed_at, NODES[1])

    # No RPC was applied twice in either phase.
    total, dropped = Counter(), 0
    for g in GUESTS:
        done, d = handled_msg_ids(g)
        total.update(done)
        dropped += d
    twice = {m: n for m, n in total.items() if n > 1}
    c.figures["duplicates_dropped"] = dropped
    check(not twice, f"no RPC handled twice ({len(total)} requests in the agents' logs; {dropped} redelivered duplicates dropped)")
    out = ctl.must("--json", "show", timeout=60)
    roles = {r["id"]: r["role"] for r in json.loads(out)}
    check(roles == {g1: "master", g2: "replica", g3: "replica"}, f"show agrees: {roles}")
    return c.figures


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
