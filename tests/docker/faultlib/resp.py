"""A minimal RESP client (standard library only) and one-shot helpers on top of it."""

import socket

from .base import PASSWORD


class ReplyError(Exception):
    """An error reply from Redis (-ERR, -READONLY, -NOREPLICAS, ...)."""


class Redis:
    def __init__(self, host, port=6379, password=PASSWORD, timeout=2.0, connect_timeout=None):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=connect_timeout or timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        if password:
            self.call("AUTH", password)

    def close(self):
        for x in (self.f, self.sock):
            try:
                x.close()
            except OSError:
                pass

    def settimeout(self, t):
        self.sock.settimeout(t)

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection to {self.host} closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError(f"connection to {self.host} closed")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ConnectionError(f"bad reply from {self.host}: {line!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        r = self.read()
        if isinstance(r, ReplyError):
            raise r
        return r

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self.encode(c) for c in commands))
        return [self.read() for _ in commands]

    def info(self, section="all"):
        text = self.call("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


def rinfo(host, section="all", timeout=1.0):
    """INFO from a fresh connection; None when the node cannot be reached."""
    try:
        r = Redis(host, timeout=timeout)
    except (OSError, ReplyError):
        return None
    try:
        return r.info(section)
    except (OSError, ReplyError):
        return None
    finally:
        r.close()


def rcall(host, *args, timeout=2.0):
    r = Redis(host, timeout=timeout)
    try:
        return r.call(*args)
    finally:
        r.close()


def find_master(hosts, avoid=None, timeout=0.3):
    """A connection to the first node (the one to avoid last) that says role:master."""
    order = [h for h in hosts if h != avoid] + [h for h in hosts if h == avoid]
    for h in order:
        try:
            r = Redis(h, timeout=timeout)
        except (OSError, ReplyError):
            continue
        try:
            if r.info("replication").get("role") == "master":
                return r, h
        except (OSError, ReplyError):
            pass
        r.close()
    return None, None
