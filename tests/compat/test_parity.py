"""Side by side: the same requests to oslo.messaging's own RPC server (reference guest) and to
the Rust agent must produce the same client-side exceptions and the same failure payloads.

Needs both targets (deselected when TROVE_COMPAT_TARGETS names only one)."""

import oslo_messaging
import pytest

import compat_lib as lib
from compat_lib import first_line, failure_of

pytestmark = pytest.mark.parity

CASES = {
    "no_such_method": dict(method="no_such_method"),
    "private_method": dict(method="_private_method"),
    "dunder_method": dict(method="__init__"),
    "version_1.4": dict(method="rpc_ping", version="1.4"),
    "version_2.0": dict(method="rpc_ping", version="2.0"),
    "missing_arg": dict(method="wait_for_txn"),
    "unsupported_version_and_method": dict(method="no_such_method", version="2.0"),
}


@pytest.fixture(scope="module")
def pair(guest_pool):
    return guest_pool.get("python"), guest_pool.get("rust")


def outcome(guest, ctx, method, version="1.0", exmods=None):
    kw = {} if exmods is None else {"exmods": exmods}
    try:
        result = guest.client(version=version, **kw).call(ctx, method)
    except oslo_messaging.RemoteError as e:
        return ("RemoteError", e.exc_type, e.value)
    except Exception as e:  # noqa: BLE001
        return (type(e).__name__, type(e).__module__, first_line(e))
    return ("result", result)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_client_exception(pair, ctx, case):
    ref, rust = pair
    a = outcome(ref, ctx, **CASES[case])
    b = outcome(rust, ctx, **CASES[case])
    assert a[0] != "result", "reference guest did not fail: %r" % (a,)
    if case == "missing_arg":
        # Class must match; the message must name the argument (exact wording is Python's).
        assert (a[0], a[1]) == (b[0], b[1]) == ("TypeError", "builtins"), (a, b)
        assert "'txn'" in b[2], b
        return
    assert a == b, "reference: %r\nrust:      %r" % (a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_rehydrated_exception(pair, ctx, case):
    """With oslo_messaging.rpc.dispatcher allowed, the client rebuilds the classes themselves."""
    ref, rust = pair
    exmods = ["trove.common.exception", "oslo_messaging.rpc.dispatcher"]
    a = outcome(ref, ctx, exmods=exmods, **CASES[case])
    b = outcome(rust, ctx, exmods=exmods, **CASES[case])
    if case == "missing_arg":
        assert a[:2] == b[:2], (a, b)
        return
    assert a == b, "reference: %r\nrust:      %r" % (a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_failure_payload(pair, ctx, rabbit_url, case):
    ref, rust = pair
    c = CASES[case]
    got = {}
    raw = lib.RawClient(rabbit_url)
    try:
        for g in (ref, rust):
            msg = lib.raw_message(c["method"], version=c.get("version", "1.0"))
            replies = raw.call(g.topic, msg, timeout=10)
            assert len(replies) == 1, "%s: %d replies" % (g.target, len(replies))
            got[g.target] = failure_of(replies[0][0])
    finally:
        raw.close()
    a, b = got["python"], got["rust"]
    assert a is not None and b is not None, got
    assert set(a) == set(b), (sorted(a), sorted(b))
    keys = ("class", "module", "kwargs") if case == "missing_arg" else (
        "class", "module", "message", "args", "kwargs")
    for k in keys:
        assert a[k] == b[k], "%s differs:\nreference: %r\nrust:      %r" % (k, a[k], b[k])


def test_same_reply_for_success(pair, ctx, rabbit_url):
    ref, rust = pair
    raw = lib.RawClient(rabbit_url)
    try:
        shapes = {}
        for g in (ref, rust):
            replies = raw.call(g.topic, lib.raw_message("rpc_ping"), timeout=10)
            assert len(replies) == 1
            m, km = replies[0]
            shapes[g.target] = (sorted(m), m["result"], m["failure"], m["ending"],
                                km.content_type, km.content_encoding)
    finally:
        raw.close()
    assert shapes["python"] == shapes["rust"], shapes
