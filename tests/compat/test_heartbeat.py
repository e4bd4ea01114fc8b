"""Guest -> conductor heartbeats, received by a real oslo.messaging RPC server standing in for
Trove's conductor (endpoint `heartbeat(self, ctxt, instance_id, payload, sent)`)."""

import contextlib
import json
import threading
import time
import uuid

import oslo_messaging
from oslo_messaging.rpc import dispatcher

import compat_lib as lib
from conftest import TEST_KEY, new_guest_id

INTERVAL = 2


class ConductorEndpoint:
    target = oslo_messaging.Target(version="1.0")

    def __init__(self):
        self.heartbeats = []
        self.others = []
        self.cond = threading.Condition()

    def heartbeat(self, context, instance_id, payload, sent=None):
        with self.cond:
            self.heartbeats.append({"context": context, "instance_id": instance_id,
                                    "payload": payload, "sent": sent,
                                    "received": time.time()})
            self.cond.notify_all()

    def update_backup(self, context, instance_id, backup_id, sent=None, **fields):
        self.others.append(("update_backup", instance_id, backup_id, fields))

    def report_root(self, context, instance_id, user=None):
        self.others.append(("report_root", instance_id, user))

    def wait_for(self, instance_id, count, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                mine = [h for h in self.heartbeats if h["instance_id"] == instance_id]
                left = end - time.monotonic()
                if len(mine) >= count or left <= 0:
                    return mine
                self.cond.wait(left)


@contextlib.contextmanager
def conductor(transport, topic, keys=None):
    endpoint = ConductorEndpoint()
    serializer = lib.ConductorHostSerializer(keys or {})
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=topic, server="compat-conductor"), [endpoint],
        serializer=serializer,
        access_policy=dispatcher.DefaultRPCAccessPolicy)
    server.start()
    try:
        yield endpoint, serializer
    finally:
        server.stop()
        server.wait()


def check_heartbeat(h, guest):
    assert h["instance_id"] == guest.id
    assert isinstance(h["payload"], dict) and set(h["payload"]) >= {"service_status"}, h
    status = h["payload"]["service_status"]
    assert status in lib.TROVE_STATUS_DESCRIPTIONS, (
        "service_status %r is not one of Trove's status descriptions" % (status,))
    sent = h["sent"]
    assert isinstance(sent, (int, float)) and not isinstance(sent, bool), (
        "sent must be a number (epoch seconds), got %r" % (sent,))
    assert abs(sent - h["received"]) < 60, "sent %r is far from now %r" % (sent, h["received"])


def test_heartbeat_plain(transport, make_guest):
    """The agent heartbeats to topic trove-conductor every report_interval seconds, with a
    context a Liberty conductor accepts."""
    with conductor(transport, "trove-conductor") as (ep, _):
        g = make_guest(conductor_topic="trove-conductor", report_interval=INTERVAL,
                       name="hb")
        beats = ep.wait_for(g.id, 1, timeout=INTERVAL + 10)
        assert beats, "no heartbeat from %s on topic trove-conductor within %ds" % (
            g.id, INTERVAL + 10)
        check_heartbeat(beats[0], g)
        # instance_id (ConductorHostSerializer) and client_timeout (oslo's unpack_context)
        # are added on the receiving side; everything else came from the agent.
        extra = (set(beats[0]["context"]) - {"instance_id", "client_timeout"}
                 - lib.LIBERTY_CONTEXT_KEYS)
        assert not extra, ("heartbeat context has keys a Liberty conductor's "
                           "TroveContext.from_dict rejects: %s" % sorted(extra))
        beats = ep.wait_for(g.id, 2, timeout=2 * INTERVAL + 5)
        assert len(beats) >= 2, "only one heartbeat within %ds (report_interval %d)" % (
            2 * INTERVAL + 5, INTERVAL)
        for b in beats:
            check_heartbeat(b, g)
        gap = beats[1]["received"] - beats[0]["received"]
        assert gap < INTERVAL + 4, "heartbeats %.1fs apart with report_interval %d" % (
            gap, INTERVAL)
        assert beats[1]["sent"] >= beats[0]["sent"]


def test_heartbeat_encrypted(transport, make_guest, target):
    """With an instance key, every argument travels as the JSON string
    {"entity": <b64>, "csz-instance-id": <id>} and the context as {"context": <b64>,
    "csz-instance-id": <id>} (Trove's ConductorGuestSerializer)."""
    topic = "trove-conductor-compat-" + uuid.uuid4().hex[:8]
    gid = new_guest_id(target, "hbenc")
    with conductor(transport, topic, keys={gid: TEST_KEY}) as (ep, ser):
        g = make_guest(key=TEST_KEY, conductor_topic=topic, report_interval=INTERVAL,
                       guest_id=gid)
        beats = ep.wait_for(g.id, 1, timeout=INTERVAL + 10)
        assert beats, ("no (decodable) heartbeat from %s within %ds; raw messages seen: %r"
                       % (g.id, INTERVAL + 10, ser.raw[:6]))
        check_heartbeat(beats[0], g)
        assert ser.raw, "nothing recorded"
        contexts = [v for kind, v in ser.raw if kind == "context"]
        entities = [v for kind, v in ser.raw if kind == "entity"]
        assert contexts and entities
        for c in contexts:
            # (client_timeout is added by oslo's unpack_context on the receiving side)
            assert set(c) - {"client_timeout"} == {"context", "csz-instance-id"}, (
                "context on the wire: %r" % c)
            assert c["csz-instance-id"] == g.id
            assert isinstance(lib.decrypt_json(c["context"], TEST_KEY), dict)
        for e in entities:
            assert isinstance(e, str), "argument not wrapped as a JSON string: %r" % (e,)
            w = json.loads(e)
            assert set(w) == {"entity", "csz-instance-id"}, w
            assert w["csz-instance-id"] == g.id
            lib.decrypt_json(w["entity"], TEST_KEY)
        # instance_id, payload and sent were all wrapped
        assert len(entities) >= 3

