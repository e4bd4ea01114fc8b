"""Queues declared by others first: Trove's taskmanager creates the guest's queues before the
guest boots (`_create_guest_queue`: an oslo RPC server on Target(topic=guestagent.<id>,
server=<id>) with no endpoints, started and stopped), then casts `prepare` into them. The agent
must declare the same queues with the same properties (else RabbitMQ refuses with
PRECONDITION_FAILED) and consume what is already waiting there."""

import threading
import time

import oslo_messaging

from conftest import new_guest_id


def create_guest_queue(transport, guest_id):
    """What trove/taskmanager/models.py _create_guest_queue() does."""
    target = oslo_messaging.Target(topic="guestagent." + guest_id, server=guest_id,
                                   version="1.0")
    server = oslo_messaging.get_rpc_server(transport, target, [])
    server.start()
    server.stop()
    server.wait()


def test_queue_created_by_taskmanager_first(transport, make_guest, target, ctx):
    gid = new_guest_id(target, "preq")
    create_guest_queue(transport, gid)
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="guestagent." + gid, version="1.0"))

    # A cast and a call published before the guest exists wait in the pre-created queue.
    client.cast(ctx, "rpc_ping")
    result = {}

    def early_call():
        try:
            result["value"] = client.prepare(timeout=40).call(ctx, "rpc_ping")
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    th = threading.Thread(target=early_call, daemon=True)
    th.start()
    time.sleep(0.5)  # the call is in the queue before the guest starts

    g = make_guest(guest_id=gid, name="preq")
    th.join(timeout=45)
    assert not th.is_alive(), "the call queued before the guest started was never answered"
    assert "error" not in result, "queued call failed: %r" % (result.get("error"),)
    assert result.get("value") is True
    assert g.alive()
    assert g.client().call(ctx, "rpc_ping") is True


def test_taskmanager_recreates_queue_while_guest_runs(transport, guest, ctx):
    """Trove may run _create_guest_queue again (e.g. on a rebuild) while the guest consumes:
    the redeclaration must not disturb the guest."""
    create_guest_queue(transport, guest.id)
    assert guest.alive()
    assert guest.client().call(ctx, "rpc_ping") is True
