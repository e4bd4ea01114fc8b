"""Stand-ins for Nova, Neutron, Glance and Cinder that Trove loads through its remote_*_client options, and Trove's identity filter checking tokens with Swift's tempauth.

Trove's API, taskmanager and conductor are separate processes, so no state is kept in memory:
Docker is the source of truth. A "server" is a container of the guest image, labelled with the
server's id, name, flavor, tenant, tags and metadata. servers.create writes the files Trove
injects (the cloud-config `write_files` in the userdata, or the `files` argument) under the
stage's work directory and mounts them read-only at /etc/trove/conf.d; nothing else configures
the guest. A volume in the block device mapping (Cinder's stand-in: a loop device) is passed into
the container as its device name (/dev/vdb). Only the calls Trove 26 makes for a Redis instance
with a volume and without security groups or management networks are implemented.

Configured by the environment of the Trove services (set by tests/trove/conftest.py):
  TROVE_STAGE_RUN       run id; containers are named <run>-<id8> and labelled trovestage.run=<run>
  TROVE_STAGE_NETWORK   the Docker network the guests join
  TROVE_STAGE_WORK      the stage's work directory (servers/<server id>/conf.d is mounted)
  TROVE_GUEST_IMAGE     the guest image
  TROVE_STAGE_SWIFT_URL the real Swift's storage URL without the account's name (http://host:port/v1/AUTH_)
"""
import base64
import datetime
import fcntl
import json
import os
import subprocess
import uuid

import yaml
from novaclient import api_versions
from novaclient import exceptions as nova_exceptions

CONF_DIR = "/etc/trove/conf.d"
IMAGE_ID = "6f0e1d3c-7a5b-4c1e-9d2f-8b3a4c5d6e7f"
# a second Glance image for `instance rebuild`: the same guest image under another id
REBUILD_IMAGE_ID = "3c1d5e7f-9a2b-4c4d-8e6f-0a1b2c3d4e5f"
IMAGES = {IMAGE_ID: "trove-redis-guest", REBUILD_IMAGE_ID: "trove-redis-guest-rebuild"}
NETWORK_ID = "0b7c2f4e-1d3a-4e5f-8a9b-c0d1e2f3a4b5"
SUBNET_ID = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
FLAVORS = {
    "6": {"name": "trovestage.small", "ram": 1024, "vcpus": 1, "disk": 10, "ephemeral": 0},
}
LABEL = "trovestage"


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"trove_standins: {name} is not set in this Trove service's environment")
    return value


def _docker(*args, check=True):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc


