"""RPC semantics seen through the real oslo.messaging 18.3.1 client (what Trove's taskmanager uses).

Every test runs against the reference guest (oslo.messaging's own server) and the Rust agent."""

import time
import uuid

import pytest

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

import compat_lib as lib
from compat_lib import PY_MISSING_ARG, first_line

try:
    from trove.common import exception as trove_exception
except Exception:  # noqa: BLE001  (trove is optional for this module; see test_remote_trove_exception)
    trove_exception = None

FS_KEYS = {"block_size", "total_blocks", "free_blocks", "total", "free", "used"}


def test_rpc_ping_call_returns_true(guest, ctx):
    assert guest.client().call(ctx, "rpc_ping") is True


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3"])
def test_every_supported_version_is_served(guest, ctx, version):
    assert guest.client(version=version).call(ctx, "rpc_ping") is True


def test_cast_gets_no_reply_and_agent_keeps_serving(guest, ctx):
    client = guest.client()
    # Casts return nothing; failures of casts stay on the server.
    assert client.cast(ctx, "rpc_ping") is None
    assert client.cast(ctx, "rpc_ping", extra="ignored") is None
    assert client.cast(ctx, "no_such_method_cast") is None
    assert guest.client(version="2.0").cast(ctx, "rpc_ping") is None
    assert client.cast(ctx, "wait_for_txn") is None  # missing argument, on a cast
    time.sleep(0.5)
    assert guest.alive(), "the guest process died after the casts"
    assert client.call(ctx, "rpc_ping") is True


def test_cast_sends_nothing_back(guest, raw):
    """A cast carries no _msg_id / _reply_q: nothing may be published for it. We give the raw
    message our reply queue's name in an unrelated key and check the queue stays empty."""
    msg = lib.raw_message("rpc_ping", call=False)
    raw.publish(guest.topic, msg)
    bad = lib.raw_message("no_such_method_cast", call=False)
    raw.publish(guest.topic, bad)
    raw.drain(1.0)
    assert raw.replies == [], "got messages for a cast: %r" % [m for m, _ in raw.replies]
    # ... and the guest still answers calls.
    replies = raw.call(guest.topic, lib.raw_message("rpc_ping"), timeout=10)
    assert [m.get("result") for m, _ in replies] == [True]


def test_call_timeout_on_unserved_topic(transport, ctx):
    """A call nobody consumes ends in MessagingTimeout after the call's timeout."""
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="guestagent.nobody-" + uuid.uuid4().hex,
                                         version="1.0")).prepare(timeout=2)
    t0 = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        client.call(ctx, "rpc_ping")
    assert 1.5 <= time.monotonic() - t0 < 10


@pytest.mark.parametrize("method", ["no_such_method", "get_txn_count", "_private_method",
                                    "__init__", "_"])
def test_no_such_method(guest, ctx, method):
    with pytest.raises(oslo_messaging.RemoteError) as ei:
        guest.client().call(ctx, method)
    e = ei.value
    assert e.exc_type == "NoSuchMethod"
    assert e.value == "Endpoint does not support RPC method %s" % method


@pytest.mark.parametrize("version", ["1.4", "2.0", "0.9", "1.10"])
def test_unsupported_version(guest, ctx, version):
    with pytest.raises(oslo_messaging.RemoteError) as ei:
        guest.client(version=version).call(ctx, "rpc_ping")
    e = ei.value
    assert e.exc_type == "UnsupportedVersion"
    assert e.value == ("Endpoint does not support RPC version %s. Attempted method: rpc_ping"
                       % version)


def test_unsupported_version_checked_before_method(guest, ctx):
    """oslo checks versions first: an unknown method at an unsupported version is
    UnsupportedVersion, not NoSuchMethod."""
    with pytest.raises(oslo_messaging.RemoteError) as ei:
        guest.client(version="2.0").call(ctx, "no_such_method")
    assert ei.value.exc_type == "UnsupportedVersion"
    assert ei.value.value == ("Endpoint does not support RPC version 2.0. "
                              "Attempted method: no_such_method")


