"""Trove's own guest API client (trove.guestagent.api.API from the trove 26.0.0 package, with
trove.rpc, its SecureSerializer and its error mapping) against the guests.

The only thing replaced is API.get_client's database lookup of the instance key."""

import pytest

import oslo_messaging

from conftest import TEST_KEY


@pytest.fixture(scope="session")
def trove(rabbit_url):
    """trove.* modules, with trove.rpc initialised on the default broker."""
    try:
        from trove.common import cfg as trove_cfg
        from trove.common import context as trove_context
        from trove.common import exception as trove_exception
        from trove.guestagent import api as guest_api
        from trove import rpc as trove_rpc
    except Exception as e:  # noqa: BLE001
        pytest.fail("the trove package (26.0.0) is not importable in this venv (%s: %s); "
                    "scripts/pyenv.sh installs it" % (type(e).__name__, e), pytrace=False)

    conf = trove_cfg.CONF
    if not getattr(conf, "_args", None) and not conf._namespace:
        conf(args=[], project="trove", default_config_files=[])
    conf.register_opts(oslo_messaging.transport._transport_opts)
    trove_rpc.set_defaults("trove")
    conf.set_override("transport_url", rabbit_url)
    conf.set_override("control_exchange", "trove")
    # Trove's defaults are 15 s / 180 s; a guest that does not answer should fail the test
    # in reasonable time (it then surfaces as GuestTimeout).
    conf.set_override("agent_call_high_timeout", 10)
    if trove_rpc.TRANSPORT is None:
        trove_rpc.init(conf)

    class CompatGuestAPI(guest_api.API):
        """Trove's guest API with the instance key given instead of read from the DB."""

        def __init__(self, context, instance_id, key=None):
            self._compat_key = key
            super().__init__(context, instance_id)

        def get_client(self, target, version_cap, serializer=None):
            return trove_rpc.get_client(target, key=self._compat_key, version_cap=version_cap,
                                        serializer=serializer)

    class Trove:
        exception = trove_exception
        API = CompatGuestAPI

        @staticmethod
        def context():
            return trove_context.TroveContext(user_id="harness-user", project_id="harness-project",
                                              is_admin=True)

    return Trove  # trove_rpc.cleanup() is skipped like the other transports' (see conftest)


def test_trove_api_rpc_ping(trove, guest):
    api = trove.API(trove.context(), guest.id)
    assert api.rpc_ping() is True


def test_trove_api_get_volume_info(trove, guest):
    info = trove.API(trove.context(), guest.id).get_volume_info()
    assert {"block_size", "total_blocks", "free_blocks", "total", "free", "used"} <= set(info)


def test_trove_api_backup_required_for_replication(trove, guest):
    assert trove.API(trove.context(), guest.id).backup_required_for_replication() is False


def test_trove_api_cast_then_call(trove, guest):
    """A cast the Redis guest does not implement (create_user) is dropped by the guest (logged
    there); Trove's cast returns and the guest keeps serving."""
    api = trove.API(trove.context(), guest.id)
    assert api.create_user([]) is None
    assert api.rpc_ping() is True


def test_trove_api_restart_unprepared_is_guest_error(trove, make_guest):
    """restart before prepare: Trove raises GuestError with the guest's message (a guest that
    does not answer within 10 s gives GuestTimeout instead, and fails this test)."""
    guest = make_guest(name="restart")
    api = trove.API(trove.context(), guest.id)
    with pytest.raises(trove.exception.GuestError) as ei:
        api.restart()
    msg = str(ei.value)
    assert msg.startswith("An error occurred communicating with the guest: "), msg


def test_trove_api_unknown_method_is_guest_error(trove, guest):
    """get_txn_count: deprecated, not implemented by the Redis guest -> NoSuchMethod ->
    RemoteError -> Trove's GuestError carrying oslo's message."""
    api = trove.API(trove.context(), guest.id)
    with pytest.raises(trove.exception.GuestError) as ei:
        api._call("get_txn_count", api.agent_high_timeout, version=api.API_BASE_VERSION)
    assert "Endpoint does not support RPC method get_txn_count" in str(ei.value)


