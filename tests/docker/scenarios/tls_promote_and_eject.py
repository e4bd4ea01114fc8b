"""TLS replication between containers (per-node certificates, host names checked): create, promote and a master kill under one writer, eject."""

import os
import time

from faultlib.base import GUESTS, PASSWORD, TLS_PORT, say
from faultlib.checks import caught_up, check_losses, check_writer, config_get, create, linked_to, promote, tail_window, wait_for
from faultlib.env import run as shell
from faultlib.resp import rinfo
from faultlib.writer import Writer

MIN_WRITES = 300


def make_tls_pki(env):
    """A CA and one certificate per guest naming its address (SAN), made with the openssl CLI.
    Returns the directory; the guests mount it read-only at /etc/trove-tls."""
    d = os.path.join(env.workdir, "pki")
    os.makedirs(d, exist_ok=True)

    def ossl(*args):
        shell(["openssl", *args], check=True, timeout=60)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
         "-subj", "/CN=trove-faults-ca")
    for g in GUESTS:
        ext = f"{d}/{g}.ext"
        with open(ext, "w") as f:
            f.write(f"subjectAltName=IP:{env.ip(g)}\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/{g}.key", "-out", f"{d}/{g}.csr", "-subj", f"/CN={g}")
        ossl("x509", "-req", "-in", f"{d}/{g}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
             "-out", f"{d}/{g}.pem", "-days", "2", "-extfile", ext)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)  # test keys: readable by the container's redis user
    os.chmod(d, 0o755)
    return d


def tls_compose_override(env, pki):
    """A compose file layered for one scenario: every guest gets a TLS port, its certificate, TLS
    replication, and host-name checks of the master's certificate."""
    path = os.path.join(env.workdir, "compose.tls.yml")
    lines = ["services:"]
    for g in GUESTS:
        lines += [
            f"  {g}:",
            "    volumes:",
            f"      - {pki}:/etc/trove-tls:ro",
            "    environment:",
            f'      TROVE_GUESTAGENT__REDIS__TLS_PORT: "{TLS_PORT}"',
            f'      TROVE_GUESTAGENT__REDIS__TLS_CERT_FILE: "/etc/trove-tls/{g}.pem"',
            f'      TROVE_GUESTAGENT__REDIS__TLS_KEY_FILE: "/etc/trove-tls/{g}.key"',
            '      TROVE_GUESTAGENT__REDIS__TLS_CA_CERT_FILE: "/etc/trove-tls/ca.pem"',
            '      TROVE_GUESTAGENT__REDIS__TLS_VERIFY_HOSTNAME: "true"',
            '      TROVE_GUESTAGENT__REPLICATION__TLS_REPLICATION: "true"',
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def tls_ping(env, g, port, with_cert):
    """PING over TLS from inside g's container; True when Redis answered PONG."""
    args = ["redis-cli", "--no-auth-warning", "-a", PASSWORD, "--tls", "--cacert", "/etc/trove-tls/ca.pem",
            "-h", env.ip(g), "-p", str(port)]
    if with_cert:
        args += ["--cert", f"/etc/trove-tls/{g}.pem", "--key", f"/etc/trove-tls/{g}.key"]
    p = env.exec(g, *args, "PING", check=False, timeout=20)
    return p.returncode == 0 and p.stdout.strip() == "PONG"



def compose_files(env):
    return [tls_compose_override(env, make_tls_pki(env))]


def run(env, res):
    create(env, res, "guest1", ["guest2", "guest3"])
    for g in ("guest2", "guest3"):
        info = rinfo(env.ip(g), "replication")
        res.check(info and info.get("master_port") == str(TLS_PORT) and info.get("master_link_status") == "up",
                  f"{g} does not replicate from the master's TLS port {TLS_PORT}: {info}")
        res.check(config_get(env, g, "tls-replication") == {"tls-replication": "yes"},
                  f"{g}: tls-replication is not on: {config_get(env, g, 'tls-replication')}")
    res.check(not tls_ping(env, "guest2", TLS_PORT, with_cert=False) and tls_ping(env, "guest2", TLS_PORT, with_cert=True),
              "the TLS port must refuse a client without a certificate and accept one with the node's certificate")
    # One writer, following the master, through the promote, the kill and the eject.
    w = Writer([env.ip(g) for g in GUESTS], "s8")
    w.start()
    time.sleep(1.0)
    c, rep = promote(env, "guest2")
    res.require(c.rc == 0, "promote failed: " + c.describe())
    for g in ("guest1", "guest3"):
        res.check(wait_for(lambda: caught_up(env, g, "guest2") and (rinfo(env.ip(g), "replication") or {}).get("master_port") == str(TLS_PORT), 15),
                  f"{g} is not linked to guest2's TLS port after the promote: {rinfo(env.ip(g), 'replication')}")
    time.sleep(1.0)
    # The master dies under the writer: eject picks a replica, the other follows it over TLS.
    t_before = time.monotonic()
    env.docker("kill", env.cid("guest2"))
    t_kill = time.monotonic()
    say("killed guest2 (the master) while the writer ran")
    c = env.ctl("eject-replica-source", env.gid("guest2"), timeout=120)
    rep = c.json() or {}
    say(f"eject-replica-source guest2: rc={c.rc} in {c.ms} ms, new_master={rep.get('new_master')}")
    time.sleep(1.0)
    w.stop()
    say(w.summary())
    res.pause_ms = int(w.longest * 1000)
    res.require(c.rc == 0, "eject failed: " + c.describe())
    new = "guest1" if rep.get("new_master") == env.gid("guest1") else "guest3"
    other = "guest3" if new == "guest1" else "guest1"
    res.check(wait_for(lambda: linked_to(env, other, new) and (rinfo(env.ip(other), "replication") or {}).get("master_port") == str(TLS_PORT), 15),
              f"{other} does not follow {new} over TLS: {rinfo(env.ip(other), 'replication')}")
    check_writer(res, w, MIN_WRITES)
    res.check(len(w.acked_by(env.ip(new), t_kill)) >= 20, f"too few writes on the new master {new} after the eject")
    check_losses(env, res, w.records(), new, [other], [tail_window(env.ip("guest2"), t_before, t_kill, "docker kill of the master")])
    for g in (new, other):
        log = env.docker("logs", env.cid(g), check=False, timeout=30)
        res.check(PASSWORD not in log.stdout + log.stderr, f"the Redis password is in {g}'s agent log")
