"""The one minimal RESP client (standard library only) of the Python tests: the fault scenarios,
the systemd and cluster scenarios and the trove stage use it to reach the guests' Redis."""

import socket


class ReplyError(Exception):
    """An error reply from Redis (-ERR, -READONLY, -NOREPLICAS, ...)."""


class Resp:
    """One connection; AUTH first when a password is given. Error replies raise ReplyError."""

    def __init__(self, host, port=6379, password=None, timeout=2.0, connect_timeout=None):
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def read(self):
        """One reply; an error reply is returned (not raised) so pipelines can hold several."""
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
            return None if n < 0 else [self.read() for _ in range(n)]
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
        out = {}
        for line in self.call("INFO", section).decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


def info_of(host, section="all", password=None, timeout=1.0):
    """INFO over a fresh connection; None when the node cannot be reached."""
    try:
        r = Resp(host, password=password, timeout=timeout)
    except (OSError, ReplyError):
        return None
    try:
        return r.info(section)
    except (OSError, ReplyError):
        return None
    finally:
        r.close()
