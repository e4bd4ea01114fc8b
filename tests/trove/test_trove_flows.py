"""Trove's own services drive guest containers through create, replicas, promote, eject, detach and delete (python-troveclient)."""
import contextlib
import io
import json
import os
import ssl
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
DEVICE = "/dev/vdb"  # [redis] device_path (Trove's default)
MOUNT_POINT = "/var/lib/redis"  # [redis] mount_point
VOLUME_GB = 1


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
        self.devices = {d["PathInContainer"]: d["PathOnHost"] for d in info["HostConfig"].get("Devices") or []}
        self.conf_dir = os.path.join(stage.work, "servers", self.server_id, "conf.d")


def volume_records(stage):
    """The Cinder stand-in's volumes of this run: {volume id: record}."""
    d = os.path.join(stage.work, "volumes")
    out = {}
    for f in os.listdir(d) if os.path.isdir(d) else []:
        if f.endswith(".json") and not f.endswith(".snap.json"):  # a snapshot's record is not a volume
            with open(os.path.join(d, f)) as fh:
                rec = json.load(fh)
            out[rec["id"]] = rec
    return out


def check_volume(stage, g):
    """g's /var/lib/redis is a mount of its own volume (/dev/vdb, a loop device given to its server),
    and Redis writes its RDB there. Returns the host's loop device."""
    loop = g.devices.get(DEVICE)
    assert loop, f"{g.container} was given no {DEVICE} (devices: {g.devices})"
    recs = [r for r in volume_records(stage).values() if r["loop"] == loop]
    assert len(recs) == 1 and recs[0]["server_id"] == g.server_id, f"{loop} is not {g.container}'s volume: {recs}"
    mnt = docker("exec", g.container, "findmnt", "-rn", "-o", "SOURCE,FSTYPE", MOUNT_POINT).stdout.split()
    assert mnt == [DEVICE, "ext4"], f"{MOUNT_POINT} in {g.container} is not an ext4 mount of {DEVICE}: {mnt}"
    with redisnode.Redis(g.ip) as r:
        rdb_dir = r.call("CONFIG", "GET", "dir")[1].decode()
        rdb = r.call("CONFIG", "GET", "dbfilename")[1].decode()
        assert r.call("SAVE") == "OK"
    src = docker("exec", g.container, "findmnt", "-rn", "-o", "SOURCE", "-T", f"{rdb_dir}/{rdb}").stdout.strip()
    assert src == DEVICE, f"{g.container}'s RDB {rdb_dir}/{rdb} is on {src!r}, not on the volume"
    return loop


def check_volume_mounted(g):
    mnt = docker("exec", g.container, "findmnt", "-rn", "-o", "SOURCE,FSTYPE", MOUNT_POINT).stdout.split()
    assert mnt == [DEVICE, "ext4"], f"{MOUNT_POINT} in {g.container} is not an ext4 mount of {DEVICE}: {mnt}"


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


def create_replica(stage, trove, steps, m, gm, name, label, keep=True):
    """`instance create --replica-of m`; waits until Trove shows it ready and its Redis is linked to
    gm. Returns Trove's instance and its Guest."""
    cli(stage, trove, "instance", "create", name, "--replica-of", m.id, keep=keep)
    x = wait_for(trove, "the replica to become ready",
                 lambda x: any(ref(field(i, "replica_of", None)) == m.id and ready(x, [i.id]) for i in x.values()), 240)
    r = next(i for i in x.values() if ref(field(i, "replica_of", None)) == m.id)
    gr = Guest(stage, r)
    steps.add_guest(label, gr.container)
    wait_linked(gr.ip, gm.ip)
    return r, gr


def cli(stage, trove, *args, check=True, keep=True):
    """Runs `openstack database ...` (python-troveclient's OSC plugin) in this process; returns (status, output).

    The output is kept for the report (docs/trove.md shows it)."""
    from openstackclient import shell
    buf = io.StringIO()
    argv = ["--os-auth-type", "admin_token", "--os-endpoint", f"{stage.api}/v1.0/trovestage", "database", *args]
    # the token from the environment (OS_TOKEN), not argv: osc logs its argv unmasked
    os.environ["OS_TOKEN"] = stage.token
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = shell.main(argv)
    finally:
        del os.environ["OS_TOKEN"]
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
            cli(stage, trove, "instance", "create", names["master"], "--flavor", FLAVOR, "--size", str(VOLUME_GB),
                "--datastore", "redis", "--datastore-version", "7.0")
            m = next(i for i in trove.instances.list() if i.name == names["master"])
        else:
            m = trove.instances.create(names["master"], FLAVOR, volume={"size": VOLUME_GB}, datastore="redis",
                                       datastore_version="7.0")
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
    check_volume(stage, gm)
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
    loops = {check_volume(stage, g) for g in (gm, g1, g2)}
    assert len(loops) == 3, f"the replicas did not get volumes of their own: {loops}"
    assert all(field(insts[i], "volume", {}).get("size") == VOLUME_GB for i in (m.id, r1.id, r2.id))
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
        while not all(gone(g) for g in (gm, g1, g2)):
            assert time.monotonic() < deadline, "guest containers are still there after the delete"
            time.sleep(1)
    assert_volumes_gone(stage, loops)


def gone(g):
    """Whether g's container is gone."""
    return not docker("ps", "-aq", "--filter", f"name=^{g.container}$").stdout.strip()


def assert_volumes_gone(stage, loops):
    """The deleted instances' volumes are gone: no record and their loop devices detached."""
    left = [r for r in volume_records(stage).values() if r["loop"] in loops]
    assert not left, f"volumes left after the delete: {left}"
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    held = [l for l in attached.splitlines() if os.path.join(stage.work, "volumes") in l and l.split(":")[0] in loops]
    assert not held, f"loop devices still attached to this run's volume files: {held}"


@pytest.fixture(autouse=True)
def _fail_fast_on_missing_docker():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("the Docker engine is not reachable")


BACKUP_KEYS = 2000