class _Obj:
    """An attribute bag like novaclient's resources."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def to_dict(self):
        return dict(self.__dict__)


# ---------------------------------------------------------------- nova


class _Server:
    def __init__(self, manager, info):
        self._manager = manager
        labels = info["Config"]["Labels"]
        state = info["State"]
        self.id = labels[f"{LABEL}.server_id"]
        self.name = labels[f"{LABEL}.name"]
        self.container = info["Name"].lstrip("/")
        if state.get("Running") and not state.get("Paused"):
            self.status = "ACTIVE"
        elif state.get("Status") == "created":
            self.status = "BUILD"
        else:
            self.status = "SHUTOFF"
        self.addresses = {}
        for net, cfg in (info["NetworkSettings"].get("Networks") or {}).items():
            if cfg.get("IPAddress"):
                self.addresses[net] = [{"addr": cfg["IPAddress"], "version": 4, "OS-EXT-IPS:type": "fixed"}]
        self.ip = next((a[0]["addr"] for a in self.addresses.values()), None)
        self.flavor = {"id": labels[f"{LABEL}.flavor"]}
        self.image = {"id": labels[f"{LABEL}.image"]}
        self.tenant_id = labels.get(f"{LABEL}.tenant", "")
        self.user_id = labels.get(f"{LABEL}.user", "")
        self.metadata = json.loads(labels.get(f"{LABEL}.meta", "{}"))
        self.tags = manager._tags(self.id, json.loads(labels.get(f"{LABEL}.tags", "[]")))
        self.created = info.get("Created", "")
        self.updated = state.get("StartedAt", "")
        self.host = "trovestage"
        self.hostId = "trovestage"
        self.key_name = None
        self.fault = {"message": state.get("Error") or f"container {state.get('Status')}"}
        setattr(self, "OS-EXT-AZ:availability_zone", "nova")
        setattr(self, "OS-EXT-STS:vm_state", self.status.lower())

    def delete(self):
        self._manager.delete(self.id)

    def rebuild(self, image, **kwargs):
        return self._manager.rebuild(self.id, image, **kwargs)

    def to_dict(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class _Servers:
    def __init__(self, context):
        self._context = context

    def _run(self):
        return _env("TROVE_STAGE_RUN")

    def _server_dir(self, server_id):
        return os.path.join(_env("TROVE_STAGE_WORK"), "servers", server_id)

    def _tags(self, server_id, default):
        path = os.path.join(self._server_dir(server_id), "tags.json")
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return default

    def _inspect(self, ids):
        if not ids:
            return []
        proc = _docker("inspect", *ids, check=False)
        try:
            return json.loads(proc.stdout or "[]")
        except ValueError:
            return []

    def _containers(self, server_id=None):
        filters = ["--filter", f"label={LABEL}.run={self._run()}",
                   "--filter", f"label={LABEL}.server_id" + (f"={server_id}" if server_id else "")]
        ids = _docker("ps", "-aq", *filters).stdout.split()
        return self._inspect(ids)

    def get(self, server_id):
        server_id = getattr(server_id, "id", server_id)
        found = self._containers(server_id)
        if not found:
            raise nova_exceptions.NotFound(404, f"Server {server_id} could not be found")
        return _Server(self, found[0])

    def list(self, search_opts=None, limit=None, **_):
        return [_Server(self, c) for c in self._containers()]

    def delete(self, server_id):
        server_id = getattr(server_id, "id", server_id)
        for c in self._containers(server_id):
            # Keep the guest's log for the stage's report before the container goes.
            logdir = os.path.join(_env("TROVE_STAGE_WORK"), "guest-logs")
            os.makedirs(logdir, exist_ok=True)
            name = c["Name"].lstrip("/")
            with open(os.path.join(logdir, f"{name}.log"), "w") as out:
                subprocess.run(["docker", "logs", "-t", name], stdout=out, stderr=subprocess.STDOUT, timeout=60)
            _docker("rm", "-f", "-v", name, check=False)
        _Volumes().server_deleted(server_id)

    def rebuild(self, server_id, image, userdata=None, files=None, **_):
        """Nova's rebuild: a new container of the guest image replaces the server's, with the same
        name, address and volumes, the files Trove injects now, and the new image's id."""
        server_id = getattr(server_id, "id", server_id)
        image_id = str(getattr(image, "id", image))
        if image_id not in IMAGES:
            raise nova_exceptions.BadRequest(400, f"Image {image_id} could not be found")
        [old] = self._containers(server_id) or [None]
        if old is None:
            raise nova_exceptions.NotFound(404, f"Server {server_id} could not be found")
        name = old["Name"].lstrip("/")
        labels = dict(old["Config"]["Labels"])
        labels[f"{LABEL}.image"] = image_id
        host = old["HostConfig"]
        ip = old["NetworkSettings"]["Networks"][_env("TROVE_STAGE_NETWORK")]["IPAddress"]
        injected = dict(_cloud_config_files(userdata))
        for path, content in (files or {}).items():
            injected[path] = content.encode() if isinstance(content, str) else content
        logdir = os.path.join(_env("TROVE_STAGE_WORK"), "guest-logs")
        os.makedirs(logdir, exist_ok=True)
        with open(os.path.join(logdir, f"{name}.before-rebuild.log"), "w") as out:
            subprocess.run(["docker", "logs", "-t", name], stdout=out, stderr=subprocess.STDOUT, timeout=60)
        _docker("rm", "-f", "-v", name)
        conf_dir = os.path.join(self._server_dir(server_id), "conf.d")
        for f in os.listdir(conf_dir):
            os.unlink(os.path.join(conf_dir, f))
        uid = _guest_uid()
        _write_injected(conf_dir, injected, uid)
        args = ["run", "-d", "--init", "--name", name, "--hostname", server_id[:8],
                "--network", _env("TROVE_STAGE_NETWORK"), "--ip", ip, "-v", f"{conf_dir}:{CONF_DIR}:ro"]
        for d in host.get("Devices") or []:
            args += ["--device", f"{d['PathOnHost']}:{d['PathInContainer']}"]
        if old["Config"].get("User"):
            args += ["--user", old["Config"]["User"]]
        for cap in host.get("CapAdd") or []:
            args += ["--cap-add", cap]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        args.append(_env("TROVE_GUEST_IMAGE"))
        _docker(*args)
        return self.get(server_id)

    def set_tags(self, server_id, tags):
        server_id = getattr(server_id, "id", server_id)
        self.get(server_id)
        with open(os.path.join(self._server_dir(server_id), "tags.json"), "w") as f:
            json.dump(list(tags), f)

    def create(self, name, image, flavor, meta=None, files=None, userdata=None, tags=None, nics=None,
               key_name=None, availability_zone=None, block_device_mapping_v2=None, config_drive=None,
               scheduler_hints=None, **kwargs):
        server_id = str(uuid.uuid4())  # Trove stores it in a 36-character column
        injected = dict(_cloud_config_files(userdata))
        for path, content in (files or {}).items():
            injected[path] = content.encode() if isinstance(content, str) else content
        conf_dir = os.path.join(self._server_dir(server_id), "conf.d")
        os.makedirs(conf_dir, mode=0o750)
        uid = _guest_uid()
        _write_injected(conf_dir, injected, uid)
        os.chown(conf_dir, uid, uid)
        container = f"{self._run()}-{server_id[:8]}"
        ctx = self._context
        labels = {
            f"{LABEL}.run": self._run(),
            f"{LABEL}.server_id": server_id,
            f"{LABEL}.name": name,
            f"{LABEL}.instance": (meta or {}).get("trove_instance_id", ""),
            f"{LABEL}.flavor": str(getattr(flavor, "id", flavor)),
            f"{LABEL}.image": str(getattr(image, "id", image) or ""),
            f"{LABEL}.tenant": getattr(ctx, "project_id", "") or "",
            f"{LABEL}.user": getattr(ctx, "user_id", "") or "",
            f"{LABEL}.meta": json.dumps(meta or {}),
            f"{LABEL}.tags": json.dumps(list(tags or [])),
        }
        args = ["run", "-d", "--init", "--name", container, "--hostname", server_id[:8],
                "--network", _env("TROVE_STAGE_NETWORK"),
                "-v", f"{conf_dir}:{CONF_DIR}:ro"]
        volumes = [b for b in (block_device_mapping_v2 or []) if b.get("source_type") == "volume"]
        for bdm in volumes:
            dev = "/dev/" + (bdm.get("device_name") or "vdb").removeprefix("/dev/")
            loop = _Volumes().attach(bdm["uuid"], server_id, dev, bdm.get("delete_on_termination"))
            args += ["--device", f"{loop}:{dev}"]
        if volumes:
            # The agent formats and mounts the volume itself, as Trove's guests do: it runs as root
            # (a container's root: Docker's default capabilities) plus CAP_SYS_ADMIN for mount and
            # umount. Not CAP_SYS_RESOURCE, which growing a mounted ext4 needs: the stage resizes
            # volumes offline (online_volume_resize = False), resize2fs on the unmounted device.
            args += ["--user", "0", "--cap-add", "SYS_ADMIN"]
            labels[f"{LABEL}.volumes"] = ",".join(b["uuid"] for b in volumes)
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        args.append(_env("TROVE_GUEST_IMAGE"))
        _docker(*args)
        return self.get(server_id)


