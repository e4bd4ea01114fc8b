"""Helpers shared by the compatibility suite and the reference guest.

* Trove's secure-RPC crypto (trove/common/crypto_utils.py), its guest-side SecureSerializer and
  the conductor-side ConductorHostSerializer, re-implemented on the `cryptography` package so the
  tests do not depend on Trove being importable.
* Raw AMQP publishing / reply collection with kombu, for messages oslo.messaging's client cannot
  produce (Liberty-era envelopes, bare messages, duplicates) and to look at replies on the wire.
"""

import base64
import hashlib
import json
import os
import re
import socket
import time
import uuid

import oslo_messaging
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

IV_LEN = 16


# --------------------------------------------------------------------------------------------
# Crypto (Trove's crypto_utils)
# --------------------------------------------------------------------------------------------

class DecryptError(ValueError):
    """Raised when a value does not decrypt under the given key."""


def aes_key(instance_key):
    """The AES-256 key: the 32 ASCII hex characters of md5(instance key)."""
    return hashlib.md5(instance_key.encode("utf-8")).hexdigest().encode("ascii")


def encrypt(plaintext, instance_key):
    """base64(IV || AES-256-CBC(PKCS#7-padded plaintext)) as text."""
    if isinstance(plaintext, str):
        plaintext = plaintext.encode("utf-8")
    iv = os.urandom(IV_LEN)
    pad = IV_LEN - len(plaintext) % IV_LEN
    padded = plaintext + bytes((pad,)) * pad
    enc = Cipher(algorithms.AES(aes_key(instance_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(padded) + enc.finalize()).decode("ascii")


def decrypt(b64text, instance_key):
    """Inverse of encrypt(); raises DecryptError (a ValueError) on anything that does not fit."""
    if not isinstance(b64text, str):
        raise DecryptError("not a string: %r" % (b64text,))
    try:
        raw = base64.b64decode(b64text, validate=True)
    except (ValueError, TypeError) as e:
        raise DecryptError("not base64: %s" % e) from None
    if len(raw) < 2 * IV_LEN or len(raw) % IV_LEN:
        raise DecryptError("bad length %d" % len(raw))
    dec = Cipher(algorithms.AES(aes_key(instance_key)), modes.CBC(raw[:IV_LEN])).decryptor()
    padded = dec.update(raw[IV_LEN:]) + dec.finalize()
    pad = padded[-1]
    if not 1 <= pad <= IV_LEN or padded[-pad:] != bytes((pad,)) * pad:
        raise DecryptError("bad padding (wrong key?)")
    return padded[:-pad]


def encrypt_json(value, instance_key):
    return encrypt(json.dumps(value), instance_key)


def decrypt_json(b64text, instance_key):
    plain = decrypt(b64text, instance_key)
    try:
        return json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DecryptError("decrypted bytes are not JSON (wrong key?): %s" % e) from None


# --------------------------------------------------------------------------------------------
# Serializers (oslo_messaging.Serializer interface; contexts are plain dicts)
# --------------------------------------------------------------------------------------------

class DictContextSerializer(oslo_messaging.NoOpSerializer):
    """Passes dict contexts through (what the RPC client and server see)."""

    def serialize_context(self, ctxt):
        return dict(ctxt)

    def deserialize_context(self, ctxt):
        return dict(ctxt)


class SecureSerializer(DictContextSerializer):
    """Trove's SecureSerializer (taskmanager <-> guest), key None = plaintext.

    Like Trove, values that do not decrypt are passed through unchanged (so a caller holding the
    wrong key gets back the raw base64 text, which the tests detect)."""

    def __init__(self, key):
        self.key = key

    def serialize_entity(self, ctxt, entity):
        if self.key is None:
            return entity
        return encrypt_json(entity, self.key)

    def deserialize_entity(self, ctxt, entity):
        if self.key is None:
            return entity
        try:
            return decrypt_json(entity, self.key)
        except ValueError:
            return entity

    def serialize_context(self, ctxt):
        if self.key is None:
            return dict(ctxt)
        return {"context": encrypt_json(dict(ctxt), self.key)}

    def deserialize_context(self, ctxt):
        if self.key is None:
            return dict(ctxt)
        try:
            return decrypt_json(ctxt["context"], self.key)
        except (KeyError, ValueError, TypeError):
            return dict(ctxt)


class ConductorHostSerializer(DictContextSerializer):
    """Trove's conductor-side deserializer for guest -> conductor messages.

    keys: {instance_id: instance key}. Records what arrived on the wire in `self.raw`."""

    def __init__(self, keys):
        self.keys = dict(keys)
        self.raw = []  # ("context", value) / ("entity", value), in arrival order

    def deserialize_entity(self, ctxt, entity):
        self.raw.append(("entity", entity))
        try:
            wrapped = json.loads(entity)
            instance_id = wrapped["csz-instance-id"]
        except (ValueError, TypeError, KeyError):
            return entity
        return decrypt_json(wrapped["entity"], self.keys[instance_id])

    def deserialize_context(self, ctxt):
        ctxt = dict(ctxt)
        self.raw.append(("context", dict(ctxt)))
        instance_id = ctxt.get("csz-instance-id")
        if instance_id is not None:
            ctxt = decrypt_json(ctxt["context"], self.keys[instance_id])
        ctxt["instance_id"] = instance_id
        return ctxt


def register_tracing_opts(conf):
    """oslo.messaging 18's client reads conf.oslo_messaging_metrics / oslo_messaging_tracing but
    registers those options on the global cfg.CONF only; a private ConfigOpts needs them too."""
    import importlib
    for module, attr in (("oslo_messaging._metrics.client", "oslo_messaging_metrics"),
                         ("oslo_messaging._tracing.client", "oslo_messaging_tracing")):
        try:
            opts = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):  # older oslo.messaging
            continue
        conf.register_opts(opts, group=attr)


# --------------------------------------------------------------------------------------------
# Contexts
# --------------------------------------------------------------------------------------------

def newest_context():
    """A context dict like the one Trove (master) sends: oslo.context's to_dict() keys."""
    return {
        "user": "harness-user", "project_id": "harness-project", "system_scope": None,
        "project": "harness-project", "domain": None, "user_domain": None,
        "project_domain": None, "is_admin": True, "read_only": False, "show_deleted": False,
        "auth_token": None, "request_id": "req-" + str(uuid.uuid4()),
        "global_request_id": None, "resource_uuid": None, "roles": [],
        "user_identity": "harness-user harness-project - - -", "is_admin_project": True,
        "limit": None, "marker": None, "service_catalog": None,
    }


# Keys that Liberty's TroveContext.from_dict accepts (oslo.context 0.6 has no **kwargs).
LIBERTY_CONTEXT_KEYS = {
    "auth_token", "user", "tenant", "domain", "user_domain", "project_domain", "is_admin",
    "read_only", "show_deleted", "request_id", "resource_uuid", "user_identity", "limit",
    "marker", "service_catalog", "timeout",
}


def liberty_context():
    return {
        "user": "harness-user", "tenant": "harness-project", "domain": None,
        "user_domain": None, "project_domain": None, "is_admin": True, "read_only": False,
        "show_deleted": False, "auth_token": None, "request_id": "req-" + str(uuid.uuid4()),
        "resource_uuid": None, "user_identity": "harness-user harness-project - - -",
        "limit": None, "marker": None, "service_catalog": None,
    }


# Trove's service status descriptions (trove/instance/service_status.py) + Liberty's.
TROVE_STATUS_DESCRIPTIONS = {
    "running", "blocked", "paused", "shutdown", "crashed", "failed to spawn", "building",
    "promoting replica", "ejecting replica source", "transferring guest logs", "unknown", "new",
    "deleted", "guestagent error", "instance ready", "restart required", "healthy", "upgrading",
    "restarting", "build pending",
}


# --------------------------------------------------------------------------------------------
# Networking
# --------------------------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tcp_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kombu_url(url):
    """rabbit://... (oslo) -> amqp://... (kombu)."""
    return "amqp://" + url.split("://", 1)[1] if url.startswith("rabbit://") else url


# --------------------------------------------------------------------------------------------
# Raw AMQP (kombu)
# --------------------------------------------------------------------------------------------

def envelope(msg):
    return {"oslo.version": "2.0", "oslo.message": json.dumps(msg)}


def unwrap(body):
    """AMQP body (dict) -> message dict (handles the 2.0 envelope and bare messages)."""
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    if "oslo.message" in body:
        return json.loads(body["oslo.message"])
    return body


def raw_message(method, args=None, version="1.0", context=None, call=True, timeout_key=True):
    """An oslo message dict as oslo.messaging 18 builds it (timeout_key=False: Liberty-era)."""
    msg = {"method": method, "args": args or {}, "version": version,
           "_unique_id": uuid.uuid4().hex}
    if call:
        msg["_msg_id"] = uuid.uuid4().hex
        if timeout_key:
            msg["_timeout"] = None
    for k, v in (context if context is not None else newest_context()).items():
        msg["_context_" + k] = v
    return msg


class RawClient:
    """Publishes raw messages to the control exchange and collects replies on its own queue.

    The reply queue is declared the Liberty way (non-durable, auto-delete, bound to a direct
    exchange of the same name) -- replies published to the default exchange reach it too."""

    def __init__(self, url, exchange="trove"):
        import kombu
        self._kombu = kombu
        self.conn = kombu.Connection(kombu_url(url), connect_timeout=5)
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.channel()
        self.exchange = kombu.Exchange(exchange, type="topic", durable=False, auto_delete=False)
        self.reply_q = "reply_" + uuid.uuid4().hex
        rex = kombu.Exchange(self.reply_q, type="direct", durable=False, auto_delete=True)
        self.queue = kombu.Queue(self.reply_q, exchange=rex, routing_key=self.reply_q,
                                 durable=False, auto_delete=True, channel=self.channel)
        self.queue.declare()
        self.replies = []  # (message dict, kombu message)
        self.consumer = kombu.Consumer(self.channel, queues=[self.queue],
                                       callbacks=[self._on_message], accept=["json"])
        self.consumer.consume()
        self.producer = kombu.Producer(self.channel, exchange=self.exchange)

    def _on_message(self, body, message):
        self.replies.append((unwrap(body), message))
        message.ack()

    def publish(self, routing_key, msg, wrap=True, expiration=None):
        """Publishes one message; for calls fills in _reply_q. Returns the message."""
        if "_msg_id" in msg:
            msg.setdefault("_reply_q", self.reply_q)
        body = envelope(msg) if wrap else msg
        kwargs = {}
        if expiration is not None:
            kwargs["expiration"] = expiration
        self.producer.publish(body, routing_key=routing_key, serializer="json",
                              content_encoding="utf-8", **kwargs)
        return msg

    def drain(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                self.conn.drain_events(timeout=min(left, 0.05))
            except socket.timeout:
                pass

    def wait_replies(self, msg_id, timeout=10.0, grace=0.3):
        """All replies for msg_id: waits until one with ending=True (or timeout), then `grace`
        seconds more to catch stray extra replies."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            mine = [m for m, _ in self.replies if m.get("_msg_id") == msg_id]
            if any(m.get("ending") for m in mine):
                break
            self.drain(0.05)
        self.drain(grace)
        return [(m, km) for m, km in self.replies if m.get("_msg_id") == msg_id]

    def call(self, routing_key, msg, timeout=10.0, wrap=True):
        self.publish(routing_key, msg, wrap=wrap, expiration=timeout)
        return self.wait_replies(msg["_msg_id"], timeout=timeout)

    def close(self):
        try:
            self.consumer.cancel()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.queue.delete()
        except Exception:  # noqa: BLE001
            pass
        self.conn.release()


# --------------------------------------------------------------------------------------------
# Assertions helpers
# --------------------------------------------------------------------------------------------

def first_line(exc):
    s = str(exc)
    return s.splitlines()[0] if s else ""


def failure_of(reply):
    """The parsed `failure` of a raw reply dict (None if it has none)."""
    f = reply.get("failure")
    return json.loads(f) if f else None


PY_MISSING_ARG = re.compile(r"^(\w+\.)?wait_for_txn\(\) missing 1 required positional "
                            r"argument: 'txn'$")
