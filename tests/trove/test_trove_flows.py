"""Trove's own services drive guest containers through create, replicas, promote, eject, detach and delete (python-troveclient)."""
import contextlib
import io
import json
import os
import subprocess
import time

import pytest
from troveclient import exceptions as trove_exc

import redisnode
from report import Steps

FLAVOR = "6"  # trove_standins.FLAVORS
READY = {"ACTIVE", "HEALTHY"}
FAILED = {"ERROR", "FAILED", "SHUTDOWN"}
INITIAL_KEYS = 1000


def docker(*args, check=True):
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {p.stderr.strip()}")
    return p


class Guest:
    """The container the Nova stand-in booted for a Trove instance."""

    def __init__(self, stage, instance):
        ids = docker("ps", "-aq", "--filter", f"label=trovestage.run={stage.run}",
                     "--filter", f"label=trovestage.instance={instance.id}").stdout.split()
        assert len(ids) == 1, f"expected one container for instance {instance.name} ({instance.id}), found {len(ids)}"
        info = json.loads(docker("inspect", ids[0]).stdout)[0]
        self.name = instance.name
        self.instance_id = instance.id
        self.container = info["Name"].lstrip("/")
        self.server_id = info["Config"]["Labels"]["trovestage.server_id"]
        self.ip = info["NetworkSettings"]["Networks"][stage.run]["IPAddress"]
        self.env = info["Config"]["Env"] or []
        self.conf_dir = os.path.join(stage.work, "servers", self.server_id, "conf.d")


def by_id(trove):
    return {i.id: i for i in trove.instances.list()}


def field(inst, name, default):
    """An attribute as the API returned it. getattr() on a troveclient resource that lacks the
    attribute lazily runs `instance show`, and every show calls the guest (get_filesystem_stats)."""
    return inst._info.get(name, default)


def ref(x):
    return x["id"] if isinstance(x, dict) else None