def test_dispatcher_exceptions_rehydrate_when_allowed(guest, ctx):
    """With oslo_messaging.rpc.dispatcher in the allow-list, the client rebuilds the real
    exception classes (so class, module, args and kwargs must fit their constructors)."""
    exmods = ["trove.common.exception", "oslo_messaging.rpc.dispatcher"]
    with pytest.raises(rpc_dispatcher.NoSuchMethod) as ei:
        guest.client(exmods=exmods).call(ctx, "no_such_method")
    assert type(ei.value).__name__ == "NoSuchMethod_Remote"
    assert first_line(ei.value) == "Endpoint does not support RPC method no_such_method"
    with pytest.raises(rpc_dispatcher.UnsupportedVersion) as ei:
        guest.client(version="1.4", exmods=exmods).call(ctx, "rpc_ping")
    assert type(ei.value).__name__ == "UnsupportedVersion_Remote"
    assert first_line(ei.value) == ("Endpoint does not support RPC version 1.4. "
                                    "Attempted method: rpc_ping")


def test_missing_required_argument(guest, ctx):
    with pytest.raises(TypeError) as ei:
        guest.client().call(ctx, "wait_for_txn")
    e = ei.value
    # builtins exceptions are rebuilt as the plain class, message + remote traceback in args[0]
    assert type(e) is TypeError
    assert "'txn'" in first_line(e)
    assert PY_MISSING_ARG.match(first_line(e)), (
        "expected Python's wording \"Manager.wait_for_txn() missing 1 required positional "
        "argument: 'txn'\", got %r" % first_line(e))


def test_unknown_kwargs_accepted(guest, ctx):
    client = guest.client()
    assert client.call(ctx, "rpc_ping", extra=1) is True
    stats = client.call(ctx, "get_filesystem_stats", fs_path=None, junk=1)
    assert isinstance(stats, dict) and FS_KEYS <= set(stats), stats


def test_get_filesystem_stats_shape(guest, ctx):
    """What Trove's get_volume_info() sends, and the Redis guest's answer shape."""
    stats = guest.client().call(ctx, "get_filesystem_stats", fs_path=None)
    assert FS_KEYS <= set(stats), stats
    for k in ("block_size", "total_blocks", "free_blocks", "free"):
        assert isinstance(stats[k], int) and not isinstance(stats[k], bool), (k, stats[k])
    for k in ("total", "used"):
        assert isinstance(stats[k], (int, float)) and not isinstance(stats[k], bool), (k, stats)
    assert stats["total"] >= stats["used"] >= 0
    assert stats["free"] <= stats["block_size"] * stats["total_blocks"]


def test_remote_trove_exception(make_guest, ctx):
    """restart before prepare fails (promptly: within 10 s) with a Trove exception the client
    re-raises readably. (A guest of its own: a failed restart may leave things behind.)"""
    guest = make_guest(name="restart")
    with pytest.raises(Exception) as ei:
        guest.client(timeout=10).call(ctx, "restart")
    e = ei.value
    assert not isinstance(e, oslo_messaging.MessagingTimeout), (
        "restart before prepare got no answer within 10 s")
    prefix = "An error occurred communicating with the guest: "
    if trove_exception is not None:
        assert isinstance(e, trove_exception.GuestError), (
            "expected trove.common.exception.GuestError, got %s.%s: %s"
            % (type(e).__module__, type(e).__name__, e))
        assert type(e).__name__ == "GuestError_Remote"
        assert type(e).__module__ == "trove.common.exception_Remote"
        msg = first_line(e)
    else:
        # trove not installed in this venv: the client cannot import the class and falls
        # back to RemoteError (still a readable failure).
        assert isinstance(e, oslo_messaging.RemoteError), type(e)
        assert e.exc_type == "GuestError"
        msg = e.value
    assert msg.startswith(prefix) and len(msg) > len(prefix) + 5, msg
    assert "Traceback" not in msg


def test_agent_survives_a_burst_of_calls(guest, ctx):
    client = guest.client()
    for i in range(20):
        assert client.call(ctx, "rpc_ping", n=i) is True
