"""A writer through redis-py's Sentinel-managed master connection, as a Sentinel-aware application writes: every acknowledged write with its send and acknowledge times."""
import threading
import time

import redis


class SentinelWriter(threading.Thread):
    """Writes <prefix>:1, :2, ... through `master` (redis-py's `Sentinel.master_for`), recording
    every acknowledged write (n, sent, acked: monotonic times; the host is unknown to the client)."""

    def __init__(self, master, prefix):
        super().__init__(daemon=True)
        self.master, self.prefix = master, prefix
        self.acked = []  # (n, sent, acked)
        self.errors = {}
        self._halt = threading.Event()

    def run(self):
        n = 0
        while not self._halt.is_set():
            n += 1
            sent = time.monotonic()
            try:
                self.master.set(f"{self.prefix}:{n}", n)
                self.acked.append((n, sent, time.monotonic()))
            except (redis.RedisError, OSError) as e:
                k = type(e).__name__
                self.errors[k] = self.errors.get(k, 0) + 1
                time.sleep(0.01)

    def stop(self):
        self._halt.set()
        self.join(timeout=10)
        if self.is_alive():
            raise RuntimeError("the redis-py writer did not end within 10 s")

    def records(self):
        """(key, value, host, acknowledged at) per acknowledged write; host None (unknown to the client)."""
        return [(f"{self.prefix}:{n}", n, None, t) for n, _, t in self.acked]