def _cloud_config_files(userdata):
    """(path, bytes) for each `write_files` entry of a #cloud-config userdata."""
    if not userdata:
        return
    if isinstance(userdata, bytes):
        userdata = userdata.decode()
    doc = yaml.safe_load(userdata)
    if not isinstance(doc, dict):
        raise RuntimeError("trove_standins: the userdata is not a cloud-config document")
    for entry in doc.get("write_files") or []:
        content = entry.get("content", "")
        if entry.get("encoding") in ("b64", "base64"):
            data = base64.b64decode(content)
        else:
            data = content.encode()
        yield entry["path"], data


def _write_injected(conf_dir, injected, uid):
    """Writes the files Trove injects into the guest's mounted conf.d (0600, owned by the guest)."""
    for path, content in injected.items():
        if os.path.dirname(os.path.normpath(path)) != CONF_DIR:
            raise RuntimeError(f"trove_standins: Trove injected {path}, outside {CONF_DIR}; only that directory is mounted")
        target = os.path.join(conf_dir, os.path.basename(path))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chown(target, uid, uid)


def _guest_uid():
    """The uid of the guest image's redis user (owner of the injected files), cached per run."""
    cache = os.path.join(_env("TROVE_STAGE_WORK"), "guest-uid")
    with open(cache + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(cache) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            pass
        out = _docker("run", "--rm", "--entrypoint", "id", _env("TROVE_GUEST_IMAGE"), "-u", "redis").stdout
        uid = int(out.strip())
        with open(cache, "w") as f:
            f.write(str(uid))
        return uid


class _Flavors:
    def get(self, flavor_id):
        flavor_id = str(getattr(flavor_id, "id", flavor_id))
        if flavor_id not in FLAVORS:
            raise nova_exceptions.NotFound(404, f"Flavor {flavor_id} could not be found")
        return _Obj(id=flavor_id, links=[], is_public=True, **FLAVORS[flavor_id])

    def list(self, **_):
        return [self.get(i) for i in FLAVORS]


class _ServerGroups:
    def list(self):
        return []

    def create(self, name, policies=None, **_):
        raise RuntimeError("trove_standins: server groups are not supported")

    def delete(self, group_id):
        pass


class _ServerVolumes:
    """Volume attachments, for the taskmanager's offline volume resize (detach, extend, attach)."""

    def delete_server_volume(self, server_id, volume_id):
        _Volumes().detach(server_id, volume_id)

    def create_server_volume(self, server_id, volume_id, device=None, **_):
        _Volumes().reattach(server_id, volume_id, device)


class NovaClient:
    def __init__(self, context, region_name=None, password=None, **_):
        self.api_version = api_versions.APIVersion("2.90")
        self.servers = _Servers(context)
        self.volumes = _ServerVolumes()
        self.flavors = _Flavors()
        self.server_groups = _ServerGroups()


def nova_client(context, region_name=None, password=None, **kwargs):
    return NovaClient(context, region_name=region_name, password=password)


# ---------------------------------------------------------------- neutron


class NeutronClient:
    """Ports are derived from the guests' containers; nothing is created or deleted."""

    def __init__(self, context, region_name=None, **_):
        self._servers = _Servers(context)

    def _port(self, server):
        return {
            "id": f"port-{server.id}",
            "name": f"trove-port-{server.id}",
            "network_id": NETWORK_ID,
            "device_id": server.id,
            "mac_address": "02:00:00:00:00:00",
            "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": server.ip}] if server.ip else [],
        }

    def list_ports(self, **filters):
        if "name" in filters:
            return {"ports": []}  # Trove made no ports (no management network, no nics)
        ports = [self._port(s) for s in self._servers.list()]
        if "device_id" in filters:
            ports = [p for p in ports if p["device_id"] == filters["device_id"]]
        return {"ports": ports}

    def show_port(self, port_id):
        for s in self._servers.list():
            if f"port-{s.id}" == port_id:
                return {"port": self._port(s)}
        from neutronclient.common import exceptions
        raise exceptions.PortNotFoundClient()

    def show_network(self, network_id):
        return {"network": {"id": network_id, "name": _env("TROVE_STAGE_NETWORK")}}

    def show_subnet(self, subnet_id):
        return {"subnet": {"id": subnet_id, "network_id": NETWORK_ID, "ip_version": 4,
                           "cidr": os.environ.get("TROVE_STAGE_SUBNET", ""), "gateway_ip": None, "host_routes": []}}

    def list_floatingips(self, **_):
        return {"floatingips": []}

    def list_security_groups(self, **_):
        return {"security_groups": []}

    def delete_port(self, port_id):
        pass


