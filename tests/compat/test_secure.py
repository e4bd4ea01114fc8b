"""Trove's secure RPC (instance_rpc_encr_key): SecureSerializer between caller and guest.

The caller side is compat_lib.SecureSerializer (Trove's algorithm on `cryptography`), checked
first against the captured enc-* vectors so the rest of the module can trust it."""

import json

import pytest

import oslo_messaging

import compat_lib as lib
from compat_lib import first_line
from conftest import ROOT, TEST_KEY

try:
    from trove.common import exception as trove_exception
except Exception:  # noqa: BLE001
    trove_exception = None

WIRE_DIRS = [ROOT / "tests/data/wire"]


def wire(name):
    for d in WIRE_DIRS:
        if (d / name).exists():
            return json.loads((d / name).read_text())
    pytest.fail("captured vector %s not found in %s" % (name, [str(d) for d in WIRE_DIRS]),
                pytrace=False)


def test_crypto_matches_captured_vectors():
    req = wire("enc-01-rpc_ping-call-request.json")
    msg = req["oslo_message"]
    assert set(k for k in msg if k.startswith("_context_")) == {"_context_context"}
    assert lib.decrypt_json(msg["_context_context"], TEST_KEY) == req["decrypted"]["context"]
    rep = wire("enc-02-get_replication_snapshot-call-reply.json")
    assert lib.decrypt_json(rep["oslo_message"]["result"], TEST_KEY) == rep["decrypted"]["result"]
    req = wire("enc-02-get_replication_snapshot-call-request.json")
    for name, value in req["oslo_message"]["args"].items():
        assert lib.decrypt_json(value, TEST_KEY) == req["decrypted"]["args"][name], name
    # our encryption round-trips and is randomised (fresh IV each time)
    a, b = lib.encrypt_json({"x": 1}, TEST_KEY), lib.encrypt_json({"x": 1}, TEST_KEY)
    assert a != b and lib.decrypt_json(a, TEST_KEY) == {"x": 1}
    with pytest.raises(ValueError):
        lib.decrypt_json(a, "another-key-another-key-another-k")


def test_encrypted_ping(secure_guest, ctx):
    assert secure_guest.client().call(ctx, "rpc_ping") is True


def test_encrypted_call_with_args(secure_guest, ctx):
    stats = secure_guest.client().call(ctx, "get_filesystem_stats", fs_path=None)
    assert isinstance(stats, dict) and {"total", "free", "used"} <= set(stats), stats


REPLICA_INFO = {"master": {"host": "127.0.0.1", "port": 6379, "requirepass": None}}


def test_encrypted_null_result(secure_guest, ctx):
    """cleanup_source_on_replica_detach: a no-op returning None on a Redis guest (no Redis
    needed); the None travels encrypted."""
    assert secure_guest.client().call(ctx, "cleanup_source_on_replica_detach",
                                      replica_info=REPLICA_INFO) is None


def test_encrypted_reply_on_the_wire(secure_guest, raw):
    """Raw view: the request carries only _context_context; the reply result is
    base64(IV || AES(json)) -- even a null result -- and decrypts under the instance key."""
    ctxt = {"context": lib.encrypt_json(lib.newest_context(), TEST_KEY)}
    for method, args, want in (
            ("rpc_ping", {}, True),
            ("cleanup_source_on_replica_detach",
             {"replica_info": lib.encrypt_json(REPLICA_INFO, TEST_KEY)}, None)):
        msg = lib.raw_message(method, args=args, context=ctxt)
        replies = raw.call(secure_guest.topic, msg)
        assert len(replies) == 1, replies
        reply = replies[0][0]
        assert reply["failure"] is None, lib.failure_of(reply)
        assert isinstance(reply["result"], str), "result not encrypted: %r" % (reply["result"],)
        assert lib.decrypt_json(reply["result"], TEST_KEY) == want


def test_plain_argument_values_tolerated(secure_guest, raw):
    """Trove's deserializer falls back to the raw value when an argument does not decrypt
    (e.g. an int or null sent in clear)."""
    ctxt = {"context": lib.encrypt_json(lib.newest_context(), TEST_KEY)}
    msg = lib.raw_message("get_filesystem_stats", args={"fs_path": None}, context=ctxt)
    replies = raw.call(secure_guest.topic, msg)
    assert len(replies) == 1
    reply = replies[0][0]
    assert reply["failure"] is None, lib.failure_of(reply)
    assert "total" in lib.decrypt_json(reply["result"], TEST_KEY)


def assert_clear_guest_failure(e, words):
    """A failure the caller can read: GuestError (rebuilt from trove.common.exception, or a
    RemoteError naming it) whose message mentions one of `words` -- not garbage."""
    if trove_exception is not None and isinstance(e, trove_exception.TroveError):
        msg = first_line(e)
        cls = type(e).__name__
    elif isinstance(e, oslo_messaging.RemoteError):
        msg, cls = e.value or "", e.exc_type
    else:
        msg, cls = first_line(e), type(e).__name__
    assert cls in ("GuestError_Remote", "GuestError"), (
        "expected a GuestError, got %s: %s" % (cls, msg))
    assert any(w in msg.lower() for w in words), "message does not say why: %r" % msg
    return msg


def test_wrong_key_fails_clearly(secure_guest, ctx):
    wrong = "ZYXWVUTSRQPONMLKJIHGFEDCBA987654"
    try:
        result = secure_guest.client(key=wrong).call(ctx, "rpc_ping")
    except Exception as e:  # noqa: BLE001
        assert_clear_guest_failure(e, ("decrypt", "key", "encrypt"))
    else:
        pytest.fail("a call under the wrong key returned %r instead of failing clearly"
                    % (result,))


def test_plaintext_call_to_secure_guest_fails_clearly(secure_guest, ctx):
    try:
        result = secure_guest.client(key=None).call(ctx, "rpc_ping")
    except Exception as e:  # noqa: BLE001
        assert_clear_guest_failure(e, ("encrypt", "decrypt", "key", "secure"))
    else:
        pytest.fail("a plaintext call to a guest with an instance key returned %r "
                    "instead of failing clearly" % (result,))


def test_secure_guest_keeps_serving_after_bad_calls(secure_guest, ctx):
    for key in ("ZYXWVUTSRQPONMLKJIHGFEDCBA987654", None):
        with pytest.raises(Exception):
            secure_guest.client(key=key).call(ctx, "rpc_ping")
    assert secure_guest.client().call(ctx, "rpc_ping") is True


def test_failures_are_not_encrypted(secure_guest, ctx):
    with pytest.raises(oslo_messaging.RemoteError) as ei:
        secure_guest.client().call(ctx, "no_such_method")
    assert ei.value.exc_type == "NoSuchMethod"
    assert ei.value.value == "Endpoint does not support RPC method no_such_method"
    with pytest.raises(TypeError) as ei:
        secure_guest.client().call(ctx, "wait_for_txn")
    assert "'txn'" in first_line(ei.value)
