"""Fixtures of the compatibility suite: brokers, oslo.messaging transports, guest processes.

Every test that uses `target` runs against each guest named in TROVE_COMPAT_TARGETS
(default "python,rust"):

  python  tests/compat/reference_guest.py: oslo.messaging's own RPC server (the reference)
  rust    the trove-guestagent binary (TROVE_GUESTAGENT_BIN, default target/debug/trove-guestagent)

Both are started the same way: a TOML file written by `write_agent_config` and `--config PATH`.

Environment:
  TROVE_COMPAT_TARGETS       comma-separated targets (default python,rust)
  TROVE_GUESTAGENT_BIN       agent binary (default <repo>/target/debug/trove-guestagent)
  TROVE_COMPAT_RABBIT_URL    default broker (default rabbit://guest:guest@127.0.0.1:5672/)
  TROVE_COMPAT_RESTART_NODE  node name of the broker restarted by test_broker_restart (trove-restart)
  TROVE_COMPAT_RESTART_PORT  its AMQP port (default 5673)
  TROVE_COMPAT_READY_TIMEOUT seconds a guest may take to answer its first rpc_ping (default 30)

Nothing is skipped: a missing broker, binary or package makes the tests that need it fail with a
message saying what is missing.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import pytest

import oslo_messaging
from oslo_config import cfg

import compat_lib as lib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RABBIT_URL = os.environ.get("TROVE_COMPAT_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
RESTART_NODE = os.environ.get("TROVE_COMPAT_RESTART_NODE", "trove-restart")
RESTART_PORT = int(os.environ.get("TROVE_COMPAT_RESTART_PORT", "5673"))
TARGETS = [t.strip() for t in os.environ.get("TROVE_COMPAT_TARGETS", "python,rust").split(",")
           if t.strip()]
AGENT_BIN = Path(os.environ.get("TROVE_GUESTAGENT_BIN", ROOT / "target/debug/trove-guestagent"))
READY_TIMEOUT = float(os.environ.get("TROVE_COMPAT_READY_TIMEOUT", "30"))
CONTROL_EXCHANGE = "trove"
TEST_KEY = "abcdefghijklmnopqrstuvwxyz012345"  # the instance key of the captured enc-* vectors
TROVE_EXMODS = ["trove.common.exception"]  # Trove's allow-list (trove/rpc.py)

for _t in TARGETS:
    if _t not in ("python", "rust"):
        raise pytest.UsageError("TROVE_COMPAT_TARGETS: unknown target %r (python, rust)" % _t)

# Everybody in this process (our clients, Trove's API when used) talks on exchange "trove".
oslo_messaging.set_transport_defaults(CONTROL_EXCHANGE)


def pytest_collection_modifyitems(config, items):
    """Tests on the second broker run last (its boot overlaps with everything else).
    Parity tests need both targets; with only one selected they are deselected (reported as
    such by pytest), never skipped."""
    items.sort(key=lambda item: "restart_broker" in getattr(item, "fixturenames", ()))
    if set(TARGETS) >= {"python", "rust"}:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("parity") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", TARGETS, scope="session")


# --------------------------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------------------------

def check_broker(url, how_to_start):
    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 5672
    if not lib.tcp_open(host, port, timeout=2):
        pytest.fail("RabbitMQ is not reachable at %s:%d (%s). %s"
                    % (host, port, url, how_to_start), pytrace=False)
    import kombu
    try:
        with kombu.Connection(lib.kombu_url(url), connect_timeout=5) as c:
            c.ensure_connection(max_retries=1)
    except Exception as e:  # noqa: BLE001
        pytest.fail("RabbitMQ at %s:%d accepts TCP but an AMQP login as %s failed: %s. %s"
                    % (host, port, u.username, e, how_to_start), pytrace=False)
    return url


@pytest.fixture(scope="session")
def rabbit_url():
    """The default broker (scripts/services.sh starts it)."""
    return check_broker(RABBIT_URL, "Start it with scripts/services.sh "
                                    "(or set TROVE_COMPAT_RABBIT_URL).")


_RESTART_BROKER_START = {}


def pytest_collection_finish(session):
    """The second broker takes 5-15 s to boot: when a selected test needs it, start it in the
    background right away so the boot overlaps with the other tests."""
    if any("restart_broker" in getattr(item, "fixturenames", ()) for item in session.items):
        _RESTART_BROKER_START["proc"] = subprocess.Popen(
            ["bash", str(ROOT / "scripts/rabbitmq.sh"), "start", RESTART_NODE,
             str(RESTART_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True)


@pytest.fixture(scope="session")
def restart_broker():
    """A second RabbitMQ node of our own (scripts/rabbitmq.sh), the one test_broker_restart
    restarts. Started at collection time (see above), stopped at the end of the session."""
    script = ROOT / "scripts/rabbitmq.sh"
    bg = _RESTART_BROKER_START.pop("proc", None)
    if bg is not None:
        out, _ = bg.communicate(timeout=180)
        proc = subprocess.CompletedProcess(bg.args, bg.returncode, out, "")
    else:
        proc = subprocess.run(["bash", str(script), "start", RESTART_NODE, str(RESTART_PORT)],
                              capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        pytest.fail("could not start the second RabbitMQ node %s@localhost on port %d with "
                    "scripts/rabbitmq.sh (exit %d):\n%s%s"
                    % (RESTART_NODE, RESTART_PORT, proc.returncode, proc.stdout, proc.stderr),
                    pytrace=False)
    url = "rabbit://guest:guest@127.0.0.1:%d/" % RESTART_PORT
    check_broker(url, "scripts/rabbitmq.sh start %s %d reported success." % (RESTART_NODE,
                                                                           RESTART_PORT))

    class Broker:
        def __init__(self):
            self.url = url

        def restart(self):
            p = subprocess.run(["bash", str(script), "restart", RESTART_NODE, str(RESTART_PORT)],
                               capture_output=True, text=True, timeout=240)
            assert p.returncode == 0, "scripts/rabbitmq.sh restart failed:\n%s%s" % (p.stdout,
                                                                                    p.stderr)

        def pid(self):
            """PID of the node's Erlang VM (from its pid file), or None."""
            state = Path(os.environ.get("TROVE_RABBIT_STATE", "/tmp/trove-rabbit"))
            try:
                return int((state / RESTART_NODE / "rabbit.pid").read_text().strip())
            except (OSError, ValueError):
                return None

    yield Broker()
    subprocess.run(["bash", str(script), "stop", RESTART_NODE, str(RESTART_PORT)],
                   capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------
# oslo.messaging transports (one per broker URL and allow-list, for the whole session)
# --------------------------------------------------------------------------------------------

# Never cleaned up: transport.cleanup() takes seconds each (it joins polling threads), and the
# process exit closes the connections just as well.
_TRANSPORTS = {}
_TRANSPORT_LOCK = threading.Lock()


def get_transport(url, exmods=TROVE_EXMODS):
    key = (url, tuple(exmods))
    with _TRANSPORT_LOCK:
        if key not in _TRANSPORTS:
            conf = cfg.ConfigOpts()
            conf([], project="trove-compat-tests")
            lib.register_tracing_opts(conf)
            _TRANSPORTS[key] = oslo_messaging.get_rpc_transport(
                conf, url=url, allowed_remote_exmods=list(exmods))
        return _TRANSPORTS[key]


@pytest.fixture(scope="session")
def transport(rabbit_url):
    """Client transport on the default broker, with Trove's exception allow-list."""
    return get_transport(rabbit_url)


def rpc_client(url, topic, version="1.0", timeout=10, key=None, exmods=TROVE_EXMODS):
    """An oslo RPCClient on `topic`, prepared with version/timeout, speaking Trove's secure RPC
    when key is set."""
    client = oslo_messaging.get_rpc_client(
        get_transport(url, exmods), oslo_messaging.Target(topic=topic, version="1.0"),
        serializer=lib.SecureSerializer(key))
    return client.prepare(version=version, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Guest processes
# --------------------------------------------------------------------------------------------

def write_agent_config(path, *, rabbit_url, guest_id, workdir, key=None,
                       conductor_topic="trove-conductor", report_interval=30, redis_port=None,
                       log_level="debug"):
    """The one place that knows the agent's configuration keys."""
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    q = json.dumps  # TOML basic strings accept JSON string escapes

    lines = [
        "[rpc]",
        "transport_url = %s" % q(rabbit_url),
        "control_exchange = %s" % q(CONTROL_EXCHANGE),
        "",
        "[guest]",
        "id = %s" % q(guest_id),
    ]
    if key:
        lines.append("instance_rpc_encr_key = %s" % q(key))
    lines += [
        "shutdown_grace = 5",
        "",
        "[conductor]",
        "topic = %s" % q(conductor_topic),
        "report_interval = %d" % report_interval,
        "",
        "[redis]",
        'service = "supervised"',
        'binary = "redis-server"',
        "config_file = %s" % q(str(workdir / "redis.conf")),
        "data_dir = %s" % q(str(workdir / "data")),
        "port = %d" % (redis_port or lib.free_port()),
        'advertise_host = "127.0.0.1"',
        "",
        "[log]",
        "level = %s" % q(log_level),
        "",
    ]
    Path(path).write_text("\n".join(lines))
    return path


LIVE_GUESTS = []


def new_guest_id(target, name="guest"):
    return "compat-%s-%s-%s" % (name, target, uuid.uuid4().hex[:8])


class Guest:
    """One guest process (reference or Rust agent) serving guestagent.<id>."""

    def __init__(self, target, rabbit_url, *, key=None, conductor_topic=None,
                 report_interval=30, name="guest", guest_id=None):
        self.target = target
        self.rabbit_url = rabbit_url
        self.key = key
        self.id = guest_id or new_guest_id(target, name)
        self.topic = "guestagent." + self.id
        self.workdir = Path(tempfile.mkdtemp(prefix="trove-compat-%s-" % target))
        self.config = self.workdir / "agent.toml"
        self.log_path = self.workdir / "agent.log"
        self.conductor_topic = conductor_topic or "trove-conductor-compat-" + self.id
        self.report_interval = report_interval
        self.proc = None
        self._log = None

    def command(self):
        if self.target == "python":
            return [sys.executable, str(HERE / "reference_guest.py"), "--config",
                    str(self.config)]
        if not AGENT_BIN.exists():
            pytest.fail("trove-guestagent binary not found at %s: build it with `cargo build` "
                        "(or set TROVE_GUESTAGENT_BIN)" % AGENT_BIN, pytrace=False)
        return [str(AGENT_BIN), "--config", str(self.config)]

    def start(self, wait=True):
        write_agent_config(self.config, rabbit_url=self.rabbit_url, guest_id=self.id,
                           workdir=self.workdir, key=self.key,
                           conductor_topic=self.conductor_topic,
                           report_interval=self.report_interval)
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir, env=env,
                                     start_new_session=True)
        LIVE_GUESTS.append(self)
        if wait:
            self.wait_ready()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self, version="1.0", timeout=10, key="same", exmods=TROVE_EXMODS):
        return rpc_client(self.rabbit_url, self.topic, version=version, timeout=timeout,
                          key=self.key if key == "same" else key, exmods=exmods)

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Until rpc_ping answers True. Fails with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                pytest.fail("%s guest exited with code %s during start-up (command %s).\n"
                            "--- log tail ---\n%s"
                            % (self.target, self.proc.returncode, " ".join(self.command()),
                               self.log_tail()), pytrace=False)
            try:
                if self.client(timeout=1).call(lib.newest_context(), "rpc_ping") is True:
                    return
                last = "rpc_ping did not return True"
            except oslo_messaging.MessagingTimeout:
                last = "rpc_ping timed out"
            except Exception as e:  # noqa: BLE001
                last = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                time.sleep(0.3)
        pytest.fail("%s guest %s did not answer rpc_ping on %s within %.0fs (last: %s).\n"
                    "--- log tail ---\n%s" % (self.target, self.id, self.topic, timeout, last,
                                              self.log_tail()), pytrace=False)

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout=15):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            # Children (e.g. a supervised redis-server) are in the guest's own session.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log:
            self._log.close()
            self._log = None
        if self in LIVE_GUESTS:
            LIVE_GUESTS.remove(self)

    def cleanup(self):
        self.stop()
        if os.environ.get("TROVE_COMPAT_KEEP_LOGS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)


class GuestPool:
    """Long-lived guests shared by the whole session, one per (target, kind)."""

    def __init__(self, rabbit_url):
        self.rabbit_url = rabbit_url
        self.guests = {}

    def get(self, target, kind="plain"):
        k = (target, kind)
        g = self.guests.get(k)
        if g is None or not g.alive():
            if g is not None:
                pytest.fail("shared %s %s guest died earlier (exit %s).\n--- log tail ---\n%s"
                            % (kind, target, g.proc.returncode, g.log_tail()), pytrace=False)
            g = Guest(target, self.rabbit_url, key=TEST_KEY if kind == "secure" else None,
                      name=kind)
            self.guests[k] = g
            g.start()
        return g

    def close(self):
        for g in self.guests.values():
            g.cleanup()


@pytest.fixture(scope="session")
def guest_pool(rabbit_url):
    pool = GuestPool(rabbit_url)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def guest(guest_pool, target):
    """A shared plaintext guest of `target` on the default broker."""
    return guest_pool.get(target, "plain")


@pytest.fixture(scope="session")
def secure_guest(guest_pool, target):
    """A shared guest of `target` with secure RPC on (instance key TEST_KEY)."""
    return guest_pool.get(target, "secure")


@pytest.fixture
def make_guest(rabbit_url, target):
    """Factory for guests private to one test: make_guest(key=..., report_interval=...,
    conductor_topic=..., guest_id=..., name=..., url=..., wait=True)."""
    made = []

    def make(wait=True, url=None, **kw):
        g = Guest(target, url or rabbit_url, **kw)
        made.append(g)
        return g.start(wait=wait)

    yield make
    for g in made:
        g.cleanup()


@pytest.fixture
def raw(rabbit_url):
    """A RawClient (kombu) on the default broker."""
    c = lib.RawClient(rabbit_url, exchange=CONTROL_EXCHANGE)
    yield c
    c.close()


@pytest.fixture
def ctx():
    return lib.newest_context()


# --------------------------------------------------------------------------------------------
# Reporting: failing tests show the log tails of the guests that were running.
# --------------------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for g in list(LIVE_GUESTS):
            rep.sections.append(("%s guest %s log (%s)" % (g.target, g.id, g.log_path),
                                 g.log_tail(40)))