def neutron_client(context, region_name=None, **kwargs):
    return NeutronClient(context, region_name=region_name)


# ---------------------------------------------------------------- glance


class _Images:
    def _image(self, image_id=IMAGE_ID):
        return {"id": image_id, "name": IMAGES[image_id], "status": "active",
                "created_at": datetime.datetime(2026, 1, 1).isoformat() + "Z",
                "tags": ["trove", "redis"] if image_id == IMAGE_ID else ["rebuild"]}

    def get(self, image_id):
        if image_id not in IMAGES:
            from glanceclient import exc
            raise exc.HTTPNotFound(f"image {image_id} not found")
        return _Obj(**self._image(image_id))

    def list(self, filters=None, **_):
        return [self._image(i) for i in IMAGES]


class GlanceClient:
    def __init__(self, context, region_name=None, **_):
        self.images = _Images()


def glance_client(context, region_name=None, **kwargs):
    return GlanceClient(context, region_name=region_name)


# ---------------------------------------------------------------- cinder


class _Volume(_Obj):
    def delete(self):
        _Volumes().delete(self.id)


class _Volumes:
    """Volumes are loop devices over sparse files in <work>/volumes (<id>.img), described by <id>.json.

    create makes the file (size in GB) and attaches a loop device; the Nova stand-in passes it into
    the guest container as the block device mapping's device name (/dev/vdb); delete detaches it
    (losetup -d) and removes both files. A volume is `in-use` while the server it was given to exists."""

    def _dir(self):
        d = os.path.join(_env("TROVE_STAGE_WORK"), "volumes")
        os.makedirs(d, exist_ok=True)
        return d

    def _path(self, volume_id, ext):
        if not _is_uuid(volume_id):
            raise RuntimeError(f"trove_standins: not a volume id: {volume_id!r}")
        return os.path.join(self._dir(), f"{volume_id}.{ext}")

    def _read(self, volume_id):
        try:
            with open(self._path(volume_id, "json")) as f:
                return json.load(f)
        except FileNotFoundError:
            from cinderclient import exceptions
            raise exceptions.NotFound(404, f"Volume {volume_id} could not be found")

    def _write(self, rec):
        tmp = self._path(rec["id"], "json.tmp")
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, self._path(rec["id"], "json"))

    def _obj(self, rec):
        status = rec["status"]
        if status == "available" and rec.get("server_id") and _Servers(None)._containers(rec["server_id"]):
            status = "in-use"
        attachments = [{"server_id": rec["server_id"], "device": rec["device_name"]}] if status == "in-use" else []
        return _Volume(id=rec["id"], name=rec["name"], size=rec["size"], status=status, volume_type=rec.get("volume_type"),
                       description=rec.get("description"), attachments=attachments, bootable="false")

    def create(self, size, name=None, description=None, volume_type=None, availability_zone=None, snapshot_id=None,
               **_):
        volume_id = str(uuid.uuid4())
        img = self._path(volume_id, "img")
        if snapshot_id:  # Cinder's volume from a snapshot: its blocks, at least its size
            snap = _Snapshots().get(snapshot_id)
            if int(size) < int(snap.size):
                from cinderclient import exceptions
                raise exceptions.BadRequest(400, f"size {size} is smaller than the snapshot's {snap.size}")
            subprocess.run(["cp", "--sparse=always", snap.file, img], check=True, capture_output=True, timeout=300)
        with open(img, "ab") as f:
            f.truncate(int(size) << 30)  # sparse
        loop = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True, timeout=60)
        if loop.returncode != 0:
            os.unlink(img)
            raise RuntimeError(f"trove_standins: losetup failed: {loop.stderr.strip()}")
        rec = {"id": volume_id, "name": name, "description": description, "size": int(size), "volume_type": volume_type,
               "status": "available", "loop": loop.stdout.strip(), "file": img, "server_id": None, "device_name": None,
               "delete_on_termination": False, "snapshot_id": snapshot_id}
        self._write(rec)
        return self._obj(rec)

    def get(self, volume_id):
        return self._obj(self._read(getattr(volume_id, "id", volume_id)))

    def list(self, search_opts=None, **_):
        out = []
        for f in sorted(os.listdir(self._dir())):
            if f.endswith(".json"):
                try:
                    rec = self._read(f[:-5])
                except Exception:
                    continue
                if (search_opts or {}).get("name") not in (None, rec["name"]):
                    continue
                out.append(self._obj(rec))
        return out

    def attach(self, volume_id, server_id, device_name, delete_on_termination):
        """Called by the Nova stand-in's create: the loop device to pass into the container."""
        rec = self._read(volume_id)
        if rec.get("server_id") and _Servers(None)._containers(rec["server_id"]):
            raise RuntimeError(f"trove_standins: volume {volume_id} is in use by server {rec['server_id']}")
        rec.update(server_id=server_id, device_name=device_name, delete_on_termination=bool(delete_on_termination),
                   node_in=server_id)
        self._write(rec)
        return rec["loop"]

    def detach(self, server_id, volume_id):
        """Nova's detach: the volume becomes `available`. Docker cannot take a device node out of a
        running container: the node stays, unused (the guest unmounted it first, as Trove asks)."""
        rec = self._read(volume_id)
        if rec.get("server_id") != server_id:
            raise RuntimeError(f"trove_standins: volume {volume_id} is not attached to server {server_id}")
        rec["server_id"] = None
        self._write(rec)

    def reattach(self, server_id, volume_id, device):
        """Nova's attach of a volume to a running server: only where its device node already is (Docker
        cannot add one to a running container), i.e. back to the server it was detached from."""
        rec = self._read(volume_id)
        dev = "/dev/" + (device or rec["device_name"] or "vdb").removeprefix("/dev/")
        if rec.get("node_in") != server_id or dev != rec["device_name"]:
            raise RuntimeError(f"trove_standins: volume {volume_id} can only be re-attached to server "
                               f"{rec.get('node_in')} as {rec['device_name']}")
        rec["server_id"] = server_id
        self._write(rec)

    def server_deleted(self, server_id):
        """Nova's part of a server delete: its volumes are detached, and deleted when so mapped."""
        for vol in self.list():
            rec = self._read(vol.id)
            if server_id in (rec.get("server_id"), rec.get("node_in")):
                if rec.get("delete_on_termination"):
                    self.delete(vol.id)
                else:
                    rec.update(server_id=None, device_name=None, node_in=None)
                    self._write(rec)

    def extend(self, volume_id, new_size):
        rec = self._read(getattr(volume_id, "id", volume_id))
        if int(new_size) <= rec["size"]:
            from cinderclient import exceptions
            raise exceptions.BadRequest(400, f"new size {new_size} is not larger than {rec['size']}")
        with open(rec["file"], "r+b") as f:
            f.truncate(int(new_size) << 30)
        subprocess.run(["losetup", "-c", rec["loop"]], check=True, capture_output=True, timeout=60)
        rec["size"] = int(new_size)
        self._write(rec)

    def delete(self, volume_id):
        rec = self._read(getattr(volume_id, "id", volume_id))
        if rec.get("server_id") and _Servers(None)._containers(rec["server_id"]):
            from cinderclient import exceptions
            raise exceptions.BadRequest(400, f"Volume {rec['id']} is in use")
        # the loop device that still maps this file (losetup -j), not a number recorded earlier
        for line in subprocess.run(["losetup", "-j", rec["file"]], capture_output=True, text=True, timeout=60).stdout.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True, timeout=60)
        for ext in ("img", "json"):
            try:
                os.unlink(self._path(rec["id"], ext))
            except FileNotFoundError:
                pass