def wait_backup(trove, backup_id, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        b = trove.backups.get(backup_id)
        if b.status == "COMPLETED":
            return b
        assert b.status not in ("FAILED", "DELETE_FAILED", "ERROR"), f"backup {b.name} went {b.status}"
        assert time.monotonic() < deadline, f"backup {b.name} still {b.status} after {timeout} s"
        time.sleep(1)


def swift_request(stage, url, method="GET"):
    """(status, headers, body) of a request to the stage's Swift with the tests' token."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, method=method, headers={"X-Auth-Token": stage.token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, b""


def check_backup_object(stage, b, instance_id):
    """Trove's record of backup b matches the object in Swift: location, checksum (ETag), size, an RDB inside."""
    import gzip
    assert b.instance_id == instance_id
    location = b._info["locationRef"]
    assert location == f"{stage.swift_url}/database_backups/{b.id}.gz", f"unexpected location {location}"
    # the API does not show the checksum: Trove's database has it
    [[checksum, db_location, db_state]] = stage.sql(f"select checksum, location, state from backups where id = '{b.id}'")
    assert (db_location, db_state) == (location, "COMPLETED")
    status, headers, body = swift_request(stage, location)
    assert status == 200, f"GET {location}: HTTP {status}"
    assert headers["etag"].strip('"') == checksum, f"Swift's ETag {headers['etag']} is not Trove's checksum {checksum}"
    assert headers.get("x-object-meta-datastore") == "redis", f"object metadata: {headers}"
    gb = len(body) / 1024 ** 3  # the agent reports the stored object's size, in GB
    assert b.size == pytest.approx(gb, rel=1e-4), f"Trove's size {b.size} is not the object's {len(body)} bytes ({gb} GB)"
    rdb = gzip.decompress(body)
    assert rdb.startswith(b"REDIS"), f"the object is not a gzipped RDB: {rdb[:16]!r}"
    return len(body), len(rdb)


def wait_backup_gone(stage, trove, b, timeout):
    """Waits until backup b is gone from Trove's list and its object from Swift."""
    deadline = time.monotonic() + timeout
    while any(x.id == b.id for x in trove.backups.list()) or swift_request(stage, b._info["locationRef"], "HEAD")[0] != 404:
        assert time.monotonic() < deadline, f"backup {b.name} or its object in Swift is still there after {timeout} s"
        time.sleep(1)


def guestctl(stage, inventory, guest, method, args=None):
    """`trove-guestctl call` on the host, the arguments on stdin (they may hold a password)."""
    p = subprocess.run([stage.guestctl, "--inventory", inventory, "call", guest, method, "-"], input=json.dumps(args or {}),
                       capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, f"trove-guestctl call {guest} {method} failed: {p.stderr.strip()[-500:]}"
    return json.loads(p.stdout) if p.stdout.strip() else None


@pytest.mark.parametrize("trove", [False], indirect=True, ids=["plain_rpc"])
def test_volumes_backups_restore_root(trove, stage):
    """With volumes: backups of a master and a replica to Swift, a restore with a replica of it, root, a volume resize."""
    p = trove.pass_name
    steps = Steps(stage, p)
    name = {k: f"{p}-bk-{k}" for k in ("master", "replica", "restored", "restored-replica")}

    # 7. a master with data, and a replica
    with steps.step("7 create master and a replica (volumes)") as n:
        cli(stage, trove, "instance", "create", name["master"], "--flavor", FLAVOR, "--size", str(VOLUME_GB),
            "--datastore", "redis", "--datastore-version", "7.0")
        m = next(i for i in trove.instances.list() if i.name == name["master"])
        wait_for(trove, "the master to become ready", lambda x: ready(x, [m.id]), 240)
        gm = Guest(stage, m)
        steps.add_guest("bk-master", gm.container)
        with redisnode.Redis(gm.ip) as r:
            for i in range(0, BACKUP_KEYS, 500):
                r.call("MSET", *[x for j in range(i, i + 500) for x in (f"bk:{j}", f"{j}:" + "v" * 200)])
        data = [(f"bk:{j}", f"{j}:" + "v" * 200) for j in range(BACKUP_KEYS)]
        r, gr = create_replica(stage, trove, steps, m, gm, name["replica"], "bk-replica")
        wait_no_missing(gr.ip, data)
        assert check_volume(stage, gm) != check_volume(stage, gr)

    # 8. backups of the master and of the replica, in Swift as Trove recorded them
    with steps.step("8 backup master, backup replica") as n:
        cli(stage, trove, "backup", "create", f"{p}-backup-master", "--instance", m.id)
        bm = next(b for b in trove.backups.list() if b.name == f"{p}-backup-master")
        bm = wait_backup(trove, bm.id)
        t_master = time.monotonic()
        cli(stage, trove, "backup", "create", f"{p}-backup-replica", "--instance", r.id)
        br = next(b for b in trove.backups.list() if b.name == f"{p}-backup-replica")
        br = wait_backup(trove, br.id)
        sizes = check_backup_object(stage, bm, m.id), check_backup_object(stage, br, r.id)
        cli(stage, trove, "backup", "show", bm.id)
        n["note"] = (f"objects {sizes[0][0]} and {sizes[1][0]} bytes (RDB {sizes[0][1]}, {sizes[1][1]}); "
                     f"replica's backup {time.monotonic() - t_master:.1f} s")
    with redisnode.Redis(gm.ip) as rc:
        assert rc.call("SET", "after-backup", 1) == "OK"

    # 9. a new instance from the master's backup, then a replica of it
    with steps.step("9 restore the backup, a replica of it") as n:
        cli(stage, trove, "instance", "create", name["restored"], "--flavor", FLAVOR, "--size", str(VOLUME_GB),
            "--datastore", "redis", "--datastore-version", "7.0", "--backup", bm.id)
        s_ = next(i for i in trove.instances.list() if i.name == name["restored"])
        wait_for(trove, "the restored instance to become ready", lambda x: ready(x, [s_.id]), 240)
        gs = Guest(stage, s_)
        steps.add_guest("restored", gs.container)
        # the replica's backup is deleted (its object goes from Swift) before the replica create below:
        # that create makes Trove 26 delete the tenant's full backups (see after it)
        cli(stage, trove, "backup", "delete", br.id)
        wait_backup_gone(stage, trove, br, 60)
        cli(stage, trove, "instance", "create", name["restored-replica"], "--replica-of", s_.id)
        x = wait_for(trove, "the restored instance's replica to become ready",
                     lambda x: any(ref(field(i, "replica_of", None)) == s_.id and ready(x, [i.id]) for i in x.values()), 240)
        sr = next(i for i in x.values() if ref(field(i, "replica_of", None)) == s_.id)
        gsr = Guest(stage, sr)
        steps.add_guest("restored-replica", gsr.container)
        # Trove 26's defect: after a replica create the taskmanager calls Backup.delete(context, None)
        # (no replication backup for Redis), whose "delete the children" step selects every backup
        # with parent_id NULL and deletes them: the master's backup is gone, from Trove and Swift.
        wait_backup_gone(stage, trove, bm, 60)
        n["note"] = "Trove deleted the master's backup after the replica create (section 5)"
    assert role(gs.ip)["role"] == "master"
    wait_linked(gsr.ip, gs.ip)
    for g in (gs, gsr):
        wait_no_missing(g.ip, data)
        with redisnode.Redis(g.ip) as rc:
            assert rc.call("EXISTS", "after-backup") == 0, f"{g.container} holds a key written after the backup"
            assert rc.call("DBSIZE") == BACKUP_KEYS, f"{g.container} holds other keys than the backup's"
    assert len({check_volume(stage, g) for g in (gm, gr, gs, gsr)}) == 4
    cli(stage, trove, "instance", "list", "-c", "ID", "-c", "Name", "-c", "Status", "-c", "Role", "-c", "Size")

    # 10. root: Trove's API refuses it for redis; the guest's calls work (trove-guestctl), master then replica
    with steps.step("10 root: API 422, trove-guestctl") as n:
        for args in (("root", "enable", s_.id), ("root", "show", s_.id)):
            rc_, out = cli(stage, trove, *args, check=False)
            assert rc_ != 0 and "Operation not supported for datastore redis." in out and "HTTP 422" in out, \
                f"openstack database {' '.join(args)}: expected Trove's HTTP 422 refusal, got (exit {rc_}): {out[-500:]}"
        inv = os.path.join(stage.work, "root-inventory.toml")
        fd = os.open(inv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'transport_url = "{stage.transport}"\ncontrol_exchange = "trove"\n'
                    f'[[guest]]\nid = "{s_.id}"\n[[guest]]\nid = "{sr.id}"\nreplica_of = "{s_.id}"\n')
        assert guestctl(stage, inv, s_.id, "is_root_enabled") is False
        user = guestctl(stage, inv, s_.id, "enable_root")
        pw = user["_password"]
        assert user["_name"] == "-" and len(pw) == 36
        assert guestctl(stage, inv, sr.id, "enable_root_with_password", {"root_password": pw})["_password"] == pw
        assert guestctl(stage, inv, s_.id, "is_root_enabled") is True
        assert guestctl(stage, inv, sr.id, "get_root_password") == pw
        with redisnode.Redis(gs.ip) as rc:
            try:
                rc.call("GET", "bk:0")
                raise AssertionError("the master still serves clients without the root password")
            except redisnode.ReplyError as e:
                assert "NOAUTH" in str(e), e
        with redisnode.Resp(gs.ip, 6379, pw, 2.0) as rc:
            assert rc.call("SET", "with-root", 1) == "OK"
        with redisnode.Resp(gsr.ip, 6379, pw, 2.0) as rc:
            deadline = time.monotonic() + 30
            while rc.call("GET", "with-root") != b"1":
                assert time.monotonic() < deadline, "the replica did not follow its master after root was enabled on both"
                time.sleep(0.2)
            assert rc.info("replication")["master_link_status"] == "up"

    # 11. volume resize, offline (online_volume_resize = False): stop_db, unmount, detach, Cinder extends the
    # loop device, attach, resize_fs (e2fsck + resize2fs), mount, restart
    with steps.step("11 resize the restored instance's volume to 2 GB (offline)") as n:
        before = int(docker("exec", gs.container, "findmnt", "-bno", "SIZE", MOUNT_POINT).stdout.strip())
        cli(stage, trove, "instance", "resize", "volume", s_.id, "2")
        wait_for(trove, "the volume resize", lambda x: field(x[s_.id], "volume", {}).get("size") == 2 and ready(x, [s_.id]), 180)
        deadline = time.monotonic() + 60
        while True:
            after = int(docker("exec", gs.container, "findmnt", "-bno", "SIZE", MOUNT_POINT).stdout.strip())
            if after > 1.8 * 1024 ** 3:
                break
            assert time.monotonic() < deadline, f"the file system did not grow: {before} -> {after} bytes"
            time.sleep(1)
        n["note"] = f"file system {before >> 20} -> {after >> 20} MiB"
    check_volume_mounted(gs)
    # the data survived the restart on the grown volume, and the replica (root enabled too) re-linked
    with redisnode.Resp(gs.ip, 6379, pw, 2.0) as rc:
        assert rc.call("DBSIZE") == BACKUP_KEYS + 1
    deadline = time.monotonic() + 60
    with redisnode.Resp(gsr.ip, 6379, pw, 2.0) as rc:
        while rc.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the restored instance's replica did not re-link after the resize"
            time.sleep(0.5)

    # 12. delete: the instances (their volumes go)
    with steps.step("12 delete all four") as n:
        ids = {m.id, r.id, s_.id, sr.id}
        cli(stage, trove, "instance", "delete", r.id, sr.id)  # Trove refuses a replica source with replicas
        wait_for(trove, "the replicas to be deleted", lambda x: not ({r.id, sr.id} & set(x)), 180)
        cli(stage, trove, "instance", "delete", m.id, s_.id)
        wait_for(trove, "the instances to be deleted", lambda x: not (ids & set(x)), 180)
        deadline = time.monotonic() + 60
        while not all(gone(g) for g in (gm, gr, gs, gsr)):
            assert time.monotonic() < deadline, "guest containers are still there after the delete"
            time.sleep(1)
    assert_volumes_gone(stage, {g.devices[DEVICE] for g in (gm, gr, gs, gsr)})


def swift_objects(stage, container, prefix):
    """The names of the objects under prefix in one of the tenant's Swift containers."""
    status, _, body = swift_request(stage, f"{stage.swift_url}/{container}?format=json&prefix={prefix}")
    assert status in (200, 204), f"listing {container}/{prefix}: HTTP {status}"
    return [o["name"] for o in json.loads(body or b"[]")]


def make_p12(ips):
    """(CA PEM, PKCS#12 bytes of a key and a certificate for ips signed by that CA, and a client's
    (certificate PEM, key PEM) signed by the same CA, for mtls)."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trove stage CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))

    def signed(cn, key, sans=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(i)) for i in sans]),
                                critical=False)
        return b.sign(ca_key, hashes.SHA256())

    key = ec.generate_private_key(ec.SECP256R1())
    cert = signed("redis", key, ips)
    p12 = pkcs12.serialize_key_and_certificates(b"redis", key, cert, [ca], serialization.NoEncryption())
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (signed("stage client", client_key).public_bytes(serialization.Encoding.PEM).decode(),
              client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode())
    return ca.public_bytes(serialization.Encoding.PEM).decode(), p12, client


def tls_call(ip, ca_pem, line, port=6380, client=None):
    """One inline command over TLS, the server's certificate checked against ca_pem and ip, with
    client = (certificate PEM, key PEM) presented when given; the reply's bytes (a bulk reply's
    payload)."""
    import socket
    import tempfile
    ctx = ssl.create_default_context(cadata=ca_pem)
    if client:
        with tempfile.TemporaryDirectory() as d:
            for fname, text in zip(("cert.pem", "key.pem"), client):
                with open(os.path.join(d, fname), "w") as f:
                    f.write(text)
            ctx.load_cert_chain(os.path.join(d, "cert.pem"), os.path.join(d, "key.pem"))
    with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=ip) as s_:
        s_.sendall(line.encode() + b"\r\n")
        data = s_.recv(65536)
        if not data.startswith(b"$"):
            return data
        head, _, rest = data.partition(b"\r\n")
        need = int(head[1:]) + 2
        while len(rest) < need:
            chunk = s_.recv(65536)
            assert chunk, f"{ip}: the TLS connection closed inside a reply to {line!r}"
            rest += chunk
        return rest[:need - 2]


def tls_read_only(ip, ca_pem, port=6380):
    """A TLS handshake without a client certificate, then a read with nothing sent: TLS 1.3 checks the
    client's certificate after the client's handshake ends, so the server's refusal arrives as an
    alert on that read. (Sending first races the server's close: a reset can drop the alert.)"""
    import socket
    ctx = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=ip) as s_:
        return s_.recv(1)


def tls_ping(ip, ca_pem, port=6380, client=None):
    return tls_call(ip, ca_pem, "PING", port, client)


def wait_linked_tls(ip, master_ip, ca_pem, timeout=30, client=None):
    """As wait_linked, reading the replica's INFO over TLS (its plaintext port is closed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = tls_call(ip, ca_pem, "INFO replication", client=client).decode()
        except OSError as e:
            text = str(e)
        r = dict(x.split(":", 1) for x in text.splitlines() if ":" in x)
        if r.get("role") == "slave" and r.get("master_host") == master_ip and r.get("master_link_status") == "up":
            return r
        assert time.monotonic() < deadline, f"{ip} is not a linked replica of {master_ip} (over TLS): {text[:300]}"
        time.sleep(0.5)


def tls_open(ip, port=6380):
    import socket
    try:
        with socket.create_connection((ip, port), timeout=2):
            return True
    except OSError:
        return False


def plaintext_closed(guests, mode):
    """Waits until no guest answers on its plaintext port (a TLS-only mode)."""
    deadline = time.monotonic() + 30
    while any(redisnode.info(g.ip, "server") is not None for g in guests):
        assert time.monotonic() < deadline, f"a plaintext port still answers in {mode} mode"
        time.sleep(0.5)


def back_to_plaintext(gm, gr, after):
    """Waits until both guests serve plaintext only again and the replica's link is back on the
    master's plaintext port."""
    deadline = time.monotonic() + 30
    while any(tls_open(g.ip) for g in (gm, gr)) or any(redisnode.info(g.ip, "server") is None for g in (gm, gr)):
        assert time.monotonic() < deadline, f"after {after} the TLS port is still open or the plaintext port still closed"
        time.sleep(0.5)
    back = wait_linked(gr.ip, gm.ip)
    assert back.get("master_port") == "6379", f"the replica's link did not move back to the plaintext port: {back}"


def wait_task_done(trove, inst_id, pred, what, timeout):
    """Waits until the instance is ready again and pred(instance) holds, failing on an error status."""
    return wait_for(trove, what, lambda x: ready(x, [inst_id]) and pred(x[inst_id]), timeout)


@pytest.mark.parametrize("trove", [False], indirect=True, ids=["plain_rpc"])
def test_logs_diagnostics_upgrade(trove, stage, barbican):
    """Guest logs published to Swift, diagnostics and hwinfo (Trove's management API, as admin), and a
    datastore-version upgrade (Redis 7.0 to Valkey 9.1) of a master and its replica, replica first."""
    p = trove.pass_name
    steps = Steps(stage, p)
    name = {k: f"{p}-up-{k}" for k in ("master", "replica")}

    # 13. a master with data, and a replica
    with steps.step("13 create master and a replica (7.0)") as n:
        cli(stage, trove, "instance", "create", name["master"], "--flavor", FLAVOR, "--size", str(VOLUME_GB),
            "--datastore", "redis", "--datastore-version", "7.0", keep=False)
        m = next(i for i in trove.instances.list() if i.name == name["master"])
        wait_for(trove, "the master to become ready", lambda x: ready(x, [m.id]), 240)
        gm = Guest(stage, m)
        steps.add_guest("up-master", gm.container)
        with redisnode.Redis(gm.ip) as r:
            r.call("MSET", *[x for j in range(INITIAL_KEYS) for x in (f"up:{j}", j)])
        data = [(f"up:{j}", j) for j in range(INITIAL_KEYS)]
        r, gr = create_replica(stage, trove, steps, m, gm, name["replica"], "up-replica", keep=False)
        wait_no_missing(gr.ip, data)

    # 14. guest logs: the Redis log (USER log `general`) is off; enabling it needs a restart; publish
    # puts its lines into the tenant's Swift (container database_logs), where `log show` points
    with steps.step("14 guest logs: enable, restart, publish to Swift") as n:
        _, out = cli(stage, trove, "log", "list", m.id)
        logs = {lg.name: lg for lg in trove.instances.log_list(m.id)}
        assert "general" in logs and logs["general"].type == "USER" and logs["general"].status == "Disabled", \
            f"log list: {[lg._info for lg in logs.values()]}"
        _, out = cli(stage, trove, "log", "set", m.id, "general", "--enable")
        assert "Restart Required" in out, f"log set --enable: {out}"
        run_id = server_info(gm.ip)["run_id"]
        cli(stage, trove, "instance", "restart", m.id)
        wait_for(trove, "the restart", lambda x: ready(x, [m.id]) and x[m.id].status != "REBOOT", 120)
        deadline = time.monotonic() + 60
        while (redisnode.info(gm.ip, "server") or {}).get("run_id", run_id) == run_id:
            assert time.monotonic() < deadline, "redis-server did not restart after `instance restart`"
            time.sleep(0.5)
        _, out = cli(stage, trove, "log", "set", m.id, "general", "--publish")
        _, out = cli(stage, trove, "log", "show", m.id, "general")
        lg = next(lg for lg in trove.instances.log_list(m.id) if lg.name == "general")
        # Partial: Redis logged more lines (its replica re-linking) after the publish
        assert lg.status in ("Published", "Partial") and lg.published > 0, f"after publish: {lg._info}"
        assert lg.container == "database_logs" and lg.prefix == f"{m.id}/redis-general/", lg._info
        objs = swift_objects(stage, lg.container, lg.prefix)
        assert objs, f"no log objects under {lg.container}/{lg.prefix}"
        text = b"".join(swift_request(stage, f"{stage.swift_url}/{lg.container}/{o}")[2] for o in objs)
        assert len(text) == lg.published, f"Swift holds {len(text)} bytes, Trove shows {lg.published} published"
        assert b"Ready to accept connections" in text, f"the published log has no Redis start-up lines: {text[-300:]!r}"
        status, _, meta = swift_request(stage, f"{stage.swift_url}/{lg.container}/{lg.metafile}")
        assert status == 200 and json.loads(meta)["log_size"] == lg.published, f"metafile {lg.metafile}: HTTP {status} {meta[:200]!r}"
        wait_linked(gr.ip, gm.ip, 60)
        n["note"] = f"{len(objs)} object(s), {lg.published} bytes of the Redis log in Swift"

    # 14b. log tail and save as troveclient does them (`openstack database log tail` / `log save`):
    # the client reads the published objects from Swift itself, newest first, counting lines by
    # each object's X-Object-Meta-Lines. The stage has no Keystone catalog for troveclient to find
    # Swift in, so it is handed a swiftclient connection to the stage's Swift and the tests' token.
    with steps.step("14b log tail and save (troveclient, from Swift)") as n:
        import swiftclient
        conn = swiftclient.Connection(preauthurl=stage.swift_url, preauthtoken=stage.token, retries=0)
        _, listing = conn.get_container(lg.container, prefix=lg.prefix)
        parts = sorted(listing, key=lambda o: o["last_modified"])
        full = b"".join(conn.get_object(lg.container, o["name"])[1] for o in parts).decode()
        assert full and len(full.encode()) == lg.published, f"Swift holds {len(full)} bytes, Trove shows {lg.published}"
        for o in parts:
            lines = int(conn.head_object(lg.container, o["name"])["x-object-meta-lines"])
            assert lines == len(conn.get_object(lg.container, o["name"])[1].decode().splitlines()), o["name"]
        tail = "".join(trove.instances.log_generator(m.id, "general", lines=5, swift=conn)())
        assert tail == "\n".join(full.splitlines()[-5:]) + "\n", f"log tail --lines 5: {tail!r}"
        saved_path = os.path.join(stage.work, f"{p}-general.log")
        trove.instances._get_swift_client = lambda: conn
        try:
            assert trove.instances.log_save(m.id, "general", filename=saved_path) == saved_path
        finally:
            del trove.instances._get_swift_client
        with open(saved_path) as f:
            saved = f.read()
        assert saved == full, f"log save wrote {len(saved)} characters, Swift holds {len(full)}"
        stage.cli_output.append((p, f"troveclient log_generator({m.id}, 'general', lines=5)", tail))
        n["note"] = f"tail: the last 5 of {len(full.splitlines())} published lines; save: all {len(saved)} bytes, as in Swift"

    # 15. diagnostics and hwinfo: Trove serves them on its management API, to admins only
    with steps.step("15 diagnostics and hwinfo (management API)") as n:
        # troveclient has the managers (troveclient.v1.diagnostics) but its Client does not wire them
        from troveclient.v1.diagnostics import DiagnosticsInterrogator, HwInfoInterrogator
        for call in (DiagnosticsInterrogator(trove).get, HwInfoInterrogator(trove).get):
            # Trove maps its exception.Forbidden to HTTP 401, not 403 (section 5)
            with pytest.raises(trove_exc.Unauthorized) as e:
                call(m.id)
            assert "User does not have admin privileges. (HTTP 401)" in str(e.value), str(e.value)
        admin = stage.admin_client()
        d = DiagnosticsInterrogator(admin).get(m.id)._info
        h = HwInfoInterrogator(admin).get(m.id)._info
        stage.cli_output.append((p, f"troveclient diagnostics.get({m.id}) as admin", json.dumps(d, indent=1) + "\n"))
        stage.cli_output.append((p, f"troveclient hwinfo.get({m.id}) as admin", json.dumps(h, indent=1) + "\n"))
        assert d["version"] and all(d[k] > 0 for k in ("fdSize", "vmSize", "vmPeak", "vmRss", "threads")), d
        hw = h.get("hwinfo", h)
        nproc = int(docker("exec", gm.container, "nproc").stdout.strip())
        mem_kb = int(next(l.split()[1] for l in docker("exec", gm.container, "cat", "/proc/meminfo").stdout.splitlines()
                          if l.startswith("MemTotal:")))
        limit = docker("exec", gm.container, "cat", "/sys/fs/cgroup/memory.max", check=False).stdout.strip()
        if limit.isdigit():  # a container's memory limit (cgroup v2) bounds what the guest has
            mem_kb = min(mem_kb, int(limit) // 1024)
        assert hw["num_cpus"] == nproc and hw["mem_total"] == mem_kb, f"hwinfo {hw}, the container: {nproc} CPUs, {mem_kb} kB"
        n["note"] = f"agent {d['version']}, VmRSS {d['vmRss']} kB; {hw['num_cpus']} CPUs, {hw['mem_total']} kB"

    # 15b. client TLS (API 1.3): a PKCS#12 container in Barbican; Trove's API reads it and calls
    # ssl_action on the master, then its replica; basic mode keeps the plaintext port
    with steps.step("15b ssl enable (basic), show, disable") as n:
        ca_pem, p12, client_pem = make_p12([gm.ip, gr.ip])
        ref_ = barbican.store(p12)
        _, out = cli(stage, trove, "ssl", "show", m.id)
        assert "builtin" in out and "off" in out, f"ssl show before enable: {out}"
        _, out = cli(stage, trove, "ssl", "enable", m.id, ref_, "--mode", "basic")
        sid = ref_.rsplit("/", 1)[1]
        assert {"service": "database", "resource_type": "instance", "resource_id": m.id} in barbican.consumers.get(sid, []), \
            f"Trove did not register the instance as the secret's consumer: {barbican.consumers}"
        for g in (gm, gr):
            assert tls_ping(g.ip, ca_pem) == b"+PONG\r\n", f"{g.container}'s TLS port does not answer PING"
            assert redisnode.info(g.ip, "server") is not None, f"{g.container}'s plaintext port closed in basic mode"
        wait_linked(gr.ip, gm.ip)
        _, out = cli(stage, trove, "ssl", "show", m.id)
        assert "basic" in out and "| status" in out and " on " in out, f"ssl show after enable: {out}"
        cli(stage, trove, "ssl", "disable", m.id)
        assert not barbican.consumers.get(sid), f"Trove left the instance as the secret's consumer: {barbican.consumers}"
        deadline = time.monotonic() + 30
        while any(tls_open(g.ip) for g in (gm, gr)):
            assert time.monotonic() < deadline, "a TLS port still accepts connections after ssl disable"
            time.sleep(0.5)
        wait_linked(gr.ip, gm.ip)
        n["note"] = "TLS PING on master and replica (port 6380), plaintext kept; closed after disable"

    # 15b2. enforced (TLS only: the plaintext port closed, the replica's link moved to the master's
    # TLS port), then Trove's ssl rollback back to the mode before it (off: plaintext again). Trove's
    # API rolls back only the instance it is given: the master first (its replica's open TLS link
    # stays up), then the replica (its link moves back to the plaintext port)
    with steps.step("15b2 ssl enable (enforced), rollback") as n:
        cli(stage, trove, "ssl", "enable", m.id, ref_, "--mode", "enforced")
        for g in (gm, gr):
            assert tls_ping(g.ip, ca_pem) == b"+PONG\r\n", f"{g.container}'s TLS port does not answer PING"
        plaintext_closed((gm, gr), "enforced")
        linked = wait_linked_tls(gr.ip, gm.ip, ca_pem)
        assert linked.get("master_port") == "6380", f"the replica's link is not on the master's TLS port: {linked}"
        _, out = cli(stage, trove, "ssl", "show", m.id)
        assert "enforced" in out and " on " in out, f"ssl show in enforced mode: {out}"
        cli(stage, trove, "ssl", "rollback", m.id)
        cli(stage, trove, "ssl", "rollback", r.id)
        back_to_plaintext(gm, gr, "ssl rollback")
        n["note"] = "enforced: TLS only on both, replica linked on 6380; rollback of the master, then the replica: plaintext again, TLS closed, linked on 6379"

    # 15b3. mtls: TLS only, and a client must present a certificate signed by the container's CA;
    # the replica's link presents the node's own. Then Trove's ssl disable: plaintext again on both
    with steps.step("15b3 ssl enable (mtls), disable") as n:
        cli(stage, trove, "ssl", "enable", m.id, ref_, "--mode", "mtls")
        plaintext_closed((gm, gr), "mtls")
        for g in (gm, gr):
            assert tls_ping(g.ip, ca_pem, client=client_pem) == b"+PONG\r\n", \
                f"{g.container}'s TLS port does not answer a client with a certificate"
            # the refusal Redis really sent (a TLS 1.3 alert), not a connection error
            with pytest.raises(ssl.SSLError) as refused:
                tls_read_only(g.ip, ca_pem)
            assert "CERTIFICATE_REQUIRED" in str(refused.value), \
                f"{g.container}: a client without a certificate got {refused.value!r}, not the certificate-required alert"
        linked = wait_linked_tls(gr.ip, gm.ip, ca_pem, client=client_pem)
        assert linked.get("master_port") == "6380", f"the replica's link is not on the master's TLS port: {linked}"
        assert tls_call(gm.ip, ca_pem, "SET mtls-key through-mtls", client=client_pem) == b"+OK\r\n"
        deadline = time.monotonic() + 30
        while tls_call(gr.ip, ca_pem, "GET mtls-key", client=client_pem) != b"through-mtls":
            assert time.monotonic() < deadline, "a write on the master over mtls did not reach the replica"
            time.sleep(0.2)
        _, out = cli(stage, trove, "ssl", "show", m.id)
        assert "mtls" in out and " on " in out, f"ssl show in mtls mode: {out}"
        cli(stage, trove, "ssl", "disable", m.id)
        back_to_plaintext(gm, gr, "ssl disable")
        n["note"] = ("mtls: TLS only on both, a client without a certificate refused with the certificate-required "
                     "alert, with one served; replica linked on 6380 carrying a write; disable: plaintext on 6379 again")

    # 15c. a snapshot backup (storage_driver cinder): Trove calls pre_create_backup (BGSAVE, then the
    # file system frozen), snapshots the volume, then post_create_backup (thawed)
    with steps.step("15c snapshot backup (Cinder), restore, delete") as n:
        with redisnode.Redis(gm.ip) as rc:
            assert rc.call("SET", "snap-key", "in-the-snapshot") == "OK"
            rdb = rc.call("CONFIG", "GET", "dbfilename")[1].decode()
        cli(stage, trove, "backup", "create", f"{p}-snapshot", "--instance", m.id, "--storage-driver", "cinder")
        b = next(x for x in trove.backups.list() if x.name == f"{p}-snapshot")
        b = wait_backup(trove, b.id)
        [[location]] = stage.sql(f"select location from backups where id = '{b.id}'")
        assert location.startswith("cinder://"), f"unexpected location {location}"
        snap = os.path.join(stage.work, "volumes", location.removeprefix("cinder://") + ".snap")
        assert os.path.exists(snap), f"no snapshot file {snap}"
        dbg = subprocess.run(["debugfs", "-R", f"cat /{rdb}", snap], capture_output=True, timeout=60)
        assert dbg.stdout.startswith(b"REDIS") and b"snap-key" in dbg.stdout, \
            f"the snapshot's /{rdb} is not an RDB with the key written before the backup: {dbg.stdout[:40]!r} {dbg.stderr[-200:]!r}"
        # thawed: a write to the volume's file system returns
        t = docker("exec", gm.container, "timeout", "10", "touch", f"{MOUNT_POINT}/.thaw-check", check=False)
        assert t.returncode == 0, f"the volume is still frozen after the backup: {t.stderr.strip()}"
        docker("exec", gm.container, "rm", "-f", f"{MOUNT_POINT}/.thaw-check")
        with redisnode.Redis(gm.ip) as rc:
            assert rc.call("SET", "after-snapshot", 1) == "OK"
        # restore: Trove makes the new instance's volume from the snapshot and prepares it with the
        # backup's info; the guest mounts that volume (never formats it) and serves its RDB
        cli(stage, trove, "instance", "create", f"{p}-from-snapshot", "--flavor", FLAVOR, "--size", str(VOLUME_GB),
            "--datastore", "redis", "--datastore-version", "7.0", "--backup", b.id)
        sn = next(i for i in trove.instances.list() if i.name == f"{p}-from-snapshot")
        wait_for(trove, "the instance restored from the snapshot to become ready", lambda x: ready(x, [sn.id]), 240)
        gsn = Guest(stage, sn)
        steps.add_guest("from-snapshot", gsn.container)
        assert role(gsn.ip)["role"] == "master"
        wait_no_missing(gsn.ip, data + [("snap-key", "in-the-snapshot")])
        with redisnode.Redis(gsn.ip) as rc:
            assert rc.call("EXISTS", "after-snapshot") == 0, "the instance restored from the snapshot holds a key written after it"
            assert rc.call("SET", "on-the-restored", 1) == "OK"
        check_volume(stage, gsn)
        cli(stage, trove, "instance", "delete", sn.id)
        wait_for(trove, "the instance restored from the snapshot to be deleted", lambda x: sn.id not in x, 180)
        deadline = time.monotonic() + 60
        while not gone(gsn):
            assert time.monotonic() < deadline, "the restored instance's container is still there after the delete"
            time.sleep(1)
        assert_volumes_gone(stage, {gsn.devices[DEVICE]})
        cli(stage, trove, "backup", "delete", b.id)
        deadline = time.monotonic() + 60
        while os.path.exists(snap) or any(x.id == b.id for x in trove.backups.list()):
            assert time.monotonic() < deadline, "the snapshot backup or its snapshot is still there after the delete"
            time.sleep(1)
        n["note"] = (f"snapshot {location}; its /{rdb} holds the key written before; thawed; an instance restored "
                     "from it (volume from the snapshot) serves that key and not one written after; deleted")

    # 16. upgrade to Valkey 9.1, the replica first, then the master: the data stays and the link holds
    with steps.step("16 upgrade replica, then master, 7.0 -> valkey-9.1") as n:
        before = {g.instance_id: server_info(g.ip) for g in (gm, gr)}
        assert all("valkey_version" not in i for i in before.values())
        for inst, g in ((r, gr), (m, gm)):
            cli(stage, trove, "instance", "upgrade", inst.id, "valkey-9.1")
            wait_task_done(trove, inst.id, lambda i: field(i, "datastore", {}).get("version") == "valkey-9.1"
                           and i.status not in ("UPGRADE",), f"{inst.name}'s upgrade", 180)
            deadline = time.monotonic() + 60
            while (redisnode.info(g.ip, "server") or {}).get("valkey_version") != "9.1.2":
                assert time.monotonic() < deadline, f"{g.container} does not run Valkey 9.1.2 after the upgrade: {redisnode.info(g.ip, 'server')}"
                time.sleep(0.5)
            wait_no_missing(g.ip, data, 60)
        wait_linked(gr.ip, gm.ip, 60)
        with redisnode.Redis(gm.ip) as rc:
            assert rc.call("SET", "after-upgrade", 1) == "OK"
        wait_no_missing(gr.ip, [("after-upgrade", 1)])
        cli(stage, trove, "instance", "list", "-c", "ID", "-c", "Name", "-c", "Datastore Version", "-c", "Status", "-c", "Role")
        n["note"] = (f"{before[r.id]['redis_version']} -> valkey {server_info(gm.ip)['valkey_version']}; "
                     f"{INITIAL_KEYS} keys kept, replica linked")

    # 17. rebuild the master on another image (Trove's management API, admin): Nova's stand-in replaces
    # its container (same address and volume; the new agent mounts the volume as it starts), Trove casts
    # rebuild, then re-enables it as master and restarts its replica
    with steps.step("17 rebuild the master on another image (admin)") as n:
        old_id = docker("inspect", "-f", "{{.Id}}", gm.container).stdout.strip()
        image = os.environ["TROVE_STAGE_REBUILD_IMAGE"]
        # what `openstack database instance rebuild` calls, with the admin's client
        stage.admin_client().mgmt_instances.rebuild(m.id, image)
        stage.cli_output.append((p, f"troveclient mgmt_instances.rebuild({m.id}, {image}) as admin", "(HTTP 202)\n"))

        def rebuilt(x):
            if not ready(x, [m.id]):
                return False
            p_ = docker("inspect", "-f", "{{.Id}}", gm.container, check=False)
            return p_.returncode == 0 and p_.stdout.strip() != old_id
        wait_for(trove, "the master's rebuild", rebuilt, 240)
        g2 = Guest(stage, m)
        assert g2.ip == gm.ip and g2.devices.get(DEVICE) == gm.devices.get(DEVICE), \
            f"the rebuilt server lost its address or volume: {g2.ip} {g2.devices} (was {gm.ip} {gm.devices})"
        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", g2.container).stdout)
        assert labels["trovestage.image"] == image, labels
        check_volume_mounted(g2)
        deadline = time.monotonic() + 60
        while (redisnode.info(gm.ip, "server") or {}).get("valkey_version") != "9.1.2":
            assert time.monotonic() < deadline, f"the rebuilt master does not run Valkey 9.1.2: {redisnode.info(gm.ip, 'server')}"
            time.sleep(0.5)
        assert role(gm.ip)["role"] == "master"
        wait_no_missing(gm.ip, data + [("after-upgrade", 1)], 60)
        wait_linked(gr.ip, gm.ip, 60)
        with redisnode.Redis(gm.ip) as rc:
            assert rc.call("SET", "after-rebuild", 1) == "OK"
        wait_no_missing(gr.ip, [("after-rebuild", 1)])
        n["note"] = f"new container, same address and volume; {INITIAL_KEYS + 1} keys kept, replica re-linked"

    # 18. delete both
    with steps.step("18 delete both") as n:
        cli(stage, trove, "instance", "delete", r.id, keep=False)
        wait_for(trove, "the replica to be deleted", lambda x: r.id not in x, 180)
        cli(stage, trove, "instance", "delete", m.id, keep=False)
        wait_for(trove, "the master to be deleted", lambda x: m.id not in x, 180)
        deadline = time.monotonic() + 60
        while not all(gone(g) for g in (gm, gr)):
            assert time.monotonic() < deadline, "guest containers are still there after the delete"
            time.sleep(1)
    assert_volumes_gone(stage, {g.devices[DEVICE] for g in (gm, gr)})


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Watcher:
    """`trove-guestctl watch --sets DIR --trove-template FILE` on the host: membership from Trove's
    API (the tenant's token in a 0600 file), one inventory per Redis replica set written into DIR,
    each set named by its first master's instance id; it keeps Trove's records in line."""

    def __init__(self, stage, tag, down_after_ms=1000):
        self.stage = stage
        self.port = free_port()
        token = os.path.join(stage.work, f"{tag}-token")
        write_private(token, stage.token)
        self.template = os.path.join(stage.work, f"{tag}-template.toml")
        write_private(self.template, f'transport_url = "{stage.transport}"\ncontrol_exchange = "trove"\n'
                                     f'[trove]\nurl = "{stage.api}/v1.0/trovestage"\ntoken_file = "{token}"\n')
        self.sets = os.path.join(stage.work, f"{tag}-sets")
        os.makedirs(self.sets, exist_ok=True)
        self.log_path = os.path.join(stage.work, f"{tag}-watch.log")
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([stage.guestctl, "watch", "--sets", self.sets, "--trove-template", self.template,
                                      "--listen", f"127.0.0.1:{self.port}", "--down-after-ms", str(down_after_ms)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.name = None  # the set's name: its first master's instance id

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def sentinel(self):
        from redis.sentinel import Sentinel
        return Sentinel([("127.0.0.1", self.port)], socket_timeout=0.5, socket_connect_timeout=0.5)

    def discover(self):
        import redis
        try:
            return self.sentinel().discover_master(self.name)
        except (redis.RedisError, OSError):
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_until(what, pred, timeout, interval=0.2, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s {detail()}"
        time.sleep(interval)


@pytest.mark.parametrize("trove", [False], indirect=True, ids=["plain_rpc"])
def test_watcher_keeps_troves_records(trove, stage):
    """trove-guestctl watch over a set Trove made: the master's container is killed while redis-py's
    Sentinel client writes through the watcher; the watcher fails over at once, then has Trove's own
    eject bring `instance list` in line (the agents answer it without a change); Trove's delete works after."""
    from sentinel_writer import SentinelWriter  # tests/pylib (on the path through redisnode)
    p = trove.pass_name
    steps = Steps(stage, p)
    with steps.step("19 create a master and two replicas, watched") as n:
        cli(stage, trove, "instance", "create", f"{p}-w-master", "--flavor", FLAVOR, "--size", str(VOLUME_GB),
            "--datastore", "redis", "--datastore-version", "7.0")
        m = next(i for i in trove.instances.list() if i.name == f"{p}-w-master")
        wait_for(trove, "the watched master to become ready", lambda x: ready(x, [m.id]), 240)
        cli(stage, trove, "instance", "create", f"{p}-w-replica", "--replica-of", m.id, "--replica-count", "2")
        x = wait_for(trove, "two replicas to become ready",
                     lambda x: len([i for i in x.values() if ref(field(i, "replica_of", None)) == m.id]) == 2
                     and ready(x, [i.id for i in x.values() if ref(field(i, "replica_of", None)) == m.id] + [m.id]), 240)
        r1, r2 = sorted((i for i in x.values() if ref(field(i, "replica_of", None)) == m.id), key=lambda i: i.id)
        gm, g1, g2 = Guest(stage, m), Guest(stage, r1), Guest(stage, r2)
        for label, g in (("w-master", gm), ("w-replica1", g1), ("w-replica2", g2)):
            steps.add_guest(label, g.container)
        for g in (g1, g2):
            wait_linked(g.ip, gm.ip)
        w = Watcher(stage, f"{p}-w")
        w.name = m.id
        try:
            # membership from Trove: the watcher wrote the set's inventory, named by the master's id
            inv = os.path.join(w.sets, f"{m.id}.toml")
            wait_until("the watcher writes the set's inventory from Trove's records", lambda: os.path.exists(inv), 30,
                       detail=lambda: w.log()[-2000:])
            with open(inv) as f:
                text = f.read()
            assert all(f'id = "{i}"' in text for i in (m.id, r1.id, r2.id)) and oct(os.stat(inv).st_mode & 0o777) == "0o600", text
            wait_until("the watcher names the master", lambda: w.discover() == (gm.ip, 6379), 30, detail=lambda: w.log()[-2000:])
            wait_until("the watcher finds Trove's records in line", lambda: "Trove's records match the accepted topology" in w.log(),
                       30, detail=lambda: w.log()[-2000:])
            n["note"] = ("the watcher found the set in Trove's records (its inventory written, named by the master's id), "
                         "took it (epoch claimed) and found Trove's records in line")
        except BaseException:
            w.stop()
            raise
    ips = {gm.ip: m, g1.ip: r1, g2.ip: r2}
    try:
        with steps.step("20 kill the master's container: failover, Trove's records follow") as n:
            master = w.sentinel().master_for(w.name, socket_timeout=0.5, socket_connect_timeout=0.5)
            sw = SentinelWriter(master, f"{p}-ws")
            sw.start()
            wait_until("300 writes through redis-py's Sentinel client", lambda: len(sw.acked) > 300, 30)
            docker("kill", gm.container)
            t_kill = time.monotonic()
            new_addr = wait_until("the watcher names a new master", lambda: (lambda a: a if a and a != (gm.ip, 6379) else None)(w.discover()),
                                  30, interval=0.05, detail=lambda: w.log()[-3000:])
            t_new = time.monotonic()
            new = ips[new_addr[0]]
            other = r2 if new is r1 else r1
            go = g2 if new is r1 else g1
            wait_until("writes acknowledged after the kill", lambda: sum(1 for _, s, _ in sw.acked if s > t_new) > 100, 30)
            first = next(t for _, s, t in sw.acked if s > t_kill)

            def in_line(x):
                return (field(x[new.id], "replica_of", None) is None and ref(field(x[other.id], "replica_of", None)) == new.id
                        and x[new.id].status in READY and x[other.id].status in READY)
            wait_for(trove, "Trove to record the watcher's new master", in_line, 90)
            t_trove = time.monotonic() - t_kill
            sw.stop()
            assert t_trove < 10 + 20, f"Trove's records took {t_trove:.1f} s, more than agent_heartbeat_expiry (10 s) + 20 s"
            assert "Trove accepted its own action" in w.log(), w.log()[-3000:]
            show_list(stage, trove)
            wait_linked(go.ip, new_addr[0])
            # Losses: a write acknowledged after the kill is on the new master; one acknowledged by the
            # old master is lost only if it came in its last second (asynchronous replication).
            missing = set(k for k, _ in redisnode.missing(new_addr[0], [(k, v) for k, v, _, _ in sw.records()]))
            acked_at = {k: t for k, _, _, t in sw.records()}
            late = [k for k in missing if acked_at[k] > t_kill]
            early = [k for k in missing if acked_at[k] < t_kill - 1.0]
            assert not late and not early, f"lost {len(missing)}: {len(late)} acknowledged after the kill, {len(early)} over a second before it"
            after = sum(1 for _, s, _ in sw.acked if s > t_kill)
            n["note"] = (f"watcher named {new.name} {int((t_new - t_kill) * 1000)} ms after the kill; first write through "
                         f"redis-py Sentinel {int((first - t_kill) * 1000)} ms after it; Trove's records in line {t_trove:.1f} s "
                         f"after it (Trove's eject, accepted once the heartbeat expired); {len(sw.acked)} writes, {after} after "
                         f"the kill, lost {len(missing)} (all acknowledged in the old master's last second)")
        # Trove's own promote with the watcher running: the agents take Trove's calls (a set Trove
        # keeps), the watcher waits while Trove's task runs, then adopts the topology it left
        with steps.step("21 Trove's own promote, the watcher adopts it") as n:
            master = w.sentinel().master_for(w.name, socket_timeout=0.5, socket_connect_timeout=0.5)
            sw = SentinelWriter(master, f"{p}-wp")
            sw.start()
            wait_until("300 writes before the promote", lambda: len(sw.acked) > 300, 30)
            gn = g1 if new is r1 else g2
            before = server_info(go.ip)
            cli(stage, trove, "instance", "promote", other.id)

            def promoted(x):
                return (field(x[other.id], "replica_of", None) is None and ref(field(x[new.id], "replica_of", None)) == other.id
                        and x[other.id].status in READY and x[new.id].status in READY)
            wait_for(trove, "Trove's promote to finish", promoted, 120)
            wait_until("the watcher names the promoted instance", lambda: w.discover() == (go.ip, 6379), 30,
                       detail=lambda: w.log()[-3000:])
            assert "as Trove's own promote, eject or detach left them" in w.log(), w.log()[-3000:]
            t_done = time.monotonic()
            wait_until("writes through the watcher after the promote", lambda: any(s > t_done for _, s, _ in sw.acked), 30)
            sw.stop()
            wait_linked(gn.ip, go.ip)
            lost = redisnode.missing(go.ip, [(k, v) for k, v, _, _ in sw.records()])
            assert not lost, f"Trove's promote under the watcher lost {len(lost)} acknowledged writes"
            after = server_info(go.ip)
            assert after["run_id"] == before["run_id"], "the promoted instance's Redis restarted"
            time.sleep(3)  # the watcher must not undo it
            assert role(go.ip)["role"] == "master" and w.discover() == (go.ip, 6379), w.log()[-3000:]
            n["note"] = f"{len(sw.acked)} writes through redis-py Sentinel, lost 0; the watcher adopted Trove's topology"

        with steps.step("22 Trove's own detach, the watcher adopts it") as n:
            cli(stage, trove, "instance", "detach", new.id)
            wait_for(trove, "Trove's detach to finish", lambda x: field(x[new.id], "replica_of", None) is None
                     and x[new.id].status in READY, 120)
            wait_until("the detached instance serves writes", lambda: role(gn.ip)["role"] == "master", 30)
            wait_until("the watcher adopts the detach", lambda: w.log().count("as Trove's own promote, eject or detach left them") >= 2,
                       30, detail=lambda: w.log()[-3000:])
            time.sleep(3)  # the watcher must not re-attach it
            assert role(gn.ip)["role"] == "master", w.log()[-3000:]
            with redisnode.Redis(gn.ip) as rc:
                assert rc.call("SET", "after-detach", 1) == "OK"
            assert w.discover() == (go.ip, 6379)
            show_list(stage, trove)
            n["note"] = "the detached instance is a writable master; the watcher's set keeps the promoted one"

        with steps.step("23 Trove's delete of the watched set (the watcher running)") as n:
            cli(stage, trove, "instance", "delete", other.id)
            wait_for(trove, "the replica to be deleted", lambda x: other.id not in x, 180)
            cli(stage, trove, "instance", "delete", new.id, m.id)
            wait_for(trove, "the instances to be deleted", lambda x: not ({m.id, r1.id, r2.id} & set(x)), 180)
            deadline = time.monotonic() + 60
            while not all(gone(g) for g in (gm, g1, g2)):
                assert time.monotonic() < deadline, "guest containers are still there after the delete"
                time.sleep(1)
            # the set is gone from Trove: the watcher removes its inventory and stops serving it
            wait_until("the watcher drops the deleted set", lambda: not os.listdir(w.sets) and w.discover() is None, 30,
                       detail=lambda: w.log()[-2000:])
            n["note"] = "the watcher removed the set's inventory and stopped serving it"
    finally:
        w.stop()
