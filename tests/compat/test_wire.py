"""The wire itself: raw messages published with kombu, replies inspected as they arrive.

Covers what oslo.messaging 18's client cannot send or hides: Liberty-era requests (no
`_timeout`, Liberty context keys, reply queue bound to a `reply_<uuid>` direct exchange),
bare messages without the 2.0 envelope, duplicate deliveries, and the exact reply/failure shape."""

import copy
import re

import pytest

import compat_lib as lib
from compat_lib import PY_MISSING_ARG, failure_of

REPLY_KEYS = {"result", "failure", "ending", "_msg_id", "_unique_id"}
FAILURE_KEYS = {"class", "module", "message", "tb", "args", "kwargs"}
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def one_reply(replies, what):
    assert replies, "no reply to %s within the timeout" % what
    assert len(replies) == 1, "expected exactly one reply to %s, got %d: %r" % (
        what, len(replies), [m for m, _ in replies])
    return replies[0]


def test_reply_shape(guest, raw):
    msg = lib.raw_message("rpc_ping")
    reply, kmsg = one_reply(raw.call(guest.topic, msg), "rpc_ping")
    assert set(reply) == REPLY_KEYS, reply
    assert reply["result"] is True
    assert reply["failure"] is None
    assert reply["ending"] is True
    assert reply["_msg_id"] == msg["_msg_id"]
    assert HEX32.match(reply["_unique_id"]) and reply["_unique_id"] != msg["_unique_id"], reply
    assert kmsg.content_type == "application/json", kmsg.content_type
    assert "oslo.message" in kmsg.payload and kmsg.payload.get("oslo.version") == "2.0", (
        "reply body must be the 2.0 envelope: %r" % (kmsg.body,))


def test_liberty_style_call(guest, raw):
    """Liberty (oslo.messaging 2.5): Liberty context keys, no `_timeout`, version 1.0, a reply
    queue bound to its own direct exchange. One reply with ending=True satisfies it."""
    msg = lib.raw_message("rpc_ping", context=lib.liberty_context(), timeout_key=False)
    assert "_timeout" not in msg
    reply, _ = one_reply(raw.call(guest.topic, msg), "a Liberty-style rpc_ping")
    assert reply["result"] is True and reply["failure"] is None and reply["ending"] is True


def test_liberty_style_call_with_args(guest, raw):
    msg = lib.raw_message("get_filesystem_stats", args={"fs_path": None},
                          context=lib.liberty_context(), timeout_key=False)
    reply, _ = one_reply(raw.call(guest.topic, msg), "a Liberty-style get_filesystem_stats")
    assert reply["failure"] is None, failure_of(reply)
    assert {"block_size", "total", "free", "used"} <= set(reply["result"])


def test_message_without_version_means_1_0(guest, raw):
    msg = lib.raw_message("rpc_ping")
    del msg["version"]
    reply, _ = one_reply(raw.call(guest.topic, msg), "rpc_ping without version")
    assert reply["result"] is True, failure_of(reply)


def test_bare_message_without_envelope(guest, raw):
    """Receivers accept a body that is the message dict itself (pre-envelope 1.0 format)."""
    msg = lib.raw_message("rpc_ping")
    reply, _ = one_reply(raw.call(guest.topic, msg, wrap=False), "a bare rpc_ping")
    assert reply["result"] is True, failure_of(reply)


def test_duplicate_unique_id_is_processed_once(guest, raw):
    """oslo remembers the last 16 `_unique_id`s and drops redeliveries."""
    msg = lib.raw_message("rpc_ping")
    raw.publish(guest.topic, copy.deepcopy(msg), expiration=10)
    raw.publish(guest.topic, copy.deepcopy(msg), expiration=10)
    replies = raw.wait_replies(msg["_msg_id"], timeout=10, grace=1.5)
    assert len(replies) == 1, "duplicate delivery answered %d times" % len(replies)


def test_context_is_not_required(guest, raw):
    msg = lib.raw_message("rpc_ping", context={})
    reply, _ = one_reply(raw.call(guest.topic, msg), "rpc_ping without context")
    assert reply["result"] is True, failure_of(reply)


FAILURES = {
    "no_such_method": (
        lambda: lib.raw_message("no_such_method"),
        {"class": "NoSuchMethod", "module": "oslo_messaging.rpc.dispatcher",
         "message": "Endpoint does not support RPC method no_such_method",
         "args": ["Endpoint does not support RPC method no_such_method"], "kwargs": {}}),
    "private_method": (
        lambda: lib.raw_message("_private_method"),
        {"class": "NoSuchMethod", "module": "oslo_messaging.rpc.dispatcher",
         "message": "Endpoint does not support RPC method _private_method",
         "args": ["Endpoint does not support RPC method _private_method"], "kwargs": {}}),
    "version_1.4": (
        lambda: lib.raw_message("rpc_ping", version="1.4"),
        {"class": "UnsupportedVersion", "module": "oslo_messaging.rpc.dispatcher",
         "message": "Endpoint does not support RPC version 1.4. Attempted method: rpc_ping",
         "args": ["Endpoint does not support RPC version 1.4. Attempted method: rpc_ping"],
         "kwargs": {}}),
    "version_2.0": (
        lambda: lib.raw_message("rpc_ping", version="2.0"),
        {"class": "UnsupportedVersion", "module": "oslo_messaging.rpc.dispatcher",
         "message": "Endpoint does not support RPC version 2.0. Attempted method: rpc_ping",
         "args": ["Endpoint does not support RPC version 2.0. Attempted method: rpc_ping"],
         "kwargs": {}}),
    "missing_arg": (
        lambda: lib.raw_message("wait_for_txn"),
        {"class": "TypeError", "module": "builtins", "message": PY_MISSING_ARG,
         "args": [PY_MISSING_ARG], "kwargs": {}}),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_shape(guest, raw, case):
    """The `failure` string parses to oslo's serialize_remote_exception() dict with the same
    class, module, message, args and kwargs as oslo's own server sends (captures 13-16)."""
    make, expected = FAILURES[case]
    msg = make()
    reply, _ = one_reply(raw.call(guest.topic, msg), case)
    assert set(reply) == REPLY_KEYS, reply
    assert reply["result"] is None and reply["ending"] is True
    assert isinstance(reply["failure"], str), "failure must be a JSON *string*: %r" % (
        reply["failure"],)
    failure = failure_of(reply)
    assert set(failure) == FAILURE_KEYS, failure
    assert isinstance(failure["tb"], list) and all(isinstance(x, str) for x in failure["tb"])
    for k in ("class", "module", "message", "kwargs"):
        want = expected[k]
        if isinstance(want, re.Pattern):
            assert want.match(failure[k]), (k, failure[k])
        else:
            assert failure[k] == want, (k, failure[k], want)
    assert len(failure["args"]) == 1
    want = expected["args"][0]
    if isinstance(want, re.Pattern):
        assert want.match(failure["args"][0]), failure["args"]
    else:
        assert failure["args"] == expected["args"]


def test_failure_reply_goes_to_reply_queue_once(guest, raw):
    """A failing call still produces exactly one reply, and later calls work."""
    msg = lib.raw_message("wait_for_txn")
    one_reply(raw.call(guest.topic, msg), "wait_for_txn without txn")
    reply, _ = one_reply(raw.call(guest.topic, lib.raw_message("rpc_ping")), "rpc_ping")
    assert reply["result"] is True
