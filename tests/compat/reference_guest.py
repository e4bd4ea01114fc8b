#!/usr/bin/env python3
"""Reference guest: a stand-in for Trove's Python guest agent, built on oslo.messaging's own RPC
server, that reads the same configuration as trove-guestagent.

    python reference_guest.py --config agent.toml

It serves topic guestagent.<[guest] id> (server <id>) on the [rpc] control_exchange with an
endpoint at version 1.3 and DefaultRPCAccessPolicy, exactly as trove/cmd/guest.py sets it up,
and casts heartbeat(instance_id, payload={'service_status': 'new'}, sent) to [conductor] topic
every [conductor] report_interval seconds. With [guest] instance_rpc_encr_key set it speaks
Trove's secure RPC (SecureSerializer towards the caller, ConductorGuestSerializer towards the
conductor).

One deliberate difference from Trove: a request whose context does not decrypt under the
instance key (wrong key, or no encryption at all) is answered with a clear GuestError -- the
behaviour asked of the Rust agent -- where Trove itself would carry on with the raw values.

Environment overrides TROVE_GUESTAGENT__<SECTION>__<KEY>=value work as for the Rust agent.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time
import tomllib
import uuid

from oslo_config import cfg
import oslo_messaging
from oslo_messaging.rpc import dispatcher

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compat_lib as lib  # noqa: E402

LOG = logging.getLogger("reference_guest")


class GuestError(Exception):
    """Shaped like trove.common.exception.GuestError on the wire (class, module, kwargs)."""

    message = "An error occurred communicating with the guest: %(original_message)s."

    def __init__(self, original_message):
        self.kwargs = {"original_message": original_message}
        self._text = self.message % self.kwargs
        super().__init__()

    def __str__(self):
        return self._text


GuestError.__module__ = "trove.common.exception"


def parse_value(text):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def load_config(path):
    conf = {}
    if path:
        with open(path, "rb") as f:
            conf = tomllib.load(f)
    prefix = "TROVE_GUESTAGENT__"
    for name, value in os.environ.items():
        if name.startswith(prefix):
            parts = name[len(prefix):].lower().split("__")
            if len(parts) == 2:
                conf.setdefault(parts[0], {})[parts[1]] = parse_value(value)
    return conf


class GuestSerializer(lib.DictContextSerializer):
    """Guest side of Trove's SecureSerializer, strict about the context (see module doc)."""

    def __init__(self, key):
        self.key = key or None

    def serialize_entity(self, ctxt, entity):
        return entity if self.key is None else lib.encrypt_json(entity, self.key)

    def deserialize_entity(self, ctxt, entity):
        if self.key is None:
            return entity
        try:
            return lib.decrypt_json(entity, self.key)
        except ValueError:
            return entity

    def deserialize_context(self, ctxt):
        if self.key is None:
            return dict(ctxt)
        if "context" not in ctxt:
            raise GuestError("the message was not encrypted, but this guest requires secure RPC")
        try:
            return lib.decrypt_json(ctxt["context"], self.key)
        except ValueError:
            raise GuestError("the message context could not be decrypted: it was encrypted "
                             "under a different instance key") from None


class ConductorGuestSerializer(lib.DictContextSerializer):
    """Trove's ConductorGuestSerializer (guest -> conductor)."""

    def __init__(self, key, guest_id):
        self.key = key or None
        self.guest_id = guest_id

    def serialize_entity(self, ctxt, entity):
        if self.key is None:
            return entity
        import json
        return json.dumps({"entity": lib.encrypt_json(entity, self.key),
                           "csz-instance-id": self.guest_id})

    def serialize_context(self, ctxt):
        if self.key is None:
            return dict(ctxt)
        return {"context": lib.encrypt_json(dict(ctxt), self.key),
                "csz-instance-id": self.guest_id}


