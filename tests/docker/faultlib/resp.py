"""The shared RESP client (tests/pylib/resp.py) with the scenarios' password, and one-shot helpers."""

import os
import sys

from .base import PASSWORD

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "pylib"))
from resp import ReplyError, Resp, info_of  # noqa: E402,F401


class Redis(Resp):
    """A connection with the fault scenarios' password."""

    def __init__(self, host, port=6379, password=PASSWORD, timeout=2.0, connect_timeout=None):
        super().__init__(host, port, password, timeout, connect_timeout)


def rinfo(host, section="all", timeout=1.0):
    """INFO from a fresh connection; None when the node cannot be reached."""
    return info_of(host, section, PASSWORD, timeout)


def rcall(host, *args, timeout=2.0):
    r = Redis(host, timeout=timeout)
    try:
        return r.call(*args)
    finally:
        r.close()


def find_master(hosts, avoid=None, timeout=0.3, password=PASSWORD):
    """A connection to the first node (the one to avoid last) that says role:master."""
    order = [h for h in hosts if h != avoid] + [h for h in hosts if h == avoid]
    for h in order:
        try:
            r = Redis(h, password=password, timeout=timeout)
        except (OSError, ReplyError):
            continue
        try:
            if r.info("replication").get("role") == "master":
                return r, h
        except (OSError, ReplyError):
            pass
        r.close()
    return None, None
