"""A Python oslo.messaging RPC server with the same endpoint as trove-guestagent for the methods the
benchmarks call (rpc_ping, get_latest_txn_id, get_last_txn, get_replication_status), set up the
way trove/cmd/guest.py sets up Trove's guest agent (topic guestagent.<id>, server <id>, control
exchange trove, endpoint version 1.3, DefaultRPCAccessPolicy, threading executor), reading Redis
with redis-py as Trove's Redis guest did, and casting heartbeat() to trove-conductor every
--report-interval seconds.

    python -m trovebench.py_guest --id ID --url rabbit://... --redis-port P [--import-trove]

--import-trove also imports Trove's own guest agent modules (trove.guestagent.*, trove.common.*),
as the real Python guest process has them loaded; the benchmarks say which mode they used.
"""

import argparse
import logging
import os
import sys
import threading
import time
import uuid

import oslo_messaging
import redis
from oslo_config import cfg
from oslo_messaging.rpc import dispatcher

TROVE_MODULES = [
    "trove.common.cfg",
    "trove.common.rpc.service",
    "trove.common.rpc.secure_serializer",
    "trove.guestagent.api",
    "trove.guestagent.datastore.manager",
    "trove.guestagent.datastore.service",
    "trove.guestagent.strategies.replication",
]


def register_tracing_opts(conf):
    import importlib
    for module, attr in (("oslo_messaging._metrics.client", "oslo_messaging_metrics"),
                         ("oslo_messaging._tracing.client", "oslo_messaging_tracing")):
        try:
            opts = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        conf.register_opts(opts, group=attr)


def info_replication(con):
    return con.info("replication")


class Manager:
    target = oslo_messaging.Target(version="1.3")

    def __init__(self, port):
        self.pool = redis.ConnectionPool(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
        self.port = port

    def _con(self):
        return redis.Redis(connection_pool=self.pool)

    def rpc_ping(self, context, **kwargs):
        return True

    def get_latest_txn_id(self, context, **kwargs):
        r = info_replication(self._con())
        return int(r.get("slave_repl_offset", r.get("master_repl_offset", 0)))

    def get_last_txn(self, context, **kwargs):
        r = info_replication(self._con())
        return [r.get("master_host"), int(r.get("slave_repl_offset", r.get("master_repl_offset", 0)))]

    def get_replication_status(self, context, **kwargs):
        info = self._con().info("all")
        role = "replica" if info.get("role") == "slave" else "master"
        replicas = []
        for k, v in info.items():
            if k.startswith("slave") and isinstance(v, dict):
                replicas.append({"host": v.get("ip"), "port": v.get("port"), "state": v.get("state"),
                                 "offset": v.get("offset"), "lag": v.get("lag")})
        offset = int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)))
        return {
            "role": role, "replid": info.get("master_replid"), "replid2": info.get("master_replid2"),
            "offset": offset, "master_repl_offset": info.get("master_repl_offset"),
            "master_host": info.get("master_host"), "master_port": info.get("master_port"),
            "link_up": (info.get("master_link_status") == "up") if role == "replica" else None,
            "master_last_io_seconds_ago": info.get("master_last_io_seconds_ago"),
            "sync_in_progress": bool(info.get("master_sync_in_progress", 0)),
            "read_only": role == "replica", "fenced": False, "pending_failover_detach": False,
            "replicas": replicas, "sync_full": info.get("sync_full"),
            "sync_partial_ok": info.get("sync_partial_ok"), "run_id": info.get("run_id"),
            "port": self.port, "host": "127.0.0.1",
        }


def heartbeat_loop(transport, guest_id, interval, stop):
    client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="trove-conductor", version="1.0"))
    while not stop.is_set():
        ctxt = {"request_id": "req-" + str(uuid.uuid4()), "is_admin": True}
        try:
            client.cast(ctxt, "heartbeat", instance_id=guest_id, payload={"service_status": "healthy"},
                        sent=time.time())
        except Exception:  # noqa: BLE001
            logging.exception("heartbeat failed")
        stop.wait(interval)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--report-interval", type=float, default=3.0)
    ap.add_argument("--import-trove", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    imported = []
    if a.import_trove:
        import importlib
        for m in TROVE_MODULES:
            try:
                importlib.import_module(m)
                imported.append(m)
            except Exception as e:  # noqa: BLE001
                print("py_guest: cannot import %s: %s" % (m, e), file=sys.stderr)
    conf = cfg.ConfigOpts()
    conf([], project="trovebench-py-guest")
    register_tracing_opts(conf)
    oslo_messaging.set_transport_defaults("trove")
    transport = oslo_messaging.get_rpc_transport(conf, url=a.url)
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic="guestagent.%s" % a.id, server=a.id), [Manager(a.redis_port)],
        executor="threading", access_policy=dispatcher.DefaultRPCAccessPolicy)
    server.start()
    print("consuming (trove modules imported: %d)" % len(imported), file=sys.stderr, flush=True)
    stop = threading.Event()
    threading.Thread(target=heartbeat_loop, args=(transport, a.id, a.report_interval, stop), daemon=True).start()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    os._exit(0)


if __name__ == "__main__":
    main()