def wait_for(trove, what, pred, timeout):
    """Polls `instance list` (it does not call the guests) until pred(instances by id) holds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = by_id(trove)
        if pred(last):
            return last
        if time.monotonic() > deadline:
            state = {i.name: (i.status, ref(field(i, "replica_of", None)),
                              [r["id"] for r in field(i, "replicas", [])]) for i in last.values()}
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; instances: {state}")
        time.sleep(1)


def ready(insts, ids):
    for i in ids:
        s = insts[i].status
        assert s not in FAILED, f"instance {insts[i].name} went {s}"
    return all(insts[i].status in READY for i in ids)


def role(ip):
    info = redisnode.info(ip, "replication")
    assert info is not None, f"Redis at {ip} does not answer"
    return info


def wait_linked(ip, master_ip, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        r = redisnode.info(ip, "replication") or {}
        if r.get("role") == "slave" and r.get("master_host") == master_ip and r.get("master_link_status") == "up":
            return r
        assert time.monotonic() < deadline, f"{ip} is not a linked replica of {master_ip}: {r}"
        time.sleep(0.5)


def wait_no_missing(ip, pairs, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        miss = redisnode.missing(ip, pairs)
        if not miss:
            return
        assert time.monotonic() < deadline, f"{len(miss)} of {len(pairs)} acknowledged writes missing on {ip}, e.g. {miss[:3]}"
        time.sleep(0.5)


def server_info(ip):
    info = redisnode.info(ip, "all")
    assert info is not None, f"Redis at {ip} does not answer"
    return info


def cli(stage, trove, *args, check=True, keep=True):
    """Runs `openstack database ...` (python-troveclient's OSC plugin) in this process; returns (status, output).

    The output is kept for the report (docs/trove.md shows it)."""
    from openstackclient import shell
    buf = io.StringIO()
    argv = ["--os-auth-type", "admin_token", "--os-endpoint", f"{stage.api}/v1.0/trovestage", "--os-token", "trovestage",
            "database", *args]
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = shell.main(argv)
    out = buf.getvalue()
    assert rc == 0 or not check, f"openstack database {' '.join(args)} failed (exit {rc}): {out[-500:]}"
    if keep:
        shown = " ".join(f"'{a}'" if " " in a else a for a in args)
        stage.cli_output.append((trove.pass_name, f"openstack database {shown}", out if rc == 0 else f"{out}(exit {rc})"))
    return rc, out


def show_list(stage, trove):
    if trove.via_cli:
        cli(stage, trove, "instance", "list", "-c", "ID", "-c", "Name", "-c", "Status", "-c", "Operating Status", "-c", "Role")


def test_replication_lifecycle(trove, stage):
    p = trove.pass_name
    steps = Steps(stage, p)
    names = {k: f"{p}-{k}" for k in ("master", "replica")}

    # 1. a master, with data
    with steps.step("1 create master") as n:
        if trove.via_cli:
            cli(stage, trove, "instance", "create", names["master"], "--flavor", FLAVOR, "--datastore", "redis",
                "--datastore-version", "7.0")
            m = next(i for i in trove.instances.list() if i.name == names["master"])
        else:
            m = trove.instances.create(names["master"], FLAVOR, datastore="redis", datastore_version="7.0")
        insts = wait_for(trove, "the master to become ready", lambda x: ready(x, [m.id]), 240)
        assert insts[m.id].status in READY
        gm = Guest(stage, m)
        steps.add_guest("master", gm.container)
        n["note"] = f"status {insts[m.id].status}"
    # Only Trove's files configure the guest: the container's environment is the image's own (which
    # may place Redis, as an image's baked defaults would), and carries no broker, guest id or key.
    image_env = json.loads(docker("image", "inspect", os.environ["TROVE_GUEST_IMAGE"]).stdout)[0]["Config"]["Env"] or []
    assert sorted(gm.env) == sorted(image_env), f"the Nova stand-in added environment: {set(gm.env) - set(image_env)}"
    leaked = [e.split("=")[0] for e in gm.env if e.startswith(("TROVE_GUESTAGENT__RPC__", "TROVE_GUESTAGENT__GUEST__"))]
    assert not leaked, f"the guest image sets broker or guest settings in its environment: {leaked}"
    assert sorted(os.listdir(gm.conf_dir)) == ["guest_info.conf", "trove-guestagent.conf"]
    with open(os.path.join(gm.conf_dir, "guest_info.conf")) as f:
        guest_info = f.read()
    assert f"guest_id={m.id}" in guest_info
    assert "replication_strategy=trove.guestagent.strategies.replication.experimental.redis_sync.RedisSyncReplication" in guest_info
    assert ("instance_rpc_encr_key=" in guest_info) == trove.secure, "secure RPC key presence does not match the pass"
    assert role(gm.ip)["role"] == "master"
    with redisnode.Redis(gm.ip) as r:
        for i in range(INITIAL_KEYS):
            r.call("SET", f"init:{i}", i)
    initial = [(f"init:{i}", i) for i in range(INITIAL_KEYS)]
    show_list(stage, trove)

    # 2. two replicas of it, in one request as Trove's CLI does with --replica-count
    with steps.step("2 create two replicas") as n:
        if trove.via_cli:  # no flavor, no datastore: a replica takes its source's
            cli(stage, trove, "instance", "create", names["replica"], "--replica-of", m.id, "--replica-count", "2")
        else:
            trove.instances.create(names["replica"], replica_of=m.id, replica_count=2)

        def replicas_ready(x):
            reps = [i for i in x.values() if ref(field(i, "replica_of", None)) == m.id]
            return len(reps) == 2 and ready(x, [i.id for i in reps] + [m.id])
        insts = wait_for(trove, "two replicas to become ready", replicas_ready, 240)
        reps = sorted((i for i in insts.values() if ref(field(i, "replica_of", None)) == m.id), key=lambda i: i.id)
        r1, r2 = reps
        g1, g2 = Guest(stage, r1), Guest(stage, r2)
        steps.add_guest("replica1", g1.container)
        steps.add_guest("replica2", g2.container)
    assert sorted(r["id"] for r in trove.instances.get(m.id).replicas) == sorted([r1.id, r2.id])
    for g in (g1, g2):
        wait_linked(g.ip, gm.ip)
        wait_no_missing(g.ip, initial)
    show_list(stage, trove)
    if trove.via_cli:
        cli(stage, trove, "instance", "show", m.id)

    # 3. promote replica1 while a writer follows the master
    before = {g.instance_id: server_info(g.ip) for g in (gm, g1, g2)}
    w = redisnode.Writer([gm.ip, g1.ip, g2.ip], f"{p}-promote")
    w.start()
    time.sleep(1.5)
    with steps.step("3 promote replica1 (writer running)") as n:
        if trove.via_cli:
            cli(stage, trove, "instance", "promote", r1.id)
        else:
            trove.instances.promote_to_replica_source(r1.id)

        def promoted(x):
            return (ref(field(x[m.id], "replica_of", None)) == r1.id and ref(field(x[r2.id], "replica_of", None)) == r1.id
                    and ready(x, [m.id, r1.id, r2.id]))
        wait_for(trove, "replica1 to be the replica source", promoted, 120)
    time.sleep(1.5)
    w.stop()
    print("   writer:", w.summary())
    assert len(w.acked) > 100, f"the writer made too few writes: {w.summary()}"
    assert any(h == g1.ip for _, h in w.acked), f"no write reached the new master: {w.summary()}"
    for g in (gm, g2):
        wait_linked(g.ip, g1.ip)
    pairs = initial + w.pairs()
    for g in (g1, gm, g2):
        wait_no_missing(g.ip, pairs)
    after = {g.instance_id: server_info(g.ip) for g in (gm, g1, g2)}
    for g in (gm, g1, g2):
        assert after[g.instance_id]["run_id"] == before[g.instance_id]["run_id"], f"redis-server of {g.container} restarted during the promote"
    b1, a1 = before[r1.id], after[r1.id]
    assert a1["sync_full"] == b1["sync_full"], f"the new master served a full resync: sync_full {b1['sync_full']} -> {a1['sync_full']}"
    assert a1["master_replid2"] == before[m.id]["master_replid"], "the new master did not continue the old replication history"
    steps.stage.report[-1] = steps.stage.report[-1][:4] + (
        f"writer {w.summary()}; lost 0; new master sync_full +0, sync_partial_ok "
        f"+{int(a1['sync_partial_ok']) - int(b1['sync_partial_ok'])}",)
    show_list(stage, trove)

    # 4. the new master's container dies; eject once Trove sees its heartbeat expired
    with steps.step("4 kill replica1's container, eject") as n:
        docker("kill", g1.container)
        killed = time.monotonic()
        refused = 0
        while True:
            if trove.via_cli:
                rc, out = cli(stage, trove, "instance", "eject", r1.id, check=False, keep=False)
                if rc == 0:
                    stage.cli_output.append((p, f"openstack database instance eject {r1.id}", out))
                    break
                assert "current heartbeat" in out, f"eject refused for another reason: {out[-500:]}"
                if not refused:
                    stage.cli_output.append((p, f"openstack database instance eject {r1.id}", f"{out}(exit {rc})"))
                refused += 1
            else:
                try:
                    trove.instances.eject_replica_source(r1.id)
                    break
                except trove_exc.BadRequest as e:
                    assert "current heartbeat" in str(e), f"eject refused for another reason: {e}"
                    refused += 1
            assert time.monotonic() - killed < 90, "Trove still refused the eject 90 s after the kill"
            time.sleep(1)
        accepted = time.monotonic() - killed

        def ejected(x):
            a, b = ref(field(x[m.id], "replica_of", None)), ref(field(x[r2.id], "replica_of", None))
            return {a, b} in ({None, r2.id}, {None, m.id}) and ready(x, [m.id, r2.id])
        insts = wait_for(trove, "a surviving replica to be the replica source", ejected, 120)
        n["note"] = f"eject refused {refused}x (current heartbeat), accepted {accepted:.1f} s after the kill"
    new_master, other = (m, r2) if field(insts[m.id], "replica_of", None) is None else (r2, m)
    gn, go = (gm, g2) if new_master is m else (g2, gm)
    assert role(gn.ip)["role"] == "master"
    wait_linked(go.ip, gn.ip)
    for g in (gn, go):
        wait_no_missing(g.ip, pairs)
    show_list(stage, trove)

    # 5. detach the last replica
    with steps.step("5 detach the last replica") as n:
        if trove.via_cli:
            cli(stage, trove, "instance", "detach", other.id)
        else:
            trove.instances.update(other.id, detach_replica_source=True)

        def detached(x):
            return field(x[other.id], "replica_of", None) is None and not field(x[new_master.id], "replicas", []) \
                and ready(x, [other.id, new_master.id])
        wait_for(trove, "the replica to be detached", detached, 120)
    assert role(go.ip)["role"] == "master"
    wait_no_missing(go.ip, pairs)
    with redisnode.Redis(go.ip) as r:
        assert r.call("SET", "after-detach", 1) == "OK"
    show_list(stage, trove)

    # 6. delete everything
    with steps.step("6 delete all three") as n:
        if trove.via_cli:
            cli(stage, trove, "instance", "delete", m.id, r1.id, r2.id)
        else:
            for i in (m, r1, r2):
                trove.instances.delete(i.id)
        wait_for(trove, "the instances to be deleted", lambda x: not ({m.id, r1.id, r2.id} & set(x)), 180)
        deadline = time.monotonic() + 60
        while docker("ps", "-aq", "--filter", f"label=trovestage.run={stage.run}",
                     "--filter", "label=trovestage.instance").stdout.strip():
            assert time.monotonic() < deadline, "guest containers are still there after the delete"
            time.sleep(1)
    for g in (gm, g1, g2):
        assert not docker("ps", "-aq", "--filter", f"name=^{g.container}$").stdout.strip(), f"{g.container} not removed"


@pytest.fixture(autouse=True)
def _fail_fast_on_missing_docker():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("the Docker engine is not reachable")
