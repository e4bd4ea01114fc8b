"""Fixtures of the trove stage: Trove's three services per pass (plain or secure RPC), a troveclient, and the per-step report."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))

TENANT = "trovestage"  # the tenant (and user) the tests act as: Swift's account AUTH_trovestage
SERVICES = ("trove-conductor", "trove-taskmanager", "trove-api")


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this suite through scripts/trove-stage.sh "
                    "(it starts MariaDB, RabbitMQ and the Docker network, and registers the datastore)")
    return value


class Stage:
    def __init__(self):
        self.run = _env("TROVE_STAGE_RUN")
        self.work = _env("TROVE_STAGE_WORK")
        self.api = _env("TROVE_STAGE_API")
        self.conf = _env("TROVE_STAGE_CONF")
        self.pass_conf = _env("TROVE_STAGE_PASS_CONF")
        self.pids = _env("TROVE_STAGE_PIDS")
        self.venv = _env("TROVE_STAGE_VENV")
        with open(_env("TROVE_STAGE_TOKEN_FILE")) as f:
            self.token = f.read().strip()  # the tempauth token of trovestage:trovestage (see trove_standins.py)
        self.swift_url = _env("TROVE_STAGE_SWIFT_URL") + TENANT  # the tenant's Swift account
        self.admin_tenant = _env("TROVE_STAGE_ADMIN_TENANT")
        with open(_env("TROVE_STAGE_ADMIN_TOKEN_FILE")) as f:
            self.admin_token = f.read().strip()  # the cloud admin's (role admin in Trove's context)
        self.guestctl = _env("TROVE_STAGE_GUESTCTL")
        self.transport = _env("TROVE_STAGE_TRANSPORT")
        self.db_sock = _env("TROVE_STAGE_DB_SOCK")
        self.report = []  # (pass, step, seconds, {guest: Counter(method)}, note)
        self.cli_output = []  # (pass, title, text)

    def admin_client(self):
        """A troveclient as the cloud admin, for Trove's management API."""
        from keystoneauth1 import session, token_endpoint
        from troveclient.v1 import client
        auth = token_endpoint.Token(f"{self.api}/v1.0/{self.admin_tenant}", self.admin_token)
        return client.Client(session=session.Session(auth=auth))

    def sql(self, query):
        """Rows (tab-separated fields) of a query on Trove's database."""
        p = subprocess.run(["mariadb", "--no-defaults", "-S", self.db_sock, "-u", "root", "-N", "-B", "trove", "-e", query],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, f"mariadb: {p.stderr.strip()}"
        return [line.split("\t") for line in p.stdout.splitlines()]


@pytest.fixture(scope="session")
def stage():
    s = Stage()
    yield s
    from report import write_report
    write_report(s)


@pytest.fixture(scope="session")
def barbican(stage):
    """The Barbican stand-in at trove.conf's barbican_url (Trove's API reads ssl containers there)."""
    from trove_standins import Barbican
    b = Barbican(int(_env("TROVE_STAGE_BARBICAN_PORT")), stage.token)
    yield b
    b.stop()


class Services:
    """trove-api, trove-taskmanager and trove-conductor as child processes, logs in the work dir."""

    def __init__(self, stage, secure):
        self.stage = stage
        self.secure = secure
        self.procs = {}

    def start(self):
        with open(self.stage.pass_conf, "w") as f:
            f.write("# the pass's own setting (scripts/trove-stage.sh writes the rest in trove.conf)\n"
                    f"[DEFAULT]\nenable_secure_rpc_messaging = {self.secure}\n")
        tag = "secure" if self.secure else "plain"
        for name in SERVICES:
            out = open(os.path.join(self.stage.work, f"{name}.{tag}.out"), "w")
            p = subprocess.Popen([os.path.join(self.stage.venv, "bin", name), "--config-file", self.stage.conf,
                                  "--config-file", self.stage.pass_conf],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            out.close()
            self.procs[name] = p
            with open(os.path.join(self.stage.pids, f"{name}.pid"), "w") as f:
                f.write(str(p.pid))
        deadline = time.monotonic() + 90
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    pytest.fail(f"{name} exited at start-up with status {p.returncode} "
                                f"(see {self.stage.work}/{name}.{tag}.out and {name}.log)")
            try:
                with urllib.request.urlopen(self.stage.api + "/", timeout=2) as r:
                    if r.status in (200, 300):
                        break
            except OSError as e:
                if getattr(e, "code", None) in (200, 300):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"trove-api did not answer on {self.stage.api} within 90 s")
            time.sleep(0.5)

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            try:
                os.unlink(os.path.join(self.stage.pids, f"{name}.pid"))
            except FileNotFoundError:
                pass


@pytest.fixture(scope="module", params=[False, True], ids=["plain_rpc", "secure_rpc"])
def trove(request, stage):
    """A troveclient against freshly started Trove services, with secure RPC off, then on."""
    from keystoneauth1 import session, token_endpoint
    from troveclient.v1 import client

    services = Services(stage, request.param)
    services.start()
    auth = token_endpoint.Token(f"{stage.api}/v1.0/{TENANT}", stage.token)
    c = client.Client(session=session.Session(auth=auth))
    c.secure = request.param
    c.pass_name = "secure" if request.param else "plain"
    c.via_cli = not request.param  # the plain pass drives Trove with `openstack database ...`, the secure pass with the API
    try:
        yield c
    finally:
        services.stop()
