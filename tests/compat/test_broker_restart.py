"""A broker restart (full stop/start of a RabbitMQ node of our own: every connection dropped,
transient queues and exchanges gone) must not need a guest restart: the guest reconnects,
redeclares its queues and answers the next calls."""

import time

import oslo_messaging

import compat_lib as lib

RECOVERY_TIMEOUT = 45


def test_guest_recovers_after_broker_restart(restart_broker, make_guest, ctx):
    g = make_guest(url=restart_broker.url, name="brk")
    client = g.client(timeout=5)
    assert client.call(ctx, "rpc_ping") is True
    pid = g.proc.pid

    broker_pid = restart_broker.pid()
    restart_broker.restart()
    assert restart_broker.pid() != broker_pid, "the broker's Erlang VM was not restarted"
    t0 = time.monotonic()
    errors = []
    ok = False
    while time.monotonic() - t0 < RECOVERY_TIMEOUT:
        assert g.alive(), "the guest exited (code %s) after the broker restart" % (
            g.proc.returncode,)
        try:
            if g.client(timeout=3).call(ctx, "rpc_ping") is True:
                ok = True
                break
        except oslo_messaging.MessagingTimeout:
            errors.append("timeout")
        except Exception as e:  # noqa: BLE001  (connection errors while the client reconnects)
            errors.append("%s: %s" % (type(e).__name__, lib.first_line(e)))
            time.sleep(0.5)
    took = time.monotonic() - t0
    assert ok, ("no rpc_ping answer within %ds after the broker restart (attempts: %s)"
                % (RECOVERY_TIMEOUT, errors[-5:]))
    assert g.proc.pid == pid and g.alive()
    # Steady again: several calls in a row, and the queue is really being consumed.
    for _ in range(3):
        assert g.client(timeout=5).call(ctx, "rpc_ping") is True
    print("recovered %.1fs after the broker came back (%d failed attempts)" % (took, len(errors)))