def test_trove_api_encrypted(trove, secure_guest):
    api = trove.API(trove.context(), secure_guest.id, key=TEST_KEY)
    assert api.rpc_ping() is True
    assert "total" in api.get_volume_info()
    # a None result, encrypted by the guest and decrypted by Trove's SecureSerializer
    assert api._call("cleanup_source_on_replica_detach", api.agent_high_timeout,
                     version=api.API_BASE_VERSION,
                     replica_info={"master": {"host": "127.0.0.1", "port": 6379,
                                              "requirepass": None}}) is None


def test_trove_api_wrong_key_is_guest_error(trove, secure_guest):
    api = trove.API(trove.context(), secure_guest.id, key="ZYXWVUTSRQPONMLKJIHGFEDCBA987654")
    try:
        result = api.rpc_ping()
    except trove.exception.GuestError as e:
        assert any(w in str(e).lower() for w in ("decrypt", "key", "encrypt")), str(e)
    else:
        pytest.fail("rpc_ping under the wrong key returned %r" % (result,))


def test_trove_api_no_key_to_secure_guest_is_guest_error(trove, secure_guest):
    api = trove.API(trove.context(), secure_guest.id, key=None)
    with pytest.raises(trove.exception.GuestError):
        api.rpc_ping()


def _module(trove_id, name, kind, contents):
    """A module as Trove's API hands it to the guest (DetailedModuleView(...).data(True))."""
    import base64
    return {"module": {
        "id": trove_id, "name": name, "type": kind, "description": None, "tenant_id": None,
        "datastore_id": None, "datastore_version_id": None, "auto_apply": False,
        "priority_apply": False, "apply_order": 5, "is_admin": False,
        "md5": "0" * 32, "visible": True, "created": "2026-01-01T00:00:00",
        "updated": "2026-01-01T00:00:00", "tenant": "All", "datastore": "redis",
        "datastore_version": "all", "live_update": False,
        "contents": base64.b64encode(contents.encode()).decode()}}


def test_trove_api_modules(trove, make_guest):
    """module_apply / module_list / module_remove through Trove's guest API: the reference runs
    Trove's own ModuleManager and PingDriver, and the agent must answer the same."""
    import base64
    guest = make_guest(name="modules")
    api = trove.API(trove.context(), guest.id)
    assert api.module_list(include_contents=False) == []
    results = api.module_apply([_module("11111111-aaaa", "hello", "ping", "message=Hello there\n")])
    assert len(results) == 1
    r = results[0]
    assert set(r) == {"type", "name", "datastore", "datastore_version", "tenant", "id", "md5",
                      "status", "message", "created", "updated", "removed", "auto_apply",
                      "visible", "is_admin", "contents"}
    assert (r["status"], r["message"], r["name"], r["type"], r["removed"]) == \
        ("OK", "Hello there", "hello", "ping", None)
    assert (r["tenant"], r["datastore"], r["datastore_version"]) == ("All", "redis", "all")
    failed = api.module_apply([_module("22222222-bbbb", "silent", "ping", "# hi\nno=message\n")])
    assert (failed[0]["status"], failed[0]["message"]) == \
        ("ERROR", "Message not found in contents file")
    # Not key=value: Trove's KeyValueCodec fails the read, and the driver says so.
    unreadable = api.module_apply([_module("22222222-bbbb", "silent", "ping", "no message\n")])
    assert (unreadable[0]["status"], unreadable[0]["message"]) == \
        ("ERROR", "Could not extract ping message: not enough values to unpack (expected 2, got 1)")
    assert unreadable[0]["created"] == failed[0]["created"]  # the same module, applied again
    listed = api.module_list(include_contents=True)
    assert sorted(m["id"] for m in listed) == ["11111111-aaaa", "22222222-bbbb"]
    hello = next(m for m in listed if m["id"] == "11111111-aaaa")
    assert base64.b64decode(hello["contents"]) == b"message=Hello there\n"
    with pytest.raises(Exception) as ei:
        api.module_apply([_module("33333333-cccc", "nr", "new_relic_license", "k=v")])
    assert "No driver implemented for module type 'new_relic_license'" in str(ei.value)
    assert api.module_remove(_module("11111111-aaaa", "hello", "ping", "")) is None
    assert [m["id"] for m in api.module_list(include_contents=False)] == ["22222222-bbbb"]
    with pytest.raises(Exception) as ei:
        api.module_remove(_module("44444444-dddd", "never", "ping", ""))
    assert "Module 'never' has not been applied" in str(ei.value)