def _is_uuid(value):
    try:
        return str(uuid.UUID(str(value))) == value
    except ValueError:
        return False


class _Snapshots:
    """Volume snapshots (Trove's snapshot backups, storage_driver cinder): a sparse copy of the volume's
    file, <work>/volumes/<id>.snap with <id>.snap.json, taken while the guest holds its file system
    frozen (pre_create_backup); `available` when created."""

    def _path(self, snapshot_id, ext):
        return _Volumes()._path(snapshot_id, ext)

    def _obj(self, rec):
        return _Obj(**rec)

    def create(self, volume_id, force=False, name=None, description=None, metadata=None, **_):
        vol = _Volumes()._read(getattr(volume_id, "id", volume_id))
        snapshot_id = str(uuid.uuid4())
        path = self._path(snapshot_id, "snap")
        subprocess.run(["cp", "--sparse=always", vol["file"], path], check=True, capture_output=True, timeout=300)
        rec = {"id": snapshot_id, "volume_id": vol["id"], "name": name, "description": description, "size": vol["size"],
               "status": "available", "metadata": metadata or {}, "file": path}
        with open(self._path(snapshot_id, "snap.json"), "w") as f:
            json.dump(rec, f)
        return self._obj(rec)

    def get(self, snapshot_id):
        try:
            with open(self._path(getattr(snapshot_id, "id", snapshot_id), "snap.json")) as f:
                return self._obj(json.load(f))
        except FileNotFoundError:
            from cinderclient import exceptions
            raise exceptions.NotFound(404, f"Snapshot {snapshot_id} could not be found")

    def delete(self, snapshot_id):
        self.get(snapshot_id)
        for ext in ("snap", "snap.json"):
            os.unlink(self._path(getattr(snapshot_id, "id", snapshot_id), ext))