class Manager:
    """The endpoint. Named like Trove's datastore managers, so a bad call signature raises
    `Manager.<method>() missing 1 required positional argument: '<arg>'`."""

    target = oslo_messaging.Target(version="1.3")

    def __init__(self, conf):
        self.conf = conf
        self.data_dir = conf.get("redis", {}).get("data_dir") or "/tmp"
        self.prepared = False
        self.casts = []

    def rpc_ping(self, context, **kwargs):
        return True

    def get_filesystem_stats(self, context, fs_path, **kwargs):
        os.makedirs(self.data_dir, exist_ok=True)
        st = os.statvfs(self.data_dir)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        gb = 1024.0 ** 3
        return {"block_size": st.f_frsize, "total_blocks": st.f_blocks,
                "free_blocks": st.f_bavail, "total": round(total / gb, 2), "free": free,
                "used": round((total - st.f_bfree * st.f_frsize) / gb, 2)}

    def wait_for_txn(self, context, txn, **kwargs):
        return None

    def get_latest_txn_id(self, context, **kwargs):
        return 0

    def backup_required_for_replication(self, context, **kwargs):
        return False

    def cleanup_source_on_replica_detach(self, context, replica_info, **kwargs):
        return None

    def restart(self, context, **kwargs):
        if not self.prepared:
            raise GuestError("Redis is not prepared on this instance (no prepare received yet)")
        return None

    def prepare(self, context, **kwargs):
        LOG.info("prepare cast received (ignored by the reference guest): %s", sorted(kwargs))
        self.casts.append(("prepare", kwargs))

    def _private_method(self, context, **kwargs):
        return "private"

    # Modules: Trove's own ModuleManager and PingDriver, as trove/guestagent/datastore/manager.py
    # drives them (module_list, module_apply, module_remove), under the guest's data directory.
    def _modules(self):
        from trove.guestagent.module import module_manager
        from trove.guestagent.module.drivers import ping_driver
        mm = module_manager.ModuleManager
        mm.MODULE_BASE_DIR = os.path.join(self.data_dir, "modules")

        # Trove 26's read_module_result fails on every result file (its JsonCodec read raises
        # "TypeError: can't concat str to bytes"), so its guest resets `created` on each apply
        # and its module_list fails once a module is applied. The reference reads the file as
        # Trove means to.
        def read_module_result(cls, result_file, default=None):
            import json
            try:
                with open(cls.get_result_filename(result_file)) as f:
                    return json.load(f)
            except Exception:  # noqa: BLE001
                if not default:
                    raise
                return default
        mm.read_module_result = classmethod(read_module_result)
        return mm, {"ping": ping_driver.PingDriver()}

    def module_list(self, context, include_contents=False, **kwargs):
        mm, _ = self._modules()
        return mm.read_module_results(is_admin=context.get("is_admin", False),
                                      include_contents=include_contents)

    def module_apply(self, context, modules=None, **kwargs):
        from trove.common import exception
        mm, drivers = self._modules()
        results = []
        modules = [data["module"] for data in modules]
        for module in modules:
            tenant = module.get("tenant", mm.MODULE_APPLY_TO_ALL)
            datastore = module.get("datastore", mm.MODULE_APPLY_TO_ALL)
            ds_version = module.get("datastore_version", mm.MODULE_APPLY_TO_ALL)
            driver = drivers.get(module.get("type"))
            if not driver:
                raise exception.ModuleTypeNotFound(
                    "No driver implemented for module type '%s'" % module.get("type"))
            if datastore and datastore not in (mm.MODULE_APPLY_TO_ALL, "redis"):
                raise exception.ModuleInvalid(reason="Module not valid for datastore redis")
            results.append(mm.apply_module(
                driver, module.get("type"), module.get("name"), tenant, datastore, ds_version,
                module.get("contents"), module.get("id"), module.get("md5"),
                module.get("auto_apply", True), module.get("visible", True),
                module.get("is_admin")))
        return results

    def module_remove(self, context, module=None, **kwargs):
        mm, drivers = self._modules()
        module = module["module"]
        mm.remove_module(drivers[module.get("type")], module.get("type"), module.get("id"),
                         module.get("name"), module.get("datastore"),
                         module.get("datastore_version"))


def heartbeat_loop(transport, conf, guest_id, key, stop):
    section = conf.get("conductor", {})
    topic = section.get("topic", "trove-conductor")
    interval = float(section.get("report_interval", 30))
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic=topic, version="1.0"),
        serializer=ConductorGuestSerializer(key, guest_id))
    while not stop.is_set():
        ctxt = lib.liberty_context()
        ctxt["request_id"] = "req-" + str(uuid.uuid4())
        try:
            client.cast(ctxt, "heartbeat", instance_id=guest_id,
                        payload={"service_status": "new"}, sent=time.time())
            LOG.debug("heartbeat sent to %s", topic)
        except Exception:  # noqa: BLE001
            LOG.exception("heartbeat failed")
        stop.wait(interval)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=False)
    opts = ap.parse_args()
    conf = load_config(opts.config)

    level = str(conf.get("log", {}).get("level", "info")).upper()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LOG.setLevel(getattr(logging, level, logging.INFO))

    rpc = conf.get("rpc", {})
    guest = conf.get("guest", {})
    guest_id = guest.get("id")
    if not guest_id:
        sys.exit("reference_guest: [guest] id is required")
    key = guest.get("instance_rpc_encr_key") or None

    oconf = cfg.ConfigOpts()
    oconf([], project="reference-guest")
    lib.register_tracing_opts(oconf)
    oslo_messaging.set_transport_defaults(rpc.get("control_exchange", "openstack"))
    transport = oslo_messaging.get_rpc_transport(
        oconf, url=rpc.get("transport_url", "rabbit://guest:guest@127.0.0.1:5672/"))

    manager = Manager(conf)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic="guestagent.%s" % guest_id, server=guest_id),
        [manager], serializer=GuestSerializer(key),
        access_policy=dispatcher.DefaultRPCAccessPolicy)

    stop = threading.Event()

    def on_signal(signum, frame):
        LOG.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server.start()
    LOG.info("serving guestagent.%s (secure RPC %s)", guest_id, "on" if key else "off")
    hb = threading.Thread(target=heartbeat_loop, args=(transport, conf, guest_id, key, stop),
                          daemon=True)
    hb.start()
    stop.wait()
    LOG.info("exiting")
    # Skip oslo's orderly teardown (server.stop/wait and transport.cleanup take seconds): the
    # broker closes our connections when the process is gone, which is all the tests need.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
