"""The side-by-side partition case: the master cut off from everyone on loopback (iptables), a
writer inside the partition on the old master, redis-py's Sentinel client outside, then the heal.

    python -m trovebench.partition --port 7001 --source 127.0.0.2 --out result.json --prefix p:

runs the inside writer: SET <prefix><n> <n> straight to one node over a raw RESP socket bound to
--source, one write per --pace seconds, until SIGUSR1; it prints "ready" at the first
acknowledgement and writes {acked, t, sent_t, refused: [[t, first word of the error]], errors,
sent} as JSON. Times are time.monotonic()."""

import argparse
import array
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import redis

from .common import BenchError, linked_to, now, quiet, rcon, replication, wait_until
from .switch import Writer, WriterProcess, count_lost, drop_keys, final_master

CHAIN = "TROVEBENCH-PART"
INSIDE = "127.0.0.2"


# ---------------------------------------------------------------------------------------------
# the cut

def _ipt(*args, check=True, data=None, cmd="iptables"):
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    p = subprocess.run(sudo + [cmd, "-w", *args], input=data, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise BenchError("%s %s failed: %s" % (cmd, " ".join(args), p.stderr.strip()))
    return p.returncode == 0


class Cut:
    """Our own iptables chain, jumped to first from INPUT; `cut(port)` drops TCP packets to and
    from `port` whose other end is 127.0.0.1 (everyone on this host but the inside writer, which
    uses 127.0.0.2); `heal()` empties the chain. Leaving the block removes the jump and the chain,
    also on errors and Ctrl-C. No other chain's rules are touched."""

    def __enter__(self):
        self._remove()  # a chain of ours left by a killed run
        _ipt("-N", CHAIN)
        _ipt("-I", "INPUT", "1", "-j", CHAIN)
        return self

    def cut(self, port):
        # Both rules at once (one iptables-restore transaction); INPUT only, so packets vanish
        # (timeouts, as in a real partition) instead of failing the sender at once.
        rules = ["-A %s -p tcp -s 127.0.0.1 -d 127.0.0.1 --dport %d -j DROP" % (CHAIN, port),
                 "-A %s -p tcp -s 127.0.0.1 -d 127.0.0.1 --sport %d -j DROP" % (CHAIN, port)]
        _ipt("--noflush", data="*filter\n%s\nCOMMIT\n" % "\n".join(rules), cmd="iptables-restore")

    def heal(self):
        _ipt("-F", CHAIN)

    def __exit__(self, *exc):
        self._remove()
        return False

    def _remove(self):
        while _ipt("-D", "INPUT", "-j", CHAIN, check=False):
            pass
        if _ipt("-L", CHAIN, "-n", check=False):
            _ipt("-F", CHAIN)
            _ipt("-X", CHAIN)


def _ping_from(source, port, timeout=0.3):
    """PING over a fresh connection from `source`; the reply line, or None on a timeout or error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(b"PING\r\n")
            return s.recv(200) or None
    except OSError:
        return None


def verify_cut(port):
    """The rules must cut: no answer from 127.0.0.1, an answer from the inside address."""
    outside, inside = _ping_from("127.0.0.1", port), _ping_from(INSIDE, port, timeout=2.0)
    if outside is not None or inside is None:
        raise BenchError("the cut of %d does not hold: from 127.0.0.1 %r, from %s %r" % (port, outside, INSIDE, inside))


# ---------------------------------------------------------------------------------------------
# the inside writer (its process)

STOP = False


def _stop(signum, frame):
    global STOP
    STOP = True


def _resp(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def inside_main(argv=None):
    ap = argparse.ArgumentParser(prog="trovebench.partition")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default=INSIDE)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("--pace", type=float, default=0.001)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGUSR1, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # Ctrl-C reaches the whole group: still write the figures
    acked, times, sent_t = array.array("q"), array.array("d"), array.array("d")
    refused, errors = [], []
    mono = time.monotonic
    sock = f = None
    n = 0
    ready = False
    while not STOP:
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout, source_address=(a.source, 0))
                f = sock.makefile("rb")
            except OSError as e:
                errors.append([mono(), type(e).__name__])
                sock = None
                time.sleep(0.05)
                continue
        n += 1
        t_send = mono()
        try:
            sock.sendall(_resp("SET", a.prefix + str(n), n))
            line = f.readline()
            if not line:
                raise ConnectionResetError("closed by the server")
        except OSError as e:  # timeouts too: the reply's fate is unknown, the write is not counted
            errors.append([mono(), type(e).__name__])
            sock.close()
            sock = None
            continue
        t = mono()
        if line.startswith(b"+OK"):
            acked.append(n)
            times.append(t)
            sent_t.append(t_send)
            if not ready:
                ready = True
                print("ready", flush=True)
        elif line.startswith(b"-"):
            refused.append([t, line[1:].split(b" ", 1)[0].decode(errors="replace").strip()])
        else:
            raise SystemExit("unexpected reply %r" % line[:80])
        time.sleep(a.pace)
    with open(a.out, "w") as out:
        json.dump({"acked": acked.tolist(), "t": times.tolist(), "sent_t": sent_t.tolist(), "refused": refused,
                   "errors": errors, "sent": n}, out)


class InsideWriter(WriterProcess):
    """The inside writer's process, on one node from 127.0.0.2."""

    def __init__(self, ctx, port, tag):
        super().__init__(ctx, tag, "p", "partition", ["--port", str(port)], what="inside writer")


# ---------------------------------------------------------------------------------------------
# the Sentinel-protocol events (+sdown, +odown, +switch-master), stamped on arrival

class EventTap:
    """`PSUBSCRIBE *` on every address (sentinels or watchers), one thread each in this process,
    every message stamped with time.monotonic() on arrival: `first(channel, after)` is the
    earliest arrival per source. A subscriber whose connection fails records the error."""

    def __init__(self, addrs, timeout=10.0):
        self.events = []  # [source index, channel, payload, t]
        self.errors = []
        self._stop = threading.Event()
        self._ready = [threading.Event() for _ in addrs]
        self._threads = [threading.Thread(target=self._run, args=(i, a), daemon=True) for i, a in enumerate(addrs)]
        for t in self._threads:
            t.start()
        deadline = now() + timeout
        for i, r in enumerate(self._ready):
            if not r.wait(max(0.0, deadline - now())):
                self.close()
                raise BenchError("could not subscribe to %s:%d's events: %s" % (*addrs[i], self.errors or "no reply"))

    def _run(self, i, addr):
        ps = None
        try:
            ps = redis.Redis(host=addr[0], port=addr[1], socket_timeout=5.0, decode_responses=True).pubsub()
            ps.psubscribe("*")
            while not self._stop.is_set():
                m = ps.get_message(timeout=0.1)
                t = now()
                if m is None:
                    continue
                if m["type"] == "psubscribe":
                    self._ready[i].set()
                elif m["type"] == "pmessage":
                    self.events.append([i, m["channel"], m["data"], t])
        except (redis.RedisError, OSError) as e:
            self.errors.append("%s:%d: %s" % (addr[0], addr[1], e))
        finally:
            if ps is not None:
                quiet(ps.close)

    def first(self, channel, after, prefix=""):
        """{source index: the earliest arrival of `channel` after `after` whose payload starts with `prefix`}."""
        out = {}
        for i, ch, data, t in list(self.events):
            if ch == channel and t > after and data.startswith(prefix) and (i not in out or t < out[i]):
                out[i] = t
        return out

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# one round

def _role(port):
    try:
        return replication(port).get("role")
    except (redis.RedisError, OSError):
        return None


def partition_round(ctx, side, tag, cut_s, timeout_s=90.0, source=None):
    """Both writers on; cut the master (ours: its agent frozen with SIGSTOP too, its broker link
    cannot be cut alone on one host); heal `cut_s` after the cut, or later once a survivor is
    master; wait until the old master is a linked replica of the new one; count against the
    final master. `side` is a sidebyside OursSide or SentinelSide. The cut → `+odown` and
    `+switch-master` times come from the side's pub/sub (`side.addrs()`): from the source
    `source()` names after the round (ours: the acting watcher), or the earliest of them all."""
    side.wait_ready()
    m0 = side.master_port()
    others = [p for p in side.ports if p != m0]
    # Redis's protected mode answers only 127.0.0.1 when there is no password; everything still
    # binds 127.0.0.1, so this opens nothing beyond loopback.
    for p in side.ports:
        rcon(p).config_set("protected-mode", "no")
    agent = side.guest(m0).proc if side.side == "ours" else None
    before = side.failovers()
    tap = EventTap(side.addrs())
    w = Writer(ctx, side.ports, tag, sentinels=side.addrs(), name=side.NAME)
    inside = InsideWriter(ctx, m0, tag + "in")
    time.sleep(0.7)
    frozen = False
    try:
        with Cut() as cut:
            try:
                cut.cut(m0)
                t_cut = now()
                if agent is not None:
                    frozen = True
                    os.kill(agent.pid, signal.SIGSTOP)
                verify_cut(m0)
                # The heal rule: cut_s after the cut, but never before a survivor is master.
                time.sleep(max(0.0, t_cut + cut_s - now()))
                wait_until("a new master while %d is cut off" % m0,
                           lambda: any(_role(p) == "master" for p in others), timeout=timeout_s, interval=0.05)
                verify_cut(m0)
            finally:
                cut.heal()
                t_heal = now()
                if frozen:
                    os.kill(agent.pid, signal.SIGCONT)

        became = {}

        def follows():
            ms = [p for p in others if _role(p) == "master"]
            if len(ms) != 1:
                return False
            r = replication(m0)
            if "t" not in became and r.get("role") == "slave" and int(r.get("master_port", -1)) == ms[0]:
                became["t"] = now()
            return linked_to(m0, ms[0])
        wait_until("the old master %d a linked replica of the new one" % m0, lambda: quiet(follows),
                   timeout=timeout_s, interval=0.05)
        reattach_s = now() - t_heal
        time.sleep(0.5)
        events = _events(side, tap, t_cut, source)
    finally:
        tap.close()
        din = inside.stop()
        dout = w.stop()
    side.wait_ready()
    final = final_master(side.ports, None, timeout=10.0)
    if final is None or final == m0:
        raise BenchError("%s: no single new master after the partition (%s)" % (side.side, final))
    if not din["acked"] or not dout["acked"]:
        raise BenchError("%s: a writer made no writes (inside %d, client %d)" % (side.side, len(din["acked"]), len(dout["acked"])))
    cut_acks = [t for t in din["t"] if t_cut < t <= t_heal]
    after_heal = [t for t in din["t"] if t > t_heal]
    norep = [t for t, kind in din["refused"] if kind == "NOREPLICAS" and t > t_cut]
    firsts = [t for s, t in zip(dout["sent_t"], dout["t"]) if s > t_cut]
    rec = {
        "side": side.side,
        "old_master": m0,
        "final_master": final,
        "cut_s": t_heal - t_cut,
        # the inside writer, on the old master
        "inside_acked_after_cut_ms": (cut_acks[-1] - t_cut) * 1000 if cut_acks else 0.0,
        "inside_acked_during_cut": len(cut_acks),
        "inside_acked_after_heal": len(after_heal),
        "inside_last_ack_after_heal_ms": (after_heal[-1] - t_heal) * 1000 if after_heal else None,
        "inside_noreplicas": len(norep),
        "inside_first_noreplicas_ms": (norep[0] - t_cut) * 1000 if norep else None,
        "inside_refused": _kinds(din["refused"], t_cut),
        "inside_conn_errors": len([e for e in din["errors"] if e[0] > t_cut]),
        "inside_acked": len(din["acked"]),
        "inside_lost": count_lost(final, din["acked"], inside.prefix),
        # the client outside, through redis-py's Sentinel client
        "client_writable_ms": (firsts[0] - t_cut) * 1000 if firsts else None,
        "acked": len(dout["acked"]),
        "lost": count_lost(final, dout["acked"], w.prefix),
        "errors": len([e for e in dout["events"] if e[1] == "error"]),
        # after the heal
        "reattach_s": reattach_s,
        "replica_of_new_s": became["t"] - t_heal if "t" in became else reattach_s,
        "old_master_role_at_end": _role(m0),
        "failovers": side.failovers() - before,
        **events,
    }
    drop_keys(final, inside.prefix, din["sent"])
    drop_keys(final, w.prefix, dout["sent"])
    return rec


def _events(side, tap, t_cut, source, timeout_s=10.0):
    """cut → +sdown, +odown and +switch-master (ms) from the tap: each must arrive (within
    `timeout_s` of the old master following the new one), or the round fails."""
    # (channel, payload prefix): the master's +sdown/+odown, not a replica's or a sentinel's
    need = (("+sdown", "master "), ("+odown", "master "), ("+switch-master", ""))
    try:
        wait_until("%s: %s on its pub/sub after the cut" % (side.side, ", ".join(ch for ch, _ in need)),
                   lambda: all(tap.first(ch, t_cut, pre) for ch, pre in need), timeout=timeout_s, interval=0.05)
    except BenchError as e:
        got = sorted({ch for _, ch, _, t in tap.events if t > t_cut})
        raise BenchError("%s (seen: %s; subscriber errors: %s)" % (e, ", ".join(got) or "nothing", tap.errors or "none"))
    src = source() if source else None
    out = {"event_source": "acting watcher %d" % src if src is not None else "earliest of %d" % len(side.addrs())}
    for (ch, pre), key in zip(need, ("sdown_ms", "noticed_ms", "switch_master_ms")):
        per = tap.first(ch, t_cut, pre)
        if src is not None and src not in per:
            raise BenchError("%s: no %s from the acting watcher %d (only from %s)" % (side.side, ch, src, sorted(per)))
        out[key] = ((per[src] if src is not None else min(per.values())) - t_cut) * 1000
    return out


def _kinds(refused, t_from):
    out = {}
    for t, kind in refused:
        if t > t_from:
            out[kind] = out.get(kind, 0) + 1
    return out



if __name__ == "__main__":
    sys.exit(inside_main())