class CinderClient:
    def __init__(self, context, region_name=None, **_):
        self.volumes = _Volumes()
        self.volume_snapshots = _Snapshots()


def cinder_client(context, region_name=None, **kwargs):
    return CinderClient(context, region_name=region_name)


# ---------------------------------------------------------------- keystone


def identity_filter_factory(global_conf, **local_conf):
    """In place of keystonemiddleware's authtoken: Swift's tempauth is the identity service.

    A request to /v1.0/<tenant>/... is let through when its X-Auth-Token opens Swift's account
    AUTH_<tenant> (HEAD, answered 2xx; an answer is remembered for 60 s): the token is then the
    user's token for Trove's context, and it is valid in Swift, where the guests take it for
    backups and guest logs. The identity headers are those of Trove's fake filter (tenant = user =
    role); the tenant TROVE_STAGE_ADMIN_TENANT also has the role `admin` (Trove's admin_roles), the
    cloud admin that Trove's management API (diagnostics, hwinfo, rebuild) requires."""
    import threading
    import time
    import urllib.error
    import urllib.request

    swift = _env("TROVE_STAGE_SWIFT_URL").rstrip("/")  # http://host:port/v1/AUTH_
    admin_tenant = os.environ.get("TROVE_STAGE_ADMIN_TENANT", "")
    seen = {}
    lock = threading.Lock()

    def valid(token, tenant):
        key = (token, tenant)
        with lock:
            if seen.get(key, 0) > time.monotonic():
                return True
        req = urllib.request.Request(f"{swift}{tenant}", method="HEAD", headers={"X-Auth-Token": token})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                ok = 200 <= r.status < 300
        except urllib.error.HTTPError:
            ok = False
        if ok:
            with lock:
                seen[key] = time.monotonic() + 60
        return ok

    def auth_filter(app):
        def middleware(env, start_response):
            # /v1.0/<tenant>/...; urlmap has moved /v1.0 into SCRIPT_NAME
            parts = (env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")).split("/")
            token = env.get("HTTP_X_AUTH_TOKEN") or env.get("HTTP_X_STORAGE_TOKEN")
            tenant = parts[2] if len(parts) > 2 and parts[1] == "v1.0" else ""
            if not token or not tenant or not tenant.isalnum() or not valid(token, tenant):
                start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                return [b"The request you have made requires authentication.\n"]
            for k, v in {"X_IDENTITY_STATUS": "Confirmed", "X_TENANT_ID": tenant, "X_TENANT_NAME": tenant,
                         "X_PROJECT_ID": tenant, "X_USER_ID": tenant, "X_USER_NAME": tenant,
                         "X_ROLE": f"{tenant},admin" if tenant == admin_tenant else tenant}.items():
                env[f"HTTP_{k}"] = v
            return app(env, start_response)
        return middleware
    return auth_filter


# ---------------------------------------------------------------- barbican


class Barbican:
    """Barbican's secrets API as Trove's ssl_action uses it: version discovery, GET /v1/secrets/<uuid>
    (metadata) and .../payload (the PKCS#12 container), POST and DELETE .../consumers, for the
    stage's user's token only.
    Runs in the test process; the tests store the secrets (trove.conf's barbican_url points here)."""

    def __init__(self, port, token):
        import http.server
        import threading
        self.secrets = {}
        self.consumers = {}  # secret id -> [{service, resource_type, resource_id}]
        self.base = f"http://127.0.0.1:{port}"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.split("?")[0].rstrip("/") in ("", "/v1"):  # version discovery, unauthenticated
                    # microversion 1.1: secret consumers, which Trove registers (without it Trove's
                    # ssl enable fails: docs/trove.md section 5)
                    doc = {"versions": {"values": [{"id": "v1", "status": "CURRENT", "min_version": "1.0", "max_version": "1.1",
                                                    "links": [{"rel": "self", "href": f"{outer.base}/v1/"}]}]}}
                    return self._send(300 if self.path.rstrip("/") == "" else 200, json.dumps(doc).encode(), "application/json")
                if self.headers.get("X-Auth-Token") != token:
                    return self._send(401, b'{"error": "unauthorized"}', "application/json")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 3 or parts[:2] != ["v1", "secrets"] or parts[2] not in outer.secrets:
                    return self._send(404, b'{"error": "not found"}', "application/json")
                sid = parts[2]
                if parts[3:] == ["payload"]:
                    return self._send(200, outer.secrets[sid], "application/octet-stream")
                meta = {"secret_ref": f"{outer.base}/v1/secrets/{sid}", "name": sid, "status": "ACTIVE",
                        "secret_type": "opaque", "content_types": {"default": "application/octet-stream"},
                        "created": "2026-01-01T00:00:00", "updated": "2026-01-01T00:00:00"}
                return self._send(200, json.dumps(meta).encode(), "application/json")

            def _consumers(self, add):
                if self.headers.get("X-Auth-Token") != token:
                    return self._send(401, b'{"error": "unauthorized"}', "application/json")
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] != ["v1", "secrets"] or parts[3:] != ["consumers"] or parts[2] not in outer.secrets:
                    return self._send(404, b'{"error": "not found"}', "application/json")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                c = outer.consumers.setdefault(parts[2], [])
                entry = {k: body.get(k) for k in ("service", "resource_type", "resource_id")}
                if add and entry not in c:
                    c.append(entry)
                elif not add and entry in c:
                    c.remove(entry)
                meta = {"secret_ref": f"{outer.base}/v1/secrets/{parts[2]}", "name": parts[2], "status": "ACTIVE",
                        "content_types": {"default": "application/octet-stream"}, "consumers": c}
                return self._send(200, json.dumps(meta).encode(), "application/json")

            def do_POST(self):
                return self._consumers(True)

            def do_DELETE(self):
                return self._consumers(False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def store(self, payload):
        """Stores a secret; returns its reference."""
        sid = str(uuid.uuid4())
        self.secrets[sid] = payload
        return f"{self.base}/v1/secrets/{sid}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
